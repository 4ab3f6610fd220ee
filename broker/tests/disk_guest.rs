//! The `blk` test guest on a disk served through the broker: `-blockdev`
//! or `-drive` plus `-device virtio-blk-device`, block-proc exporting the
//! node, vcpu-proc's vhost-user frontend on the connection the broker
//! made. Checks the guest's verdict, the pattern in the host file and
//! `qemu-img check`. Needs /dev/kvm and qemu-img.

mod common;
mod disk_common;

use std::path::Path;

use common::Bulkhead;
use disk_common::*;
use serde_json::json;

/// Runs the `blk` guest on `img` (given to the broker as `disk_args`) and
/// waits for its exit; returns the serial log text.
fn run_blk_guest(dir: &Path, disk_args: &[String]) -> String {
    let serial = dir.join("serial.log");
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        guest("blk"),
        "-m".into(),
        "64M".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
    ];
    args.extend(disk_args.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Bulkhead::start(&argv);
    let status = wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    let log = SerialLog(serial).text();
    // PASS writes 0 to the debug-exit port: exit status (0 << 1) | 1.
    assert_eq!(status.code(), Some(1), "serial:\n{log}");
    log
}

#[test]
fn blk_guest_passes_on_a_raw_blockdev_and_its_writes_reach_the_file() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let blockdev = json!({"driver": "raw", "node-name": "d0",
        "file": {"driver": "file", "filename": img}});
    let log = run_blk_guest(
        &dir.0,
        &[
            "-blockdev".into(),
            blockdev.to_string(),
            "-device".into(),
            "virtio-blk-device,drive=d0,id=vda".into(),
        ],
    );
    assert!(log.contains("VERDICT: PASS blk"), "{log}");
    // (qemu-img check has nothing to check in a raw image.)
    assert_image_holds_pass(&img, 3);
}

#[test]
fn blk_guest_passes_on_a_qcow2_drive_and_qemu_img_check_is_clean() {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    let log = run_blk_guest(
        &dir.0,
        &[
            "-drive".into(),
            format!("file={},format=qcow2,if=none,id=d0", img.display()),
            "-device".into(),
            "virtio-blk-device,drive=d0,id=vda".into(),
        ],
    );
    assert!(log.contains("VERDICT: PASS blk"), "{log}");
    assert_qemu_img_check(&img, "qcow2");
    assert_image_holds_pass(&raw_view(&img, "qcow2"), 3);
}

#[test]
fn device_of_a_block_worker_restarted_in_prelaunch_works_after_cont() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&["-S"], "blk", "raw", &img, &serial);
    let mut q = b.client();
    let broker = b.child.as_ref().unwrap().id();
    sigkill(block_proc_pid(broker).expect("block-proc runs"));
    q.event("__org.bulkhead_WORKER_RESTARTED");
    q.ok("cont");
    let status = wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1), "serial:\n{}", serial.text());
    assert!(serial.has("VERDICT: PASS blk"), "{}", serial.text());
    assert_image_holds_pass(&img, 3);
}

#[test]
fn guest_writing_its_config_space_keeps_its_disk_and_its_connection() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&["-S"], "blk-config-write", "raw", &img, &serial);
    let mut q = b.client();
    q.ok("cont");
    // Every message until the broker ends with the guest's debug exit.
    let mut seen: Vec<serde_json::Value> = q.events.drain(..).collect();
    while let Some(v) = q.try_recv() {
        seen.push(v);
    }
    let status = wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    let log = serial.text();
    assert!(log.contains("config space written"), "{log}");
    assert!(log.contains("VERDICT: PASS blk-config-write"), "{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert_image_holds_pass(&img, 3);
    // The backend refused the write and kept the connection: the device
    // never lost its backend.
    assert!(
        !seen
            .iter()
            .any(|e| e["event"] == "__org.bulkhead_DEVICE_BACKEND_LOST"),
        "{seen:?}"
    );
}
