//! The CD-ROM's tray and medium, end to end: `blockdev-open-tray`,
//! `blockdev-close-tray`, `blockdev-remove-medium`, `blockdev-insert-medium`
//! (and their `x-` names), `blockdev-change-medium`, `eject`, `query-block`'s
//! removable fields and `DEVICE_TRAY_MOVED`.
//!
//! The tests compare every answer and event of scripted sequences with
//! `qemu-system-x86_64` (microvm, `virtio-scsi-device`, `scsi-cd`, `-S`, no
//! guest) and check that the medium state survives a SIGKILLed block-proc.
//! The same commands with a guest locking the tray, reading discs and
//! seeing them change are `cdrom_guest.rs` (the `cdrom` guest's scenario,
//! compared with QEMU's transcript).
//!
//! Needs /dev/kvm and qemu-system-x86_64.

mod common;
mod disk_common;

use std::path::Path;

use common::{broker_pid, Bulkhead, Qmp, TempDir};
use disk_common::*;
use serde_json::{json, Value};

const RESTARTED: &str = "__org.bulkhead_WORKER_RESTARTED";

/// Writes `len` bytes of a pattern seeded by `seed` to `dir/name`.
fn disc(dir: &Path, name: &str, len: usize, seed: u8) -> String {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

/// The images of the sequences: a read-only disc `a` under m0, a writable
/// image `b` under m1, two disks, and discs `c`, `d`, `e` for
/// `blockdev-change-medium` (each file is opened once: bulkhead locks
/// images when it opens them, QEMU when a device uses them).
struct Images {
    args: Vec<String>,
    c: String,
    d: String,
    e: String,
    missing: String,
}

fn images(dir: &Path) -> Images {
    let a = disc(dir, "a.iso", 64 << 10, 1);
    let b = disc(dir, "b.iso", 128 << 10, 2);
    let disk = disc(dir, "disk.raw", 1 << 20, 0);
    let disk2 = disc(dir, "disk2.raw", 1 << 20, 0);
    let bd = |v: Value| vec!["-blockdev".to_owned(), v.to_string()];
    let mut args = vec![
        "-device".to_owned(),
        "virtio-scsi-device,id=scsi0".to_owned(),
    ];
    args.extend(bd(
        json!({"driver": "file", "filename": a, "node-name": "f1", "read-only": true}),
    ));
    args.extend(bd(
        json!({"driver": "raw", "file": "f1", "node-name": "m0", "read-only": true}),
    ));
    args.extend(bd(
        json!({"driver": "file", "filename": b, "node-name": "f2"}),
    ));
    args.extend(bd(
        json!({"driver": "raw", "file": "f2", "node-name": "m1"}),
    ));
    args.extend(bd(
        json!({"driver": "file", "filename": disk, "node-name": "vdiskf"}),
    ));
    args.extend(bd(
        json!({"driver": "raw", "file": "vdiskf", "node-name": "vdisk"}),
    ));
    args.extend(bd(
        json!({"driver": "file", "filename": disk2, "node-name": "hdf"}),
    ));
    args.extend(bd(
        json!({"driver": "raw", "file": "hdf", "node-name": "hdn"}),
    ));
    for d in [
        "scsi-cd,drive=m0,id=cd0",
        "virtio-blk-device,drive=vdisk,id=vda",
        "scsi-hd,drive=hdn,id=hd0",
    ] {
        args.extend(["-device".to_owned(), d.to_owned()]);
    }
    Images {
        args,
        c: disc(dir, "c.iso", 64 << 10, 3),
        d: disc(dir, "d.iso", 128 << 10, 4),
        e: disc(dir, "e.iso", 64 << 10, 5),
        missing: dir.join("missing.iso").to_string_lossy().into_owned(),
    }
}

fn cmd(name: &str, args: Value) -> Value {
    if args.is_null() {
        json!({"execute": name})
    } else {
        json!({"execute": name, "arguments": args})
    }
}

/// Node names QEMU and bulkhead make up (`#block123`, `#medium001`) as
/// `#`; events without their timestamp.
fn normalized(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) if s.starts_with('#') => *s = "#".into(),
            Value::String(s) => *s = hmp_names(s),
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Object(o) => {
                o.remove("timestamp");
                o.values_mut().for_each(walk);
            }
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// HMP's `info block` names a node `(#block123)` / `(#medium001)`, and
/// a `-drive`'s node, which bulkhead names after the drive (`(drv1)`):
/// all become `(#)`.
fn hmp_names(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("(#").or_else(|| rest.find("(drv1)")) {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(')').map_or(rest.len(), |e| i + e + 1);
        out.push_str("(#)");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// QEMU's messages (replies and events, in order) for `cmds`.
fn qemu_transcript(args: &[String], cmds: &[Value]) -> Vec<Value> {
    let mut all = vec!["-machine", "microvm", "-nodefaults", "-S"];
    all.extend(args.iter().map(String::as_str));
    common::qemu::transcript(&all, cmds)
        .into_iter()
        .filter(|v| v.get("event").and_then(Value::as_str) != Some("SHUTDOWN"))
        .map(normalized)
        .collect()
}

/// Our messages (replies and events, in order) for `cmds` on `q`.
fn our_transcript(q: &mut Qmp, cmds: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for c in cmds {
        q.send_raw(c.to_string().as_bytes());
        loop {
            let v = q.recv();
            let reply = v.get("event").is_none();
            out.push(normalized(v));
            if reply {
                break;
            }
        }
    }
    out
}

/// Runs `cmds` on QEMU and on bulkhead (both `-S`, same devices) and
/// compares every message.
fn compare_with_qemu(cmds: &[Value], imgs: &Images) {
    let theirs = qemu_transcript(&imgs.args, cmds);
    let mut args: Vec<&str> = vec!["-S"];
    args.extend(imgs.args.iter().map(String::as_str));
    let b = Bulkhead::start(&args);
    let mut q = b.client();
    let ours = our_transcript(&mut q, cmds);
    for (i, (o, t)) in ours.iter().zip(theirs.iter()).enumerate() {
        assert_eq!(
            o, t,
            "message {i} differs (ours, QEMU's); ours so far: {ours:#?}"
        );
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "ours {ours:#?}\nQEMU's {theirs:#?}"
    );
}

#[test]
fn tray_and_medium_commands_answer_as_qemu_with_their_events() {
    let dir = TempDir::new();
    let imgs = images(&dir.0);
    let id = |i: &str| json!({"id": i});
    let cmds = vec![
        cmd("query-block", Value::Null),
        // A virtio-blk disk and a SCSI disk are not removable.
        cmd("blockdev-open-tray", id("vda")),
        cmd("eject", id("vda")),
        cmd("blockdev-close-tray", id("vda")),
        cmd("blockdev-remove-medium", id("vda")),
        cmd(
            "blockdev-change-medium",
            json!({"id": "vda", "filename": imgs.e, "format": "raw"}),
        ),
        cmd(
            "blockdev-change-medium",
            json!({"id": "vda", "filename": imgs.missing}),
        ),
        cmd("eject", id("hd0")),
        // Names that are no drive.
        cmd("blockdev-open-tray", id("scsi0")),
        cmd("blockdev-open-tray", id("nope")),
        cmd("blockdev-open-tray", json!({"device": "nope"})),
        cmd("blockdev-open-tray", json!({"device": "cd0"})),
        cmd("blockdev-open-tray", json!({})),
        cmd("blockdev-open-tray", json!({"id": "cd0", "device": "x"})),
        // The tray must be open to remove or insert.
        cmd("blockdev-remove-medium", id("cd0")),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd0", "node-name": "m1"}),
        ),
        cmd("blockdev-close-tray", id("cd0")),
        cmd("blockdev-open-tray", id("cd0")),
        cmd("blockdev-open-tray", id("cd0")),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd0", "node-name": "m1"}),
        ),
        cmd("blockdev-remove-medium", id("cd0")),
        cmd("blockdev-remove-medium", id("cd0")),
        cmd("query-block", Value::Null),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd0", "node-name": "nonode"}),
        ),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd0", "node-name": "vdisk"}),
        ),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd0", "node-name": "m1"}),
        ),
        cmd("blockdev-del", json!({"node-name": "m1"})),
        cmd("blockdev-close-tray", id("cd0")),
        cmd("query-block", Value::Null),
        // eject: open and remove; again: nothing to do.
        cmd("eject", id("cd0")),
        cmd("eject", id("cd0")),
        cmd("query-block", Value::Null),
        // change-medium: open (already), insert, close; then
        // open, remove, insert, close.
        cmd(
            "blockdev-change-medium",
            json!({"id": "cd0", "filename": imgs.c, "format": "raw"}),
        ),
        cmd("query-block", Value::Null),
        cmd(
            "blockdev-change-medium",
            json!({"id": "cd0", "filename": imgs.d, "format": "raw",
                "read-only-mode": "read-write"}),
        ),
        cmd("query-named-block-nodes", Value::Null),
        // The drive's own node goes with the medium.
        cmd(
            "eject",
            json!({"id": "/machine/peripheral/cd0", "force": true}),
        ),
        cmd("query-named-block-nodes", Value::Null),
        cmd("query-block", Value::Null),
    ];
    compare_with_qemu(&cmds, &imgs);
}

#[test]
fn scsi_drives_added_in_prelaunch_answer_as_qemu() {
    let dir = TempDir::new();
    let imgs = images(&dir.0);
    let qcow2 = qcow2_image(&dir.0);
    let id = |i: &str| json!({"id": i});
    let cmds = vec![
        cmd("device_add", json!({"driver": "scsi-cd", "id": "cd2"})),
        cmd("device_add", json!({"driver": "scsi-cd", "id": "cd2"})),
        // Two CDs may read one node.
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd3", "drive": "m0"}),
        ),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd3", "drive": "nonode"}),
        ),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd3", "bus": "scsix.0"}),
        ),
        cmd("device_add", json!({"driver": "scsi-hd", "id": "hd9"})),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd7", "channel": 1}),
        ),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd8", "channel": 0, "scsi-id": 300}),
        ),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd9", "lun": 20000}),
        ),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd6", "scsi-id": 0, "lun": 0}),
        ),
        cmd(
            "device_add",
            json!({"driver": "scsi-cd", "id": "cd4", "drive": "m1", "scsi-id": 5, "lun": 3}),
        ),
        cmd("query-block", Value::Null),
        cmd("query-blockstats", Value::Null),
        // An empty drive.
        cmd("blockdev-close-tray", id("cd2")),
        cmd("blockdev-open-tray", id("cd2")),
        cmd("blockdev-remove-medium", id("cd2")),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd2", "node-name": "m1"}),
        ),
        cmd("eject", id("cd4")),
        cmd(
            "blockdev-insert-medium",
            json!({"id": "cd2", "node-name": "m1"}),
        ),
        cmd("blockdev-close-tray", id("cd2")),
        cmd("query-block", Value::Null),
        cmd(
            "blockdev-change-medium",
            json!({"id": "cd0", "filename": imgs.c, "format": "qcow2"}),
        ),
        cmd(
            "blockdev-change-medium",
            json!({"id": "cd0", "filename": imgs.c, "read-only-mode": "bogus"}),
        ),
        // No format: probed (raw), read-only as the medium it replaces.
        cmd(
            "blockdev-change-medium",
            json!({"id": "cd0", "filename": imgs.c}),
        ),
        cmd("query-block", Value::Null),
        cmd("blockdev-open-tray", json!({"id": "cd0", "force": true})),
        cmd("blockdev-close-tray", id("cd0")),
        cmd("blockdev-insert-medium", id("cd0")),
        cmd("query-named-block-nodes", Value::Null),
        cmd("query-blockstats", Value::Null),
        // No format: a qcow2 image is probed as qcow2.
        cmd(
            "blockdev-change-medium",
            json!({"id": "cd0", "filename": qcow2}),
        ),
        cmd("query-block", Value::Null),
    ];
    compare_with_qemu(&cmds, &imgs);
}

#[test]
fn hmp_eject_change_and_info_block_answer_as_qemu() {
    let dir = TempDir::new();
    let mut imgs = images(&dir.0);
    let drive = disc(&dir.0, "drive.iso", 64 << 10, 6);
    imgs.args.extend([
        "-drive".to_owned(),
        format!("if=none,id=drv1,media=cdrom,file={drive},format=raw"),
        "-device".to_owned(),
        "scsi-cd,drive=drv1,id=cd1".to_owned(),
    ]);
    let hmp = |line: &str| cmd("human-monitor-command", json!({"command-line": line}));
    let cmds = vec![
        hmp("info block"),
        // HMP names the block backend: a `-drive` id.
        hmp("eject cd0"),
        hmp("eject -f drv1"),
        hmp("info block"),
        hmp(&format!("change drv1 {} raw read-only", imgs.c)),
        hmp(&format!("change drv1 {}", imgs.missing)),
        hmp("eject"),
        hmp("change drv1"),
        hmp("info block"),
        hmp("help eject"),
        hmp("help change"),
    ];
    compare_with_qemu(&cmds, &imgs);
}

/// The reference's old names (`x-blockdev-remove-medium`,
/// `x-blockdev-insert-medium`, which QEMU 10 no longer has) do what the
/// new ones do and take `device` or `id`.
#[test]
fn the_reference_x_names_work_like_the_new_ones() {
    let dir = TempDir::new();
    let imgs = images(&dir.0);
    let mut args: Vec<&str> = vec!["-S"];
    args.extend(imgs.args.iter().map(String::as_str));
    let b = Bulkhead::start(&args);
    let mut q = b.client();
    let r = q.execute("x-blockdev-remove-medium", json!({"id": "cd0"}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "Tray of device 'cd0' is not open",
        "{r}"
    );
    q.execute("blockdev-open-tray", json!({"id": "cd0"}));
    assert_eq!(
        q.execute("x-blockdev-remove-medium", json!({"id": "cd0"}))["return"],
        json!({})
    );
    let r = q.execute(
        "x-blockdev-insert-medium",
        json!({"device": "nope", "node-name": "m1"}),
    );
    assert_eq!(Qmp::error_of(&r).1, "Device 'nope' not found", "{r}");
    assert_eq!(
        q.execute(
            "x-blockdev-insert-medium",
            json!({"id": "cd0", "node-name": "m1"})
        )["return"],
        json!({})
    );
    let blocks = q.ok("query-block");
    let cd0 = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"] == "cd0")
        .unwrap();
    assert_eq!(cd0["inserted"]["node-name"], "m1");
    assert_eq!(cd0["tray_open"], true);
}

fn cd0(q: &mut Qmp) -> Value {
    q.ok("query-block")
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"] == "cd0")
        .cloned()
        .unwrap()
}

fn kill_block_proc(b: &Bulkhead, q: &mut Qmp) {
    let pid = block_proc_pid(broker_pid(b)).expect("block-proc runs");
    sigkill(pid);
    q.event_where(RESTARTED, |d| d["worker"] == "block");
}

#[test]
fn a_changed_medium_and_open_tray_survive_a_block_proc_sigkill() {
    let dir = TempDir::new();
    let imgs = images(&dir.0);
    let mut args: Vec<&str> = vec!["-S"];
    args.extend(imgs.args.iter().map(String::as_str));
    let b = Bulkhead::start(&args);
    let mut q = b.client();
    q.execute(
        "blockdev-change-medium",
        json!({"id": "cd0", "filename": imgs.c, "format": "raw"}),
    );
    q.execute("blockdev-open-tray", json!({"id": "cd0"}));
    let before = cd0(&mut q);
    assert_eq!(before["tray_open"], true);
    assert_eq!(before["inserted"]["file"], imgs.c.as_str());
    let nodes_before = q.ok("query-named-block-nodes");
    kill_block_proc(&b, &mut q);
    assert_eq!(cd0(&mut q), before);
    assert_eq!(q.ok("query-named-block-nodes"), nodes_before);
    // The drive's own node is still the drive's: ejecting closes it.
    q.execute("eject", json!({"id": "cd0"}));
    let nodes = q.ok("query-named-block-nodes");
    assert!(
        !nodes.to_string().contains(imgs.c.as_str()),
        "the medium node stays after eject: {nodes}"
    );
}
