//! Chaos for block jobs: while the `blk-loop` guest verifies its disk in
//! a loop, block-proc is SIGKILLed at least ten times during a
//! `block-stream` and during a `blockdev-mirror` (before and after
//! READY). The broker restarts it, replays nodes, the jobs from their last
//! progress checkpoint and the exports; every job completes with data
//! `qemu-img compare` finds identical, and the guest never sees an error.
//! Needs /dev/kvm, qemu-img and qemu-io.

mod common;
mod disk_common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use disk_common::*;
use serde_json::{json, Value};

const KILLS: usize = 10;
const DISK: u64 = 32 << 20;

struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("BULKHEAD_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("chaos seed: {seed} (set BULKHEAD_CHAOS_SEED to rerun)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn job(q: &mut common::Qmp, id: &str) -> Option<Value> {
    let r = q.execute("query-block-jobs", Value::Null);
    r["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["device"] == id)
        .cloned()
}

/// Kills block-proc once and waits until the device is back.
fn kill_once(q: &mut common::Qmp, broker: u32, serial: &SerialLog, n: usize) {
    let pid = block_proc_pid(broker).expect("block-proc runs");
    sigkill(pid);
    let restored = q.event("__org.bulkhead_DEVICE_BACKEND_RESTORED");
    assert_eq!(restored["data"]["id"], "vda", "kill {n}");
    assert!(!serial.has("VERDICT: FAIL"), "kill {n}:\n{}", serial.text());
}

#[test]
fn stream_survives_ten_block_worker_kills_and_flattens_the_chain_exactly() {
    let mut rng = Rng::new();
    let dir = common::TempDir::new();
    let (base, mid, top) = qcow2_chain(&dir.0, DISK);
    qemu_io_write(&base, 0x61, "0 30M");
    qemu_io_write(&mid, 0x62, "3M 9M");
    qemu_io_write(&mid, 0x63, "17M 5M");
    let flat = dir.0.join("flat.raw");
    flatten(&top, &flat);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&[], "blk-loop", "qcow2", &top, &serial);
    let broker = b.child.as_ref().unwrap().id();
    let mut q = b.client();
    serial.wait_passes(1);
    let r = q.execute(
        "block-stream",
        json!({"device": "d0", "job-id": "s", "speed": 2 << 20}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let mut offsets = Vec::new();
    for n in 0..KILLS {
        std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
        let j = job(&mut q, "s").expect("the stream ended before the kills did");
        offsets.push(j["offset"].as_u64().unwrap());
        kill_once(&mut q, broker, &serial, n);
    }
    eprintln!("stream offsets at the kills: {offsets:?}");
    let done = q.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_progress_and_image(&mut q, &serial, &top, "qcow2");
    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", p(&top)])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_qemu_img_check_after_kills(&top, "qcow2");
    // The original chain plus the guest's sectors.
    use std::os::unix::fs::FileExt;
    let view = raw_view(&top, "qcow2");
    let mut g = vec![0u8; (GUEST_SECTORS * 512) as usize];
    std::fs::File::open(&view)
        .unwrap()
        .read_exact_at(&mut g, 0)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&flat)
        .unwrap()
        .write_all_at(&g, 0)
        .unwrap();
    assert_qemu_img_compare(&flat, &top);
}

#[test]
fn mirror_survives_kills_before_and_after_ready_and_pivots_onto_an_identical_copy() {
    let mut rng = Rng::new();
    let dir = common::TempDir::new();
    let img = dir.0.join("disk.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&img), &DISK.to_string()],
    );
    qemu_io_write(&img, 0x71, "1M 29M");
    let target = dir.0.join("target.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&target), &DISK.to_string()],
    );
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&[], "blk-loop", "qcow2", &img, &serial);
    let broker = b.child.as_ref().unwrap().id();
    let mut q = b.client();
    serial.wait_passes(1);
    let r = q.execute(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "t0",
        "file": {"driver": "file", "filename": p(&target)}}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let r = q.execute(
        "blockdev-mirror",
        json!({"device": "d0", "target": "t0",
        "sync": "full", "job-id": "m", "speed": 2 << 20}),
    );
    assert!(r.get("return").is_some(), "{r}");
    // Before READY.
    for n in 0..KILLS / 2 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
        let j = job(&mut q, "m").unwrap();
        assert_eq!(j["ready"], false, "ready before the kills were done: {j}");
        kill_once(&mut q, broker, &serial, n);
    }
    let r = q.execute("block-job-set-speed", json!({"device": "m", "speed": 0}));
    assert!(r.get("return").is_some(), "{r}");
    q.event("BLOCK_JOB_READY");
    // After READY: the job stays ready through every restart.
    for n in KILLS / 2..KILLS {
        std::thread::sleep(Duration::from_millis(200 + rng.below(600)));
        kill_once(&mut q, broker, &serial, n);
        let j = job(&mut q, "m").unwrap();
        assert_eq!(j["status"], "ready", "{j}");
    }
    q.ok("stop");
    std::thread::sleep(Duration::from_millis(300));
    let r = q.execute("block-job-complete", json!({"device": "m"}));
    assert!(r.get("return").is_some(), "{r}");
    let done = q.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_qemu_img_compare(&img, &target);
    let blk = q.execute("query-block", Value::Null);
    assert_eq!(blk["return"][0]["inserted"]["node-name"], "t0", "{blk}");
    q.ok("cont");
    // One more kill: the restarted worker exports the target.
    kill_once(&mut q, broker, &serial, KILLS);
    assert_progress_and_image(&mut q, &serial, &target, "qcow2");
    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    assert_qemu_img_check_after_kills(&target, "qcow2");
    assert_qemu_img_check_after_kills(&img, "qcow2");
}
