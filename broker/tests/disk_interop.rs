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

/// Live migration of a VM whose disk is qemu-storage-daemon's export
/// (libvhost-user): the source's frontend hands the daemon its dirty log
/// (SET_LOG_BASE, whose 8-byte reply the `vhost` crate cannot read, see
/// vcpu-proc's `virtio/raw_msg.rs`) and the migration completes; the
/// target, on a second export of the same node, goes on with the
/// `blk-loop` guest's passes and its checks of what was written before.
#[test]
fn a_blk_loop_guest_on_qemu_storage_daemon_migrates_and_verifies_on_the_target() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let (sock1, sock2) = (dir.0.join("qsd1.sock"), dir.0.join("qsd2.sock"));
    let export = |id: &str, sock: &Path| {
        format!(
            "type=vhost-user-blk,id={id},node-name=d,addr.type=unix,addr.path={},writable=on",
            sock.display()
        )
    };
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            img.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=d,file=f"])
        .arg("--export")
        .arg(export("e1", &sock1))
        .arg("--export")
        .arg(export("e2", &sock2))
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon is needed");
    let _qsd = Qsd(child);
    let start = Instant::now();
    while !(sock1.exists() && sock2.exists()) {
        assert!(start.elapsed() < Duration::from_secs(30), "no qsd sockets");
        std::thread::sleep(Duration::from_millis(10));
    }
    let vm = |log: &SerialLog, sock: &Path, extra: &[&str]| {
        let mut args = vec![
            "-kernel".to_owned(),
            guest("blk-loop"),
            "-m".into(),
            "64M".into(),
            "-serial".into(),
            format!("file:{}", log.0.display()),
            "-chardev".into(),
            format!("socket,id=c0,path={}", sock.display()),
            "-device".into(),
            "vhost-user-blk,chardev=c0,id=vdb".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Bulkhead::start(&args)
    };
    let (src_log, dst_log) = (
        SerialLog(dir.0.join("src.log")),
        SerialLog(dir.0.join("dst.log")),
    );
    let mig = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", mig.display());
    let src = vm(&src_log, &sock1, &[]);
    let dst = vm(&dst_log, &sock2, &["-incoming", &incoming, "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    src_log.wait_passes(2);
    assert_eq!(
        s.execute("migrate", json!({"uri": incoming})),
        json!({"return": {}})
    );
    let start = Instant::now();
    let info = loop {
        let r = s.ok("query-migrate");
        if r["status"] == "completed" || r["status"] == "failed" {
            break r;
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "migration stuck: {r}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(s.ok("query-status")["status"], "postmigrate");
    let start = Instant::now();
    while d.ok("query-status")["status"] != "paused" {
        assert!(start.elapsed() < common::TIMEOUT, "the target never loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok("cont");
    let at_switch = src_log.passes();
    dst_log.wait_passes(at_switch + 2);
    assert!(!dst_log.has("FAIL"), "{}", dst_log.text());
    assert!(!dst_log.has("Bulkhead test guest"), "{}", dst_log.text());
}
