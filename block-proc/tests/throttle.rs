//! I/O throttling measured through the vhost-user harness: block-proc
//! under the IPC channel as the broker drives it, a `null-co` node (no
//! host I/O cost, so only the limiter bounds the rate) exported and
//! driven with a deep queue. These are correctness tests of the limiter
//! (QEMU's leaky buckets): the measured rate must match the configured
//! one within ±5 % over 5 s (measured: +1 to +3 %, the bucket's tenth of
//! a second). The upper bound is what a limiter must guarantee and is
//! asserted tightly; the lower bound is looser (see
//! `assert_within_5_percent`). Also: a write threshold's one-shot event.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::worker::{spawn, Worker};
use ipc_proto::block::{
    BlockEvent, BlockReply, BlockRequest, BlockdevOptions, ThrottleBucket, ThrottleConfig,
};
use vhost_user_harness::blk::{Request, S_OK};
use vhost_user_harness::{BlkDevice, BlkOptions};

const BPS_TOTAL: usize = 0;
const OPS_TOTAL: usize = 3;
const OPS_WRITE: usize = 5;

impl Worker {
    fn ok(&mut self, body: BlockRequest) {
        assert_eq!(self.call(body, &[]), Ok(BlockReply::Done));
    }

    /// A null-co node `name` exported as `export`, with a harness on it.
    fn null_export(&mut self, name: &str, export: &str) -> BlkDevice {
        let options: BlockdevOptions = serde_json::from_value(
            serde_json::json!({"driver": "null-co", "node-name": name, "size": 1 << 30}),
        )
        .unwrap();
        self.ok(BlockRequest::AddNode {
            options,
            files: vec![],
        });
        self.ok(BlockRequest::AddExport {
            id: export.into(),
            node_name: name.into(),
            num_queues: 1,
            writable: true,
            serial: "t".into(),
            logical_block_size: 512,
        });
        let (ours, theirs) = UnixStream::pair().unwrap();
        let req = BlockRequest::AttachExportConnection { id: export.into() };
        assert_eq!(self.call(req, &[theirs.as_fd()]), Ok(BlockReply::Done));
        BlkDevice::from_stream(ours, BlkOptions::default()).unwrap()
    }

    fn throttle(&mut self, export: &str, group: &str, config: Option<ThrottleConfig>) {
        self.ok(BlockRequest::SetThrottle {
            id: export.into(),
            group: group.into(),
            config,
        });
    }
}

/// A configuration with bucket `i` at `avg` (bursts to `max` for `len` s).
fn limit(i: usize, avg: u64, max: u64, len: u64) -> ThrottleConfig {
    let mut c = ThrottleConfig::default();
    for b in &mut c.buckets {
        b.burst_length = 1;
    }
    c.buckets[i] = ThrottleBucket {
        avg,
        max,
        burst_length: len,
    };
    c
}

/// Keeps 16 requests of `len` bytes in flight for `secs`; returns the
/// completion times (from the start) of those done by then, after
/// waiting for the rest.
fn drive(dev: &mut BlkDevice, write: bool, len: u32, secs: f64) -> Vec<f64> {
    drive_with(dev, secs, |_| {
        if write {
            Request::WriteInPlace { sector: 0, len }
        } else {
            Request::Read { sector: 0, len }
        }
    })
}

/// As [`drive`], with the requests `make` builds (from a counter).
fn drive_with(dev: &mut BlkDevice, secs: f64, make: impl Fn(u64) -> Request<'static>) -> Vec<f64> {
    let mut i = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut done = Vec::new();
    loop {
        let now = Instant::now();
        while now < end && dev.pending(0) < 16 {
            dev.submit(0, make(i)).unwrap();
            i += 1;
        }
        dev.kick(0).unwrap();
        if dev.pending(0) == 0 {
            return done;
        }
        for c in dev.wait_timeout(0, Duration::from_secs(5)).unwrap() {
            assert_eq!(c.status, Some(S_OK));
            let t = start.elapsed();
            if t < end - start {
                done.push(t.as_secs_f64());
            }
        }
    }
}

/// The limiter's guarantee: never more than the limit (+5 %: the
/// bucket's tenth of a second and one request over it). The lower bound
/// is 85 %: measured rates are 100-103 % here, but a stall of the test's
/// own threads on a loaded 2-core machine loses budget the leaky bucket
/// does not bank beyond its tenth of a second (as in QEMU), so a tight
/// lower bound would test the machine, not the limiter.
fn assert_within_5_percent(what: &str, measured: f64, limit: f64) {
    eprintln!("{what}: measured {measured:.1}, limit {limit:.1}");
    assert!(
        measured <= limit * 1.05,
        "{what}: measured {measured:.1} is over the limit {limit:.1} (+5 %)"
    );
    assert!(
        measured >= limit * 0.85,
        "{what}: measured {measured:.1} is far below the limit {limit:.1}"
    );
}

#[test]
fn iops_limit_is_held_within_five_percent_over_five_seconds_and_lifted() {
    let mut w = spawn();
    let mut dev = w.null_export("n0", "e0");
    w.throttle("e0", "e0", Some(limit(OPS_TOTAL, 200, 0, 1)));
    let n = drive(&mut dev, false, 4096, 5.0).len() as f64;
    assert_within_5_percent("iops", n / 5.0, 200.0);
    // Off: the same load runs far above the old limit.
    w.throttle("e0", "e0", None);
    let n = drive(&mut dev, false, 4096, 1.0).len();
    assert!(n > 800, "only {n} requests in 1 s without throttling");
}

#[test]
fn write_bps_limit_is_held_within_five_percent_and_spares_reads() {
    let mut w = spawn();
    let mut dev = w.null_export("n0", "e0");
    let mut c = limit(BPS_TOTAL, 0, 0, 1);
    c.buckets[2].avg = 2 << 20; // bps_wr: 2 MiB/s
    w.throttle("e0", "g", Some(c));
    let n = drive(&mut dev, true, 65536, 5.0).len() as f64;
    assert_within_5_percent("write bytes/s", n * 65536.0 / 5.0, f64::from(2 << 20));
    let reads = drive(&mut dev, false, 65536, 1.0).len();
    assert!(
        reads > 100,
        "reads were throttled by a write limit: {reads}"
    );
}

#[test]
fn write_zeroes_count_as_writes_of_their_range() {
    let mut w = spawn();
    let mut dev = w.null_export("n0", "e0");
    let mut c = limit(BPS_TOTAL, 0, 0, 1);
    c.buckets[2].avg = 1 << 20; // bps_wr: 1 MiB/s
    w.throttle("e0", "e0", Some(c));
    let n = drive_with(&mut dev, 5.0, |i| Request::WriteZeroes {
        sector: (i % 64) * 128,
        num: 128,
        unmap: false,
    })
    .len() as f64;
    assert_within_5_percent(
        "write-zeroes bytes/s",
        n * 65536.0 / 5.0,
        f64::from(1 << 20),
    );
}

#[test]
fn a_burst_runs_at_max_for_max_length_then_falls_to_the_limit() {
    let mut w = spawn();
    let mut dev = w.null_export("n0", "e0");
    // iops 50, bursts at 400/s for 2 s.
    w.throttle("e0", "e0", Some(limit(OPS_TOTAL, 50, 400, 2)));
    let t = drive(&mut dev, false, 4096, 6.0);
    let between = |a: f64, b: f64| t.iter().filter(|&&x| x >= a && x < b).count() as f64;
    // The burst: max per second (QEMU's burst bucket adds a tenth of a
    // second at max on top).
    assert_within_5_percent(
        "burst ops in the first 2 s",
        between(0.0, 2.0),
        400.0 * 2.0 + 40.0,
    );
    // The main bucket (max × length) is full after about 2.2 s: from
    // then on, the sustained limit.
    assert_within_5_percent("ops/s from 3 s to 6 s", between(3.0, 6.0) / 3.0, 50.0);
}

#[test]
fn a_group_of_two_devices_shares_one_budget() {
    let mut w = spawn();
    let mut a = w.null_export("n0", "e0");
    let mut b = w.null_export("n1", "e1");
    let c = limit(OPS_WRITE, 300, 0, 1);
    w.throttle("e0", "shared", Some(c));
    w.throttle("e1", "shared", Some(c));
    let tb = std::thread::spawn(move || drive(&mut b, true, 4096, 5.0).len());
    let na = drive(&mut a, true, 4096, 5.0).len();
    let nb = tb.join().unwrap();
    eprintln!("group members: {na} + {nb} writes in 5 s");
    assert_within_5_percent("group writes/s", (na + nb) as f64 / 5.0, 300.0);
    assert!(na > 300 && nb > 300, "one member starved: {na} / {nb}");
}

#[test]
fn write_threshold_fires_once_with_the_amount_past_it() {
    let mut w = spawn();
    let mut dev = w.null_export("n0", "e0");
    w.ok(BlockRequest::SetWriteThreshold {
        node_name: "n0".into(),
        threshold: 1 << 20,
    });
    // Ends exactly at the threshold: not past it.
    assert_eq!(
        dev.write(0, (1 << 20) / 512 - 8, &[1u8; 4096]).unwrap(),
        S_OK
    );
    // Starts 512 bytes below, ends 3584 past.
    assert_eq!(
        dev.write(0, (1 << 20) / 512 - 1, &[1u8; 4096]).unwrap(),
        S_OK
    );
    assert_eq!(dev.write(0, 4096, &[1u8; 4096]).unwrap(), S_OK);
    // Events travel beside replies: ask until the event came (and a
    // little longer, to catch a second one).
    let deadline = Instant::now() + Duration::from_secs(5);
    let crossed = |w: &Worker| {
        w.events
            .iter()
            .filter(|e| matches!(e, BlockEvent::WriteThreshold { .. }))
            .cloned()
            .collect::<Vec<_>>()
    };
    while crossed(&w).is_empty() && Instant::now() < deadline {
        w.ok(BlockRequest::Ping);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    w.ok(BlockRequest::Ping);
    let events = crossed(&w);
    assert_eq!(
        events,
        vec![BlockEvent::WriteThreshold {
            node_name: "n0".into(),
            amount_exceeded: 3584,
            write_threshold: 1 << 20,
        }]
    );
    let err = w
        .call(
            BlockRequest::SetWriteThreshold {
                node_name: "nope".into(),
                threshold: 1,
            },
            &[],
        )
        .unwrap_err();
    assert_eq!(err.desc, "Failed to find node with node-name='nope'");
}
