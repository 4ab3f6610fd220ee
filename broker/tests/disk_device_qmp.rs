//! `device_add` / `device_del` of `virtio-blk-device` over QMP: in
//! `prelaunch` (`-S`) a device can be added and removed (DEVICE_DELETED),
//! and the guest finds it after `cont`; once the guest has run, the
//! virtio-mmio bus takes no hotplug; bad drivers, properties, drives and
//! ids give QEMU's messages; `query-block` lists the device. Needs /dev/kvm.

mod common;
mod disk_common;

use common::{Bulkhead, Qmp};
use disk_common::*;
use serde_json::{json, Value};

fn start_paused(dir_serial: &std::path::Path, kernel: &str) -> Bulkhead {
    Bulkhead::start(&[
        "-S",
        "-kernel",
        kernel,
        "-m",
        "64M",
        "-serial",
        &format!("file:{}", dir_serial.display()),
    ])
}

fn add_raw_node(q: &mut Qmp, name: &str, img: &std::path::Path) {
    let r = q.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": name,
               "file": {"driver": "file", "filename": img}}),
    );
    assert_eq!(r, json!({"return": {}}));
}

fn device_add(q: &mut Qmp, args: Value) -> Value {
    q.execute("device_add", args)
}

#[test]
fn device_added_in_prelaunch_is_found_by_the_guest_after_cont() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_paused(&serial.0, &guest("blk"));
    let mut q = b.client();
    add_raw_node(&mut q, "d0", &img);
    let r = device_add(
        &mut q,
        json!({"driver": "virtio-blk-device", "drive": "d0", "id": "vda"}),
    );
    assert_eq!(r, json!({"return": {}}));
    let blocks = q.ok("query-block");
    assert_eq!(blocks[0]["qdev"], "vda");
    assert_eq!(blocks[0]["inserted"]["node-name"], "d0");
    q.ok("cont");
    let status = wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1), "serial:\n{}", serial.text());
    assert!(serial.has("VERDICT: PASS blk"), "{}", serial.text());
    assert_image_holds_pass(&img, 3);
}

#[test]
fn device_del_in_prelaunch_removes_the_device_and_emits_device_deleted() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let b = start_paused(&dir.0.join("serial.log"), &guest("blk"));
    let mut q = b.client();
    add_raw_node(&mut q, "d0", &img);
    let args = json!({"driver": "virtio-blk-device", "drive": "d0", "id": "vda"});
    assert_eq!(device_add(&mut q, args.clone()), json!({"return": {}}));
    assert_eq!(
        q.execute("device_del", json!({"id": "vda"})),
        json!({"return": {}})
    );
    let ev = q.event("DEVICE_DELETED");
    assert_eq!(
        ev["data"],
        json!({"device": "vda", "path": "/machine/peripheral/vda"})
    );
    assert_eq!(q.ok("query-block"), json!([]));
    // The id and the drive are free again.
    assert_eq!(device_add(&mut q, args), json!({"return": {}}));
    let (class, desc) = Qmp::error_of(&q.execute("device_del", json!({"id": "nope"})));
    assert_eq!(class, "DeviceNotFound");
    assert_eq!(desc, "Device 'nope' not found");
}

#[test]
fn device_add_errors_use_qemu_messages() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let b = start_paused(&dir.0.join("serial.log"), &guest("blk"));
    let mut q = b.client();
    add_raw_node(&mut q, "d0", &img);
    let cases = [
        (
            json!({"driver": "frobnicator", "id": "x"}),
            "'frobnicator' is not a valid device model name",
        ),
        (
            json!({"driver": "virtio-blk-device", "drive": "nope", "id": "x"}),
            "Property 'virtio-blk-device.drive' can't find value 'nope'",
        ),
        (
            json!({"driver": "virtio-blk-device", "drive": "d0", "id": "x", "foo": 1}),
            "Property 'virtio-blk-device.foo' not found",
        ),
        (
            json!({"driver": "virtio-blk-device", "id": "x"}),
            "drive property not set",
        ),
        (json!({"id": "x"}), "Parameter 'driver' is missing"),
    ];
    for (args, want) in cases {
        let (class, desc) = Qmp::error_of(&device_add(&mut q, args.clone()));
        assert_eq!(
            (class.as_str(), desc.as_str()),
            ("GenericError", want),
            "{args}"
        );
    }
    let ok = json!({"driver": "virtio-blk-device", "drive": "d0", "id": "vda"});
    assert_eq!(device_add(&mut q, ok.clone()), json!({"return": {}}));
    let (_, desc) = Qmp::error_of(&device_add(&mut q, ok));
    assert_eq!(desc, "Duplicate device ID 'vda'");
}

#[test]
fn device_add_and_del_while_running_fail_with_a_hotplug_error() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = start_with_disk(&[], "blk-loop", "raw", &img, &serial);
    let mut q = b.client();
    add_raw_node(&mut q, "d1", &raw_image_named(&b.dir.0, "second.raw"));
    let (class, desc) = Qmp::error_of(&device_add(
        &mut q,
        json!({"driver": "virtio-blk-device", "drive": "d1", "id": "vdb"}),
    ));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "Bus 'virtio-mmio-bus.1' does not support hotplugging");
    let (class, desc) = Qmp::error_of(&q.execute("device_del", json!({"id": "vda"})));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "Bus 'virtio-mmio-bus.0' does not support hotplugging");
    // The device keeps working.
    serial.wait_passes(1);
    assert_eq!(q.ok("query-block")[0]["inserted"]["node-name"], "d0");
}

#[test]
fn system_reset_resets_the_disk_and_the_rebooted_guest_uses_it_again() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = start_with_disk(&[], "blk-loop", "raw", &img, &serial);
    let mut q = b.client();
    serial.wait_passes(2);
    q.ok("system_reset");
    q.event("RESET");
    // After the reboot the guest sets the disk up again and counts from 1.
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    loop {
        let text = serial.text();
        let boots: Vec<&str> = text.split("blk: capacity").collect();
        if boots.len() >= 3 && boots[2].contains("pass 2 ok") {
            break;
        }
        assert!(!text.contains("FAIL"), "{text}");
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_backend_that_never_answers_fails_cont_instead_of_wedging_qmp() {
    let dir = common::TempDir::new();
    let sock = dir.0.join("silent.sock");
    // Accepts connections (in the backlog) and never says a word.
    let _silent = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let b = Bulkhead::start(&[
        "-S",
        "-kernel",
        &guest("blk"),
        "-m",
        "64M",
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-device",
        "vhost-user-blk,chardev=c0,id=vdb",
    ]);
    let mut q = b.client();
    let (class, desc) = Qmp::error_of(&q.execute("cont", Value::Null));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("cannot attach device 'vdb'"), "{desc}");
    assert_eq!(q.ok("query-status")["status"], "prelaunch");
}

#[test]
fn a_node_under_a_device_cannot_be_deleted() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let b = start_paused(&dir.0.join("serial.log"), &guest("blk"));
    let mut q = b.client();
    add_raw_node(&mut q, "d0", &img);
    let r = device_add(
        &mut q,
        json!({"driver": "virtio-blk-device", "drive": "d0", "id": "vda"}),
    );
    assert_eq!(r, json!({"return": {}}));
    let (class, desc) = Qmp::error_of(&q.execute("blockdev-del", json!({"node-name": "d0"})));
    assert_eq!(class, "GenericError");
    // QEMU says "Node d0 is in use" for a node under a device; block-proc
    // words every "in use" refusal as QEMU does for a node under a node.
    assert!(desc.ends_with("d0 is in use"), "{desc}");
}
