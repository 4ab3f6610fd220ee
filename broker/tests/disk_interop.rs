//! Interop: bulkhead's vhost-user-blk frontend on qemu-storage-daemon's
//! vhost-user-blk export instead of block-proc (`-chardev socket` +
//! `-device vhost-user-blk`, the broker connecting to the daemon's socket).
//! The `blk` guest passes and its writes reach the image. Needs /dev/kvm
//! and qemu-storage-daemon.

mod common;
mod disk_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bulkhead, Qmp};
use disk_common::*;
use serde_json::json;

/// qemu-storage-daemon, killed on drop.
struct Qsd(Child);

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_qsd(img: &Path, format: &str, sock: &Path) -> Qsd {
    start_qsd_with(img, format, sock, &[])
}

fn start_qsd_with(img: &Path, format: &str, sock: &Path, extra: &[String]) -> Qsd {
    let child = Command::new("qemu-storage-daemon")
        .args(extra)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            img.display()
        ))
        .arg("--blockdev")
        .arg(format!("driver={format},node-name=d,file=f"))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable=on",
            sock.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon is needed");
    let qsd = Qsd(child);
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no qsd socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    qsd
}

fn run_on_qsd(format: &str) {
    let dir = common::TempDir::new();
    let img = match format {
        "raw" => raw_image(&dir.0),
        _ => qcow2_image(&dir.0),
    };
    let sock = dir.0.join("qsd.sock");
    let _qsd = start_qsd(&img, format, &sock);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = Bulkhead::start(&[
        "-kernel",
        &guest("blk"),
        "-m",
        "64M",
        "-serial",
        &format!("file:{}", serial.0.display()),
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-device",
        "vhost-user-blk,chardev=c0,id=vdb",
    ]);
    let status = wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1), "serial:\n{}", serial.text());
    assert!(serial.has("VERDICT: PASS blk"), "{}", serial.text());
    assert_image_holds_pass(&raw_view(&img, format), 3);
}

#[test]
fn blk_guest_passes_on_qemu_storage_daemon_raw_export() {
    run_on_qsd("raw");
}

#[test]
fn blk_guest_passes_on_qemu_storage_daemon_qcow2_export() {
    run_on_qsd("qcow2");
}

#[test]
fn frontend_reconnects_to_a_restarted_qemu_storage_daemon_and_the_guest_goes_on() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let sock = dir.0.join("qsd.sock");
    let qsd = start_qsd(&img, "raw", &sock);
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = Bulkhead::start(&[
        "-kernel",
        &guest("blk-loop"),
        "-m",
        "64M",
        "-serial",
        &format!("file:{}", serial.0.display()),
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-device",
        "vhost-user-blk,chardev=c0,id=vdb",
    ]);
    let mut q = b.client();
    serial.wait_passes(2);
    drop(qsd);
    let _ = std::fs::remove_file(&sock);
    let lost = q.event("__org.bulkhead_DEVICE_BACKEND_LOST");
    assert_eq!(lost["data"]["id"], "vdb");
    // The broker keeps trying while no daemon listens.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(q.ok("query-status")["status"], "running");
    let _qsd = start_qsd(&img, "raw", &sock);
    let restored = q.event("__org.bulkhead_DEVICE_BACKEND_RESTORED");
    assert_eq!(restored["data"]["id"], "vdb");
    let before = serial.passes();
    serial.wait_passes(before + 2);
    assert!(!serial.has("FAIL"), "{}", serial.text());
}

#[test]
fn block_resize_on_qemu_storage_daemon_reaches_the_running_guest_as_a_config_interrupt() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let sock = dir.0.join("qsd.sock");
    let mon = dir.0.join("qsd-qmp.sock");
    let _qsd = start_qsd_with(
        &img,
        "raw",
        &sock,
        &[
            "--chardev".into(),
            format!("socket,path={},server=on,wait=off,id=m", mon.display()),
            "--monitor".into(),
            "chardev=m".into(),
        ],
    );
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = Bulkhead::start(&[
        "-kernel",
        &guest("blk-loop"),
        "-m",
        "64M",
        "-serial",
        &format!("file:{}", serial.0.display()),
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-device",
        "vhost-user-blk,chardev=c0,id=vdb",
    ]);
    let _q = b.client();
    serial.wait_passes(1);
    let (mut qsd_qmp, _) = Qmp::connect(&mon);
    qsd_qmp.negotiate();
    // qemu-storage-daemon sends CONFIG_CHANGE_MSG on the channel our
    // frontend gave it (libvhost-user's vu_config_change_msg).
    let bigger = IMAGE_BYTES * 2;
    let r = qsd_qmp.execute("block_resize", json!({"node-name": "d", "size": bigger}));
    assert_eq!(r["return"], json!({}), "{r}");
    serial.wait_for(&format!(
        "blk: config change, capacity {} sectors",
        bigger / 512
    ));
    let before = serial.passes();
    serial.wait_passes(before + 1);
    assert!(!serial.has("FAIL"), "{}", serial.text());
}
