//! Trace points across processes, end to end: `trace-event-set-state`
//! while the `blk-loop` guest runs makes block-proc and vcpu-proc write
//! their lines (to `-trace file=` or through the log), disabling stops
//! them, the state survives a block-proc or net-proc SIGKILL, and the argument rules
//! and errors are QEMU's (QEMU 10 where it has the same shape, the
//! reference's 2.8 rules for `vcpu`, which QEMU 10 removed). Needs
//! /dev/kvm and qemu-system-x86_64.

mod common;
mod disk_common;
mod net_common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{broker_pid, Bulkhead, Qmp, TempDir};
use disk_common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Trace lines so far in `path`, from byte `from` on.
fn lines_from(path: &Path, from: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.get(from..).unwrap_or_default().to_owned()
}

/// Waits until `path` holds, after byte `from`, a line with each of `needles`.
fn wait_for_lines(path: &Path, from: usize, needles: &[&str]) -> String {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let text = lines_from(path, from);
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needles:?} after byte {from} of the trace:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the guest completed `n` more passes (its progress).
fn wait_more_passes(serial: &SerialLog, n: u64) {
    serial.wait_passes(serial.passes() + n);
}

fn set(q: &mut Qmp, args: Value) -> Value {
    q.execute("trace-event-set-state", args)
}

fn get(q: &mut Qmp, args: Value) -> Value {
    q.execute("trace-event-get-state", args)
}

fn len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// The `blk-loop` guest on a raw disk with `-trace file=DIR/trace.log`.
fn blk_loop_with_trace_file(
    dir: &TempDir,
    extra: &[&str],
) -> (Bulkhead, std::path::PathBuf, SerialLog) {
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let trace = dir.0.join("trace.log");
    let opt = format!("file={}", trace.display());
    let mut args = vec!["-trace", &opt];
    args.extend_from_slice(extra);
    let b = start_with_disk(&args, "blk-loop", "raw", &img, &serial);
    serial.wait_passes(1);
    (b, trace, serial)
}

#[test]
fn virtio_points_enabled_while_the_blk_guest_runs_trace_block_proc_and_vcpu_proc_until_disabled() {
    let dir = TempDir::new();
    let (b, trace, serial) = blk_loop_with_trace_file(&dir, &[]);
    let mut q = b.client();
    assert_eq!(lines_from(&trace, 0), "", "nothing is enabled at start");

    let r = set(&mut q, json!({"name": "virtio_*", "enable": true}));
    assert_eq!(r["return"], json!({}), "{r}");
    let text = wait_for_lines(
        &trace,
        0,
        &[
            "block-proc: virtio_blk_request node=\"d0\" queue=0 head=",
            "block-proc: virtio_blk_complete node=\"d0\" queue=0 head=",
            "vcpu-proc: virtio_mmio_read device_type=2 offset=",
            "vcpu-proc: virtio_mmio_write device_type=2 offset=",
        ],
    );
    assert!(!text.contains("kvm_exit"), "only virtio_* points: {text}");

    let r = set(&mut q, json!({"name": "virtio_*", "enable": false}));
    assert_eq!(r["return"], json!({}), "{r}");
    // A firing that checked its point just before the change may still
    // land: let the guest make progress, then nothing more may come.
    wait_more_passes(&serial, 1);
    let settled = len(&trace);
    wait_more_passes(&serial, 1);
    assert_eq!(len(&trace), settled, "{}", lines_from(&trace, settled));
    let states = get(&mut q, json!({"name": "virtio_*"}));
    let states = states["return"].as_array().unwrap().clone();
    assert!(states.len() >= 5, "{states:?}");
    assert!(
        states.iter().all(|s| s["state"] == "disabled"),
        "{states:?}"
    );
}

#[test]
fn block_proc_sigkilled_comes_back_with_the_same_points_enabled() {
    let dir = TempDir::new();
    let (b, trace, serial) = blk_loop_with_trace_file(&dir, &[]);
    let mut q = b.client();
    let r = set(
        &mut q,
        json!({"name": "virtio_blk_complete", "enable": true}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    let r = set(&mut q, json!({"name": "worker_*", "enable": true}));
    assert_eq!(r["return"], json!({}), "{r}");
    wait_for_lines(&trace, 0, &["block-proc: virtio_blk_complete"]);

    let old = block_proc_pid(broker_pid(&b)).expect("block-proc runs");
    signal(old, Signal::SIGKILL);
    let restarted = q.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    assert_ne!(restarted["data"]["pid"], json!(old));
    // The broker's own points: the exit and the restart.
    wait_for_lines(
        &trace,
        0,
        &[
            &format!("broker: worker_exit worker=\"block\" pid={old} "),
            "broker: worker_restart worker=\"block\" pid=",
        ],
    );
    q.event_where("__org.bulkhead_DEVICE_BACKEND_RESTORED", |d| {
        d["id"] == "vda"
    });
    // The restarted worker reports the point enabled itself, and writes it.
    let r = get(&mut q, json!({"name": "virtio_blk_*"}));
    assert_eq!(
        r["return"],
        json!([
            {"name": "virtio_blk_complete", "state": "enabled", "vcpu": false},
            {"name": "virtio_blk_request", "state": "disabled", "vcpu": false},
        ]),
        "{r}"
    );
    let from = len(&trace);
    wait_more_passes(&serial, 1);
    wait_for_lines(&trace, from, &["block-proc: virtio_blk_complete"]);
    assert!(!lines_from(&trace, from).contains("virtio_blk_request"));
}

/// net-proc of a `-S` broker with a TAP netdev and a NIC (the TAP is
/// the broker's: it goes with it), tracing to `DIR/trace.log` with `-trace
/// net_ipc_reply` from the command line.
fn net_proc_with_trace_file(dir: &TempDir) -> (Bulkhead, std::path::PathBuf) {
    let trace = dir.0.join("trace.log");
    let tap = format!("bht{}", std::process::id() % 100_000);
    let b = Bulkhead::start(&[
        "-S",
        "-trace",
        &format!("file={}", trace.display()),
        "-trace",
        "net_ipc_reply",
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        "-device",
        "virtio-net-device,netdev=n0,id=nic0",
    ]);
    (b, trace)
}

#[test]
fn net_proc_gets_the_command_line_points_and_keeps_a_point_enabled_across_a_sigkill() {
    let dir = TempDir::new();
    let (b, trace) = net_proc_with_trace_file(&dir);
    let mut q = b.client();
    // The command line's point reached net-proc at its first start.
    let r = get(&mut q, json!({"name": "net_ipc_*"}));
    assert_eq!(
        r["return"],
        json!([
            {"name": "net_ipc_reply", "state": "enabled", "vcpu": false},
            {"name": "net_ipc_request", "state": "disabled", "vcpu": false},
        ]),
        "{r}"
    );
    wait_for_lines(&trace, 0, &["net-proc: net_ipc_reply "]);
    let r = set(&mut q, json!({"name": "net_ipc_request", "enable": true}));
    assert_eq!(r["return"], json!({}), "{r}");
    let r = q.execute("set_link", json!({"name": "nic0", "up": false}));
    assert_eq!(r["return"], json!({}), "{r}");
    wait_for_lines(&trace, 0, &["net-proc: net_ipc_request "]);

    let old = net_common::worker_pid(broker_pid(&b), "net-proc").expect("net-proc runs");
    let from = len(&trace);
    signal(old, Signal::SIGKILL);
    let restarted = q.event_where("__org.bulkhead_WORKER_RESTARTED", |d| d["worker"] == "net");
    assert_ne!(restarted["data"]["pid"], json!(old));
    // The new net-proc answers with both points enabled, and writes them
    // for the requests of its replay and for new ones.
    let r = get(&mut q, json!({"name": "net_ipc_*"}));
    assert_eq!(
        r["return"],
        json!([
            {"name": "net_ipc_reply", "state": "enabled", "vcpu": false},
            {"name": "net_ipc_request", "state": "enabled", "vcpu": false},
        ]),
        "{r}"
    );
    let r = q.execute("set_link", json!({"name": "nic0", "up": true}));
    assert_eq!(r["return"], json!({}), "{r}");
    let text = wait_for_lines(
        &trace,
        from,
        &["net-proc: net_ipc_request ", "net-proc: net_ipc_reply "],
    );
    assert!(
        !text.contains("vhost_user_msg"),
        "only the enabled points: {text}"
    );
    // Disabling reaches the new net-proc too.
    let r = set(&mut q, json!({"name": "net_ipc_*", "enable": false}));
    assert_eq!(r["return"], json!({}), "{r}");
    let settled = len(&trace);
    let r = q.execute("set_link", json!({"name": "nic0", "up": false}));
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(len(&trace), settled, "{}", lines_from(&trace, settled));
}

#[test]
fn command_line_enable_writes_per_vcpu_kvm_exits_through_the_log() {
    let dir = TempDir::new();
    let log = dir.0.join("vm.log");
    let events = dir.0.join("events");
    // An events file: a pattern, a comment, a disable.
    std::fs::write(&events, "kvm_exit_io_*\n# not this\n-kvm_exit_io_in\n").unwrap();
    let b = Bulkhead::start(&[
        "-D",
        log.to_str().unwrap(),
        "-trace",
        &format!("events={}", events.display()),
        "-S",
    ]);
    let mut q = b.client();
    let r = get(&mut q, json!({"name": "kvm_exit_io_*"}));
    assert_eq!(
        r["return"],
        json!([
            {"name": "kvm_exit_io_out", "state": "enabled", "vcpu": true},
            {"name": "kvm_exit_io_in", "state": "disabled", "vcpu": true},
        ]),
        "{r}"
    );
    q.ok("cont");
    // The built-in guest writes to COM1 (port 0x3f8 = 1016) from vCPU 0.
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("vcpu-proc: kvm_exit_io_out vcpu=0 port=1016 data=[") {
            assert!(!text.contains("kvm_exit_io_in"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no kvm_exit_io_out line:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn vcpu_argument_selects_per_vcpu_points_with_the_reference_rules() {
    let b = Bulkhead::start(&["-smp", "2", "-S"]);
    let mut q = b.client();
    let on1 = set(
        &mut q,
        json!({"name": "kvm_exit_mmio_read", "enable": true, "vcpu": 1}),
    );
    assert_eq!(on1["return"], json!({}), "{on1}");
    let state = |q: &mut Qmp, vcpu: Value| {
        let mut args = json!({"name": "kvm_exit_mmio_read"});
        if !vcpu.is_null() {
            args["vcpu"] = vcpu;
        }
        get(q, args)["return"][0]["state"].clone()
    };
    assert_eq!(state(&mut q, json!(1)), "enabled");
    assert_eq!(state(&mut q, json!(0)), "disabled");
    assert_eq!(state(&mut q, Value::Null), "enabled", "enabled on any vCPU");
    // With vcpu, a pattern selects only per-vCPU points.
    let r = get(&mut q, json!({"name": "*", "vcpu": 0}));
    let list = r["return"].as_array().unwrap();
    assert!(!list.is_empty());
    assert!(list.iter().all(|e| e["vcpu"] == true), "{r}");
    // The special case and the vCPU index check (QEMU 2.8's texts).
    let e = Qmp::error_of(&get(
        &mut q,
        json!({"name": "virtio_blk_request", "vcpu": 0}),
    ));
    assert_eq!(
        e,
        (
            "GenericError".into(),
            "event \"virtio_blk_request\" is not vCPU-specific".into()
        )
    );
    let e = Qmp::error_of(&set(
        &mut q,
        json!({"name": "kvm_exit_mmio_read", "enable": true, "vcpu": 2}),
    ));
    assert_eq!(e, ("GenericError".into(), "invalid vCPU index 2".into()));
    // Enabling for all vCPUs, then disabling on one, leaves the other.
    set(&mut q, json!({"name": "kvm_exit_io_in", "enable": true}));
    set(
        &mut q,
        json!({"name": "kvm_exit_io_in", "enable": false, "vcpu": 0}),
    );
    let r = get(&mut q, json!({"name": "kvm_exit_io_in", "vcpu": 1}));
    assert_eq!(r["return"][0]["state"], "enabled", "{r}");
    let r = get(&mut q, json!({"name": "kvm_exit_io_in", "vcpu": 0}));
    assert_eq!(r["return"][0]["state"], "disabled", "{r}");
}

/// QEMU 10's replies (`return` or `error`) to `cmds` on `-M none`.
fn qemu(cmds: &[Value]) -> Vec<Value> {
    common::qemu::replies(&["-M", "none", "-S"], cmds)
}

#[test]
fn names_patterns_and_errors_answer_as_qemu_10_does() {
    let shapes = [
        json!({"execute": "trace-event-get-state", "arguments": {"name": "nosuch"}}),
        json!({"execute": "trace-event-get-state", "arguments": {"name": "nosuch*"}}),
        json!({"execute": "trace-event-get-state", "arguments": {"name": "nosuch?x"}}),
        json!({"execute": "trace-event-get-state", "arguments": {"name": ""}}),
        json!({"execute": "trace-event-get-state", "arguments": {}}),
        json!({"execute": "trace-event-get-state", "arguments": {"name": 1}}),
        json!({"execute": "trace-event-set-state", "arguments": {"name": "nosuch", "enable": true}}),
        json!({"execute": "trace-event-set-state", "arguments": {"name": "nosuch*", "enable": true}}),
        json!({"execute": "trace-event-set-state",
               "arguments": {"name": "nosuch*", "enable": false, "ignore-unavailable": true}}),
        json!({"execute": "trace-event-set-state", "arguments": {"name": "x"}}),
    ];
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    let ours: Vec<Value> = shapes
        .iter()
        .map(|c| {
            let mut r = q.request(c.clone());
            r.as_object_mut().unwrap().remove("id");
            r
        })
        .collect();
    assert_eq!(ours, qemu(&shapes));
    // And the shape of a match (QEMU's lists have no `vcpu` member any
    // more; the reference's have it).
    let ours = get(&mut q, json!({"name": "virtio_blk_*"}));
    let theirs = qemu(&[json!({"execute": "trace-event-get-state",
                              "arguments": {"name": "virtio_blk_req_complete"}})]);
    assert_eq!(
        theirs[0]["return"],
        json!([{"name": "virtio_blk_req_complete", "state": "disabled"}])
    );
    for e in ours["return"].as_array().unwrap() {
        assert_eq!(e["state"], "disabled", "{ours}");
        assert_eq!(e["vcpu"], false, "{ours}");
    }
}

#[test]
fn query_gic_capabilities_is_an_empty_list_on_x86() {
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    assert_eq!(q.ok("query-gic-capabilities"), json!([]));
}

#[test]
fn trace_options_get_qemus_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["-trace", "bogus=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "bulkhead: -trace bogus=1: Invalid parameter 'bogus'"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["-trace", "events=/nonexistent/events"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "bulkhead: /nonexistent/events: No such file or directory"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["-trace", "file=/nonexistent/trace.log"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "bulkhead: Error opening logfile /nonexistent/trace.log: No such file or directory"
    );
}
