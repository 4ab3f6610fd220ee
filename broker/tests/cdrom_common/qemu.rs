//! The `cdrom` guest on QEMU's own virtio-scsi (`-M microvm`,
//! `virtio-scsi-device`, `scsi-cd`): the reference machine of the
//! scenario.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{device_args, play, write_discs};
use crate::common::Qmp;
use crate::disk_common::{guest, SerialLog, GUEST_TIMEOUT};

/// QEMU, killed on drop.
pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts QEMU's microvm on the `cdrom` guest with disc 1 in `cd0`; QMP
/// on `dir/qmp.sock`, serial in `dir/serial.log`.
pub fn start_qemu(dir: &Path, disc1: &Path) -> (Qemu, Qmp, SerialLog) {
    start_qemu_with(dir, &device_args(disc1))
}

/// The options of QEMU's own vhost-user-scsi device on a backend
/// listening on `sock` (guest RAM shared through a memfd), for the interop
/// run of the `cdrom` guest on block-proc's vhost-user-scsi backend (the
/// medium is then the backend's: give it a disc flagged LAST).
pub fn vhost_user_scsi_args(sock: &Path) -> Vec<String> {
    [
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-M",
        "memory-backend=mem",
        "-chardev",
        &format!("socket,id=vus,path={}", sock.display()),
        "-device",
        "vhost-user-scsi,chardev=vus,num_queues=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts QEMU's microvm on the `cdrom` guest with `devices` (the SCSI
/// controller and its drive); QMP on `dir/qmp.sock`, serial in
/// `dir/serial.log`.
pub fn start_qemu_with(dir: &Path, devices: &[String]) -> (Qemu, Qmp, SerialLog) {
    let sock = dir.join("qmp.sock");
    let log = SerialLog(dir.join("serial.log"));
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off",
            "-bios",
            "/usr/share/qemu/qboot.rom",
            "-enable-kvm",
            "-cpu",
            "qemu64,-pni",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-kernel",
        ])
        .arg(guest("cdrom"))
        .arg("-serial")
        .arg(format!("file:{}", log.0.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(devices)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed (scripts/setup)");
    let qemu = Qemu(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "QEMU made no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut q, _) = Qmp::connect(&sock);
    q.negotiate();
    (qemu, q, log)
}

/// Waits for QEMU to exit (the guest's debug-exit) and returns its status.
pub fn wait_exit(q: &mut Qemu) -> Option<i32> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if let Some(s) = q.0.try_wait().unwrap() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "QEMU did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reference transcript: QEMU running the scenario.
pub fn qemu_transcript(dir: &Path) -> Vec<Value> {
    let discs = write_discs(dir);
    let (mut qemu, mut q, log) = start_qemu(dir, &discs[0]);
    let t = play(&mut q, &log, &discs);
    // PASS writes 0 to isa-debug-exit: status (0 << 1) | 1.
    assert_eq!(wait_exit(&mut qemu), Some(1), "serial:\n{}", log.text());
    t
}
