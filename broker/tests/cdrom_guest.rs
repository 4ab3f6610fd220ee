//! The CD-ROM scenario (`cdrom_common`) through the broker: `-device
//! virtio-scsi-device` + `scsi-cd`, block-proc serving the controller as
//! a vhost-user-scsi backend, vcpu-proc's virtio-scsi frontend, the
//! `cdrom` guest. Its QMP transcript must equal QEMU's
//! (`cdrom_qemu.rs`), including with block-proc SIGKILLed while the guest
//! reads disc 1 over and over with the tray locked: it keeps reading, and
//! the medium, tray and lock come back unchanged.
//!
//! Needs /dev/kvm and qemu-system-x86_64.

mod cdrom_common;
mod common;
mod disk_common;

use std::path::Path;

use cdrom_common::qemu::qemu_transcript;
use cdrom_common::{device_args, play_with, wait_count, write_discs};
use common::{Bulkhead, Qmp};
use disk_common::{block_proc_pid, guest, sigkill, wait_exit_within, SerialLog, GUEST_TIMEOUT};
use serde_json::Value;

/// The broker's transcript of the scenario; `locked` runs once the guest
/// has locked the tray on disc 1.
fn broker_transcript(dir: &Path, locked: &mut dyn FnMut(&mut Qmp, &SerialLog, u32)) -> Vec<Value> {
    let discs = write_discs(dir);
    let log = SerialLog(dir.join("serial.log"));
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        guest("cdrom"),
        "-m".into(),
        "64M".into(),
        "-serial".into(),
        format!("file:{}", log.0.display()),
    ];
    args.extend(device_args(&discs[0]));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Bulkhead::start(&argv);
    let broker = b.child.as_ref().unwrap().id();
    let mut q = b.client();
    let t = play_with(&mut q, &log, &discs, &mut |q, log| locked(q, log, broker));
    let status = wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1), "serial:\n{}", log.text());
    t
}

#[test]
fn cdrom_guest_through_the_broker_gets_qemus_answers_to_eject_and_change_medium() {
    common::require_kvm();
    let reference = qemu_transcript(&common::TempDir::new().0);
    let ours = broker_transcript(&common::TempDir::new().0, &mut |_, _, _| {});
    assert_eq!(ours, reference);
}

#[test]
fn cdrom_guest_keeps_its_locked_tray_and_disc_across_a_block_proc_sigkill() {
    common::require_kvm();
    let reference = qemu_transcript(&common::TempDir::new().0);
    let ours = broker_transcript(&common::TempDir::new().0, &mut |q, log, broker| {
        // Killed while the guest reads disc 1 over and over.
        const PASS: &str = "cdrom: disc 1 pass ";
        wait_count(log, PASS, 2);
        let pid = block_proc_pid(broker).expect("block-proc runs");
        sigkill(pid);
        let lost = q.event("__org.bulkhead_DEVICE_BACKEND_LOST");
        assert_eq!(lost["data"]["id"], "scsi0");
        let restored = q.event("__org.bulkhead_DEVICE_BACKEND_RESTORED");
        assert_eq!(restored["data"]["id"], "scsi0");
        let exited = q.event("__org.bulkhead_WORKER_EXITED");
        assert_eq!(exited["data"]["worker"], "block");
        assert_eq!(exited["data"]["signal"], "SIGKILL");
        let restarted = q.event("__org.bulkhead_WORKER_RESTARTED");
        assert_eq!(restarted["data"]["worker"], "block");
        // The guest keeps reading (each pass checks every block).
        let passes = log.text().matches(PASS).count();
        wait_count(log, PASS, passes + 2);
    });
    // The kill is invisible in the rest: the lock still refuses `eject`,
    // query-block shows the same disc, the guest reads discs 2 and 3.
    assert_eq!(ours, reference);
}
