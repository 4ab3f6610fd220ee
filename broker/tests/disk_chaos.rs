//! Chaos: while the `blk-loop` guest writes, flushes, reads back and
//! verifies its disk in a loop, block-proc is SIGKILLed 20 times at random
//! moments. The broker restarts it and replays nodes and exports, and the
//! frontend reconnects with inflight resubmission: the guest never sees an
//! error and keeps making progress, QMP keeps answering, and the host file
//! holds every acknowledged write. Meanwhile two clients poll `query-block`
//! and `query-blockstats` as management tools do: no reply is an error and
//! no counter goes backwards. Needs /dev/kvm.

mod common;
mod disk_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use disk_common::*;
use serde_json::json;

const KILLS: usize = 20;

/// A small xorshift generator (the seed is printed for reruns).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs the chaos scenario on an image of `format`.
fn chaos(format: &str) {
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
    let mut rng = Rng(seed);
    let dir = common::TempDir::new();
    let img = match format {
        "raw" => raw_image(&dir.0),
        _ => qcow2_image(&dir.0),
    };
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&[], "blk-loop", format, &img, &serial);
    let broker = b.child.as_ref().unwrap().id();
    let mut q = b.client();
    serial.wait_passes(1);
    let pollers = QueryPollers::start(&b.sock, 2);

    let mut downtimes = Vec::new();
    for kill in 0..KILLS {
        std::thread::sleep(Duration::from_millis(20 + rng.below(281)));
        let pid = block_proc_pid(broker).expect("block-proc runs");
        sigkill(pid);
        // QMP answers while the block worker is down.
        assert_eq!(q.ok("query-status")["status"], "running", "kill {kill}");
        let lost = q.event("__org.bulkhead_DEVICE_BACKEND_LOST");
        assert_eq!(lost["data"]["id"], "vda");
        let restored = q.event("__org.bulkhead_DEVICE_BACKEND_RESTORED");
        assert_eq!(restored["data"]["id"], "vda", "kill {kill}");
        downtimes.push(restored["data"]["downtime-ms"].as_u64().unwrap_or(0));
        assert_eq!(q.ok("query-status")["status"], "running", "kill {kill}");
        assert!(
            !serial.has("VERDICT: FAIL"),
            "kill {kill}:\n{}",
            serial.text()
        );
    }

    // Information only (restarts back off while the worker keeps dying).
    eprintln!("{format}: device downtimes (ms): {downtimes:?}");
    for (i, r) in pollers.stop().into_iter().enumerate() {
        eprintln!("poller {i}: {} replies, slowest {:?}", r.replies, r.slowest);
        assert!(r.replies > 0);
        assert!(r.errors.is_empty(), "poller {i} got errors: {:?}", r.errors);
        assert!(r.backwards.is_empty(), "poller {i}: {:?}", r.backwards);
    }
    // Progress after the last kill: two whole passes on the last worker.
    assert_progress_and_image(&mut q, &serial, &img, format);
    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
    if format == "qcow2" {
        assert_qemu_img_check(&img, "qcow2");
    }
}

#[test]
fn blk_loop_guest_survives_twenty_block_worker_kills_without_losing_a_write() {
    chaos("raw");
}

#[test]
fn blk_loop_guest_on_qcow2_survives_twenty_block_worker_kills_and_the_image_stays_consistent() {
    chaos("qcow2");
}
