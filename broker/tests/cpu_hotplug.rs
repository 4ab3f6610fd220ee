//! CPU topology and hotplug through the real broker: `-smp maxcpus`,
//! `query-hotpluggable-cpus` and `device_add`/`device_del` errors compared
//! with QEMU 10's answers on `-M pc` (run live), and the `hotplug` test
//! guest starting a hot-plugged CPU (INIT/SIPI after the ACPI CPU hotplug
//! registers announced it) and ejecting it on request. Needs /dev/kvm and
//! qemu-system-x86_64.

mod common;
mod disk_common;

use std::process::{Command, Stdio};

use common::qemu::ours;
use common::{Bulkhead, Qmp};
use disk_common::{start_guest, SerialLog};
use serde_json::{json, Value};

/// QEMU 10's replies (`return` or `error`) to `cmds` on `-M pc` with
/// `-smp SMP -cpu qemu64`, in prelaunch.
fn qemu(smp: &str, cmds: &[Value]) -> Vec<Value> {
    common::qemu::replies(
        &[
            "-M",
            "pc,accel=kvm",
            "-smp",
            smp,
            "-cpu",
            "qemu64",
            "-S",
            "-nodefaults",
        ],
        cmds,
    )
}

/// Starts the `hotplug` guest with `-smp SMP -cpu qemu64` and its serial
/// output in a file; returns once it waits for hotplug events.
fn boot_hotplug_guest(smp: &str) -> (Bulkhead, SerialLog, Qmp) {
    let dir = common::TempDir::new();
    let (b, log) = start_guest(
        &dir.0,
        "hotplug",
        &["-m", "64M", "-cpu", "qemu64", "-smp", smp],
    );
    let c = b.client();
    std::mem::forget(dir);
    log.wait_for("waiting for hotplug events");
    (b, log, c)
}

fn cpu_add(socket: u32, core: u32, id: &str) -> Value {
    json!({"execute": "device_add", "arguments": {
        "driver": "qemu64-x86_64-cpu", "socket-id": socket, "core-id": core,
        "thread-id": 0, "id": id}})
}

fn without_thread_ids(mut cpus: Value) -> Value {
    for c in cpus.as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("thread-id");
    }
    cpus
}

#[test]
fn query_hotpluggable_cpus_matches_qemu_pc_for_smp_1_maxcpus_4() {
    let cmds = [
        json!({"execute": "query-hotpluggable-cpus"}),
        cpu_add(0, 1, "c1"),
        json!({"execute": "query-hotpluggable-cpus"}),
    ];
    let theirs = qemu("1,maxcpus=4", &cmds);
    let b = Bulkhead::start(&["-smp", "1,maxcpus=4", "-cpu", "qemu64", "-S"]);
    let mut q = b.client();
    assert_eq!(ours(&mut q, &cmds), theirs);
    assert_eq!(theirs[0]["return"].as_array().unwrap().len(), 4);
    let machines = q.ok("query-machines");
    let microvm = machines
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "microvm")
        .unwrap();
    assert_eq!(microvm["hotpluggable-cpus"], true, "{microvm}");
    let qemu_cpus = qemu(
        "1,maxcpus=4",
        &[cpu_add(0, 1, "c1"), json!({"execute": "query-cpus-fast"})],
    );
    assert_eq!(
        without_thread_ids(q.ok("query-cpus-fast")),
        without_thread_ids(qemu_cpus[1]["return"].clone())
    );
}

#[test]
fn query_hotpluggable_cpus_reports_die_ids_as_qemu_with_two_dies() {
    let smp = "2,maxcpus=8,sockets=2,dies=2,cores=2,threads=1";
    let cmds = [
        json!({"execute": "query-hotpluggable-cpus"}),
        json!({"execute": "device_add", "arguments": {
            "driver": "qemu64-x86_64-cpu", "socket-id": 0, "core-id": 1, "thread-id": 0}}),
    ];
    let theirs = qemu(smp, &cmds);
    let b = Bulkhead::start(&["-smp", smp, "-cpu", "qemu64", "-S"]);
    let mut q = b.client();
    let mine = ours(&mut q, &cmds);
    // QEMU names its second boot CPU device[2] (other objects come
    // between); bulkhead names boot CPU n device[n]. The rest is equal.
    let strip = |v: &Value| {
        let mut v = v.clone();
        for e in v["return"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("qom-path");
        }
        v
    };
    assert_eq!(strip(&mine[0]), strip(&theirs[0]));
    assert_eq!(mine[1], theirs[1]);
    assert_eq!(mine[1]["error"]["desc"], "CPU die-id is not set");
}

#[test]
fn device_add_and_del_errors_have_qemus_class_and_message() {
    let add = |props: Value| {
        let mut args = json!({"driver": "qemu64-x86_64-cpu"});
        for (k, v) in props.as_object().unwrap() {
            args[k] = v.clone();
        }
        json!({"execute": "device_add", "arguments": args})
    };
    let cmds = [
        // Taken slot (the boot CPU).
        add(json!({"socket-id": 0, "core-id": 0, "thread-id": 0, "id": "c0"})),
        // Beyond maxcpus and bad ids.
        add(json!({"socket-id": 0, "core-id": 4, "thread-id": 0, "id": "c4"})),
        add(json!({"socket-id": 1, "core-id": 1, "thread-id": 0})),
        add(json!({"socket-id": 0, "core-id": 1, "thread-id": 1})),
        add(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "die-id": 1})),
        add(json!({"socket-id": "x", "core-id": 1, "thread-id": 0})),
        // Missing ids.
        add(json!({"socket-id": 0, "core-id": 1})),
        add(json!({"core-id": 1, "thread-id": 0})),
        add(json!({"socket-id": 0, "thread-id": 0})),
        add(json!({"socket-id": -1, "core-id": 1, "thread-id": 0})),
        // Another CPU model than the machine's.
        json!({"execute": "device_add", "arguments": {"driver": "host-x86_64-cpu",
            "socket-id": 0, "core-id": 1, "thread-id": 0}}),
        // A plug, then the same slot and the same id again.
        add(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "id": "c1"})),
        add(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "id": "c1b"})),
        add(json!({"socket-id": 0, "core-id": 2, "thread-id": 0, "id": "c1"})),
        // The boot CPU cannot be unplugged; unknown ids are not found.
        json!({"execute": "device_del", "arguments": {"id": "/machine/unattached/device[0]"}}),
        json!({"execute": "device_del", "arguments": {"id": "nope"}}),
    ];
    let theirs = qemu("1,maxcpus=4", &cmds);
    let b = Bulkhead::start(&["-smp", "1,maxcpus=4", "-cpu", "qemu64", "-S"]);
    let mut q = b.client();
    let mine = ours(&mut q, &cmds);
    for (i, (m, t)) in mine.iter().zip(&theirs).enumerate() {
        assert_eq!(m, t, "command {i}: {}", cmds[i]);
    }
    assert_eq!(
        mine[0]["error"]["desc"], "CPU[0] with APIC ID 0 exists",
        "the comparison saw the errors"
    );
}

#[test]
fn hotplugged_cpu_runs_code_in_the_guest_and_is_ejected_on_device_del() {
    let (_b, log, mut q) = boot_hotplug_guest("1,maxcpus=4");
    assert!(log.has("4 possible cpus, 1 present"), "{}", log.text());
    assert_eq!(
        Qmp::error_of(&q.execute("cpu", json!({"index": 2}))).1,
        "Invalid CPU index"
    );

    assert_eq!(
        q.execute("device_add", cpu_add(0, 2, "c2")["arguments"].clone())["return"],
        json!({})
    );
    log.wait_for("cpu slot 2 online (apic id 2)");
    let ost = q.event("ACPI_DEVICE_OST");
    assert_eq!(
        ost["data"],
        json!({"info": {"device": "c2", "slot": "2", "slot-type": "CPU", "source": 1, "status": 0}})
    );
    let cpus = q.ok("query-cpus-fast");
    let new = cpus
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cpu-index"] == 2)
        .unwrap_or_else(|| panic!("no cpu-index 2 in {cpus}"));
    assert_eq!(new["qom-path"], "/machine/peripheral/c2");
    assert_eq!(
        new["props"],
        json!({"socket-id": 0, "core-id": 2, "thread-id": 0})
    );
    assert_eq!(q.execute("cpu", json!({"index": 2}))["return"], json!({}));

    assert_eq!(
        q.execute("device_del", json!({"id": "c2"}))["return"],
        json!({})
    );
    let ev = q.event("DEVICE_DELETED");
    assert_eq!(
        ev["data"],
        json!({"device": "c2", "path": "/machine/peripheral/c2"})
    );
    log.wait_for("cpu slot 2 ejected");
    assert_eq!(q.ok("query-cpus-fast").as_array().unwrap().len(), 1);
    assert_eq!(
        Qmp::error_of(&q.execute("cpu", json!({"index": 2}))).1,
        "Invalid CPU index"
    );
    let slots = q.ok("query-hotpluggable-cpus");
    assert!(slots
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["props"]["core-id"] == 0 || s.get("qom-path").is_none()));

    // The slot's vCPU (parked by the eject: KVM cannot create it twice)
    // serves a second plug.
    assert_eq!(
        q.execute("device_add", cpu_add(0, 2, "again")["arguments"].clone())["return"],
        json!({})
    );
    log.wait_for("cpu slot 2 inserted (apic id 2)");
    let start = std::time::Instant::now();
    while log.text().matches("cpu slot 2 online (apic id 2)").count() < 2 {
        assert!(
            start.elapsed() < disk_common::GUEST_TIMEOUT,
            "{}",
            log.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(q.ok("query-status")["status"], "running");
}

#[test]
fn hotplugged_cpu_gets_its_topology_apic_id() {
    // 2 sockets x 2 dies x 3 cores: core field 2 bits, die 1 bit, so the
    // CPU at socket 1, die 1, core 2 is slot 11 with APIC id 0b1110.
    let (_b, log, mut q) = boot_hotplug_guest("2,maxcpus=12,sockets=2,dies=2,cores=3");
    let r = q.execute(
        "device_add",
        json!({"driver": "qemu64-x86_64-cpu", "socket-id": 1, "die-id": 1,
               "core-id": 2, "thread-id": 0, "id": "far"}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    log.wait_for("cpu slot 11 online (apic id 14)");
    let cpus = q.ok("query-cpus-fast");
    let far = cpus
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cpu-index"] == 11)
        .unwrap_or_else(|| panic!("{cpus}"));
    assert_eq!(
        far["props"],
        json!({"socket-id": 1, "die-id": 1, "core-id": 2, "thread-id": 0})
    );
}

#[test]
fn smp_guest_starts_only_the_present_cpus_of_maxcpus() {
    let dir = common::TempDir::new();
    let (mut b, log) = start_guest(&dir.0, "smp", &["-smp", "2,maxcpus=4"]);
    let status =
        disk_common::wait_exit_within(b.child.as_mut().unwrap(), disk_common::GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", log.text());
    assert!(log.has("2 cpus listed in the ACPI MADT"), "{}", log.text());
    assert!(log.has("all 2 cpus online"), "{}", log.text());
}

#[test]
fn bad_smp_topologies_end_the_broker_with_qemus_message() {
    for (smp, msg) in [
        (
            "4,maxcpus=2",
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: sockets (1) * dies (1) * modules (1) * cores (2) * threads (1) == maxcpus (2) < smp_cpus (4)",
        ),
        (
            "2,sockets=2,cores=2",
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (2) * dies (1) * modules (1) * cores (2) * threads (0) != maxcpus (2)",
        ),
        (
            "1,maxcpus=0",
            "Invalid CPU topology: CPU topology parameters must be greater than zero",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["-smp", smp, "-display", "none"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "-smp {smp}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "-smp {smp}: {err}");
        let theirs = Command::new("qemu-system-x86_64")
            .args(["-M", "pc", "-smp", smp, "-display", "none", "-nodefaults"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&theirs.stderr).contains(msg),
            "QEMU's own message for -smp {smp}"
        );
    }
}

#[test]
fn cpu_plugged_before_the_guest_runs_is_listed_enabled_in_the_madt() {
    // QEMU builds its tables when the firmware reads them, after `cont`:
    // a CPU added in prelaunch is an ordinary present CPU to the guest.
    let dir = common::TempDir::new();
    let (mut b, log) = start_guest(
        &dir.0,
        "smp",
        &["-cpu", "qemu64", "-smp", "1,maxcpus=4", "-S"],
    );
    let mut q = b.client();
    let r = q.execute("device_add", cpu_add(0, 3, "late")["arguments"].clone());
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(q.ok("cont"), json!({}));
    let status =
        disk_common::wait_exit_within(b.child.as_mut().unwrap(), disk_common::GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", log.text());
    assert!(log.has("2 cpus listed in the ACPI MADT"), "{}", log.text());
    assert!(log.has("online (apic id 3)"), "{}", log.text());
}

#[test]
fn after_vcpu_proc_dies_device_add_fails_and_the_slots_stay_as_they_were() {
    let b = Bulkhead::start(&["-smp", "1,maxcpus=4", "-cpu", "qemu64"]);
    let mut q = b.client();
    let r = q.execute("device_add", cpu_add(0, 1, "c1")["arguments"].clone());
    assert_eq!(r["return"], json!({}), "{r}");
    let before = q.ok("query-hotpluggable-cpus");
    let vcpu = common::children(common::broker_pid(&b))
        .into_iter()
        .find(|(_, name)| name == "vcpu-proc")
        .map(|(pid, _)| pid)
        .expect("a vcpu-proc worker");
    disk_common::sigkill(vcpu as i32);
    let exited = q.event_where("__org.bulkhead_WORKER_EXITED", |d| d["worker"] == "vcpu");
    assert_eq!(exited["data"]["action"], "guest-crashed");
    let r = q.execute("device_add", cpu_add(0, 2, "c2")["arguments"].clone());
    assert!(r.get("error").is_some(), "{r}");
    assert_eq!(q.ok("query-hotpluggable-cpus"), before);
    // The failed add left neither its slot nor its id behind.
    let r = q.execute("device_add", cpu_add(0, 2, "c2")["arguments"].clone());
    assert_ne!(
        Qmp::error_of(&r).1,
        "Duplicate device ID 'c2'",
        "the id of a failed add stays free"
    );
}

#[test]
fn a_hotplugged_cpu_stays_present_across_system_reset() {
    let (_b, log, mut q) = boot_hotplug_guest("1,maxcpus=4");
    let r = q.execute("device_add", cpu_add(0, 1, "c1")["arguments"].clone());
    assert_eq!(r["return"], json!({}), "{r}");
    log.wait_for("cpu slot 1 online (apic id 1)");
    assert_eq!(q.ok("system_reset"), json!({}));
    let start = std::time::Instant::now();
    while !log.has("4 possible cpus, 2 present") {
        assert!(
            start.elapsed() < disk_common::GUEST_TIMEOUT,
            "{}",
            log.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cpus = q.ok("query-cpus-fast");
    assert_eq!(cpus.as_array().unwrap().len(), 2, "{cpus}");
    assert_eq!(
        q.ok("query-hotpluggable-cpus")[2]["qom-path"],
        "/machine/peripheral/c1"
    );
}
