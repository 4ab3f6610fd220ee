//! The reference run of the CD-ROM scenario (`cdrom_common`): the `cdrom`
//! guest on QEMU's own virtio-scsi (`-M microvm`, `virtio-scsi-device`,
//! `scsi-cd`), QMP changing the medium, `eject` refused while the guest
//! holds the tray locked and forced through, the guest reading each new
//! disc. Asserts QEMU's transcript step by step, so that the broker's
//! (`cdrom_guest.rs`) is compared with a known-good reference. Needs
//! /dev/kvm, qemu-system-x86_64 and QEMU's qboot.rom.

mod cdrom_common;
mod common;
mod disk_common;

use cdrom_common::qemu::qemu_transcript;
use cdrom_common::LOCKED;
use serde_json::{json, Value};

fn tray(locked: bool, open: bool, inserted: Option<&str>) -> Value {
    let inserted = inserted.map(|f| json!({"ro": true, "drv": "raw", "file": f}));
    json!({"tray-state": [{"device": "", "qdev": "cd0", "removable": true,
        "locked": locked, "tray_open": open, "inserted": inserted}]})
}

fn moved(open: bool) -> Value {
    json!({"event": "DEVICE_TRAY_MOVED", "data": {"device": "", "id": "cd0", "tray-open": open}})
}

#[test]
fn cdrom_guest_on_qemu_reads_each_new_disc_and_eject_is_refused_while_locked_unless_forced() {
    common::require_kvm();
    let dir = common::TempDir::new();
    let t = qemu_transcript(&dir.0);
    let replies: Vec<&Value> = t.iter().map(|s| s.get("reply").unwrap_or(s)).collect();
    let locked_err = json!({"error": {"class": "GenericError", "desc": LOCKED}});
    let ok = json!({"return": {}});
    let expected = [
        &tray(true, false, Some("disc1.iso")),
        &locked_err,
        &ok,
        &moved(true),
        &tray(false, true, None),
        &ok,
        &moved(false),
        &tray(true, false, Some("disc2.iso")),
        &locked_err,
        &moved(true),
        &tray(false, true, Some("disc2.iso")),
        &ok,
        &moved(false),
    ];
    assert_eq!(replies, expected, "transcript: {t:#?}");
}
