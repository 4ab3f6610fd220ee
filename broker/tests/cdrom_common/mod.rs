//! The CD-ROM scenario shared by the reference run on QEMU
//! (`cdrom_qemu.rs`) and the run through the broker (`cdrom_guest.rs`):
//! the disc images, the machine's options, and the QMP script played
//! against the `cdrom` guest, which yields a transcript (each command's
//! reply without `id`, each expected event without its timestamp, any
//! other event in the order it came). Two machines behave alike when
//! their transcripts are equal.
//!
//! The script: disc 1 is flagged KEEP_LOCKED, so the guest locks the tray
//! and ignores eject requests (and REREAD: it reads the disc again and
//! again until the first media event, which a test may use to disturb the
//! backend while the guest reads): `eject` fails with QEMU's "locked" error
//! and `eject force=true` takes the disc out. `blockdev-change-medium`
//! puts disc 2 in; the guest reads it and locks again, this time honouring
//! eject requests: the next `blockdev-change-medium` fails but asks the
//! guest, which unlocks and ejects (START STOP UNIT), and the retry puts
//! disc 3 (flagged LAST) in; the guest reads it and passes.

#![allow(dead_code)]

pub mod qemu;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use crate::common::Qmp;
use crate::disk_common::{SerialLog, GUEST_TIMEOUT};

/// The discs' content, the very source the `cdrom` guest checks.
#[path = "../../../test-guests/cdrom/src/disc.rs"]
pub mod disc;

/// (tag, flags, blocks) of the three discs.
pub const DISCS: [(u64, u64, u64); 3] = [
    (11, disc::KEEP_LOCKED | disc::REREAD, 40),
    (22, 0, 24),
    (33, disc::LAST, 70),
];

/// QEMU's answer to opening a locked tray without `force`.
pub const LOCKED: &str =
    "Device 'cd0' is locked and force was not specified, wait for tray to open and try again";

/// Writes disc `i` of [`DISCS`] to `dir/discN.iso`.
pub fn write_disc(dir: &Path, i: usize) -> PathBuf {
    let (tag, flags, blocks) = DISCS[i];
    let p = dir.join(format!("disc{}.iso", i + 1));
    let mut f = File::create(&p).unwrap();
    let mut b = [0u64; disc::WORDS];
    for block in 0..blocks {
        disc::fill(&mut b, block, tag, flags);
        let bytes: Vec<u8> = b.iter().flat_map(|w| w.to_le_bytes()).collect();
        f.write_all(&bytes).unwrap();
    }
    p
}

/// The three discs in `dir`.
pub fn write_discs(dir: &Path) -> Vec<PathBuf> {
    (0..DISCS.len()).map(|i| write_disc(dir, i)).collect()
}

/// The drive and controller options, the same for QEMU and the broker:
/// node `d1` on `disc1`, read-only, in `scsi-cd` `cd0` on `scsi0`.
pub fn device_args(disc1: &Path) -> Vec<String> {
    let blockdev = json!({"driver": "raw", "node-name": "d1", "read-only": true,
        "file": {"driver": "file", "filename": disc1, "read-only": true}});
    vec![
        "-blockdev".into(),
        blockdev.to_string(),
        "-device".into(),
        "virtio-scsi-device,id=scsi0".into(),
        "-device".into(),
        "scsi-cd,drive=d1,id=cd0".into(),
    ]
}

/// Waits until `needle` appears `n` times on the serial log.
pub fn wait_count(log: &SerialLog, needle: &str, n: usize) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let t = log.text();
        if t.matches(needle).count() >= n {
            return;
        }
        assert!(!t.contains("VERDICT: FAIL"), "guest failed:\n{t}");
        assert!(
            Instant::now() < deadline,
            "fewer than {n} {needle:?} on serial:\n{t}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What `query-block` says about the drive's medium and tray (the parts
/// both machines must agree on; file names without their directory).
pub fn tray_state(reply: &Value) -> Value {
    let Some(list) = reply["return"].as_array() else {
        return reply.clone();
    };
    let devices: Vec<Value> = list
        .iter()
        .map(|d| {
            let inserted = d.get("inserted").map(|i| {
                let file = i["file"].as_str().unwrap_or("");
                let base = Path::new(file)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned());
                json!({"ro": i["ro"], "drv": i["drv"], "file": base})
            });
            json!({"device": d["device"], "qdev": d["qdev"], "removable": d["removable"],
                "locked": d["locked"], "tray_open": d["tray_open"], "inserted": inserted})
        })
        .collect();
    json!(devices)
}

/// The transcript being built.
struct Script<'a> {
    q: &'a mut Qmp,
    log: &'a SerialLog,
    out: Vec<Value>,
}

impl Script<'_> {
    /// Events that came without being waited for, in order.
    fn stray_events(&mut self) {
        while let Some(mut e) = self.q.events.pop_front() {
            e.as_object_mut().unwrap().remove("timestamp");
            self.out.push(json!({"stray-event": e}));
        }
    }

    fn cmd(&mut self, c: Value) -> Value {
        self.stray_events();
        let mut r = self.q.request(c.clone());
        r.as_object_mut().unwrap().remove("id");
        if c["execute"] == "query-block" {
            r = json!({"tray-state": tray_state(&r)});
        }
        // The discs live in each run's own directory.
        let mut shown = c;
        if let Some(f) = shown["arguments"]["filename"].as_str() {
            let base = Path::new(f)
                .file_name()
                .map(|b| b.to_string_lossy().into_owned());
            shown["arguments"]["filename"] = json!(base);
        }
        self.out.push(json!({"cmd": shown, "reply": r}));
        r
    }

    fn tray_moved(&mut self, open: bool) {
        let mut e = self
            .q
            .event_where("DEVICE_TRAY_MOVED", |d| d["tray-open"] == open);
        e.as_object_mut().unwrap().remove("timestamp");
        self.out.push(e);
    }
}

fn change_medium(disc: &Path) -> Value {
    json!({"execute": "blockdev-change-medium",
        "arguments": {"id": "cd0", "filename": disc, "format": "raw"}})
}

/// Plays the scenario (module doc) on a machine running the `cdrom` guest
/// on `discs[0]`; returns the transcript once the guest has passed.
pub fn play(q: &mut Qmp, log: &SerialLog, discs: &[PathBuf]) -> Vec<Value> {
    play_with(q, log, discs, &mut |_, _| {})
}

/// [`play`], calling `locked` once the guest has read disc 1 and locked
/// the tray, while it reads disc 1 again and again (e.g. to SIGKILL a
/// worker there; what it waits for on `q` stays out of the transcript).
pub fn play_with(
    q: &mut Qmp,
    log: &SerialLog,
    discs: &[PathBuf],
    locked: &mut dyn FnMut(&mut Qmp, &SerialLog),
) -> Vec<Value> {
    let query = json!({"execute": "query-block"});
    let mut s = Script {
        q,
        log,
        out: Vec::new(),
    };
    s.log.wait_for("cdrom: disc 1: tag 11, 40 blocks ok");
    wait_count(s.log, "cdrom: tray locked", 1);
    locked(s.q, s.log);
    s.cmd(query.clone());
    s.cmd(json!({"execute": "eject", "arguments": {"id": "cd0"}}));
    s.log.wait_for("cdrom: eject request ignored");
    s.cmd(json!({"execute": "eject", "arguments": {"id": "cd0", "force": true}}));
    s.tray_moved(true);
    s.log.wait_for("cdrom: tray open, medium absent");
    s.cmd(query.clone());
    s.cmd(change_medium(&discs[1]));
    s.tray_moved(false);
    s.log.wait_for("cdrom: disc 2: tag 22, 24 blocks ok");
    wait_count(s.log, "cdrom: tray locked", 2);
    s.cmd(query.clone());
    s.cmd(change_medium(&discs[2]));
    s.log.wait_for("cdrom: ejected");
    s.tray_moved(true);
    s.cmd(query);
    s.cmd(change_medium(&discs[2]));
    s.tray_moved(false);
    s.log.wait_for("cdrom: disc 3: tag 33, 70 blocks ok");
    s.log.wait_for("VERDICT: PASS cdrom");
    s.out
}
