//! `aio=io_uring` end to end: block-proc standalone with a queue's ring,
//! the harness as the frontend. Deep queues go through the ring (its
//! completion counter in /proc/PID/fdinfo moves), requests the ring cannot
//! run as they are (unaligned under O_DIRECT, write-zeroes) go to the pool
//! in the same kick, `aio=threads` has no ring at all, and a SIGKILL with
//! requests on the ring loses no write. Files live in cargo's per-test
//! temp directory, on the disk (a tmpfs refuses `O_DIRECT`).

mod common;

use std::path::PathBuf;

use common::*;
use vhost_user_harness::blk::S_OK;
use vhost_user_harness::process::Backend;
use vhost_user_harness::Request;

fn disk(name: &str, size: u64) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bp-uring-{}-{name}", std::process::id()));
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn json(img: &std::path::Path, aio: &str, direct: bool) -> String {
    let aio = if aio.is_empty() {
        String::new()
    } else {
        format!(r#""aio":"{aio}","#)
    };
    format!(
        r#"{{"driver":"raw","node-name":"disk0","discard":"unmap","file":{{"driver":"file","filename":"{}",{aio}"cache":{{"direct":{direct}}}}}}}"#,
        img.display()
    )
}

/// Completions the process's io_uring instances have posted (their
/// `CqTail` in fdinfo), or None when it has no ring.
fn ring_completions(bp: &Backend) -> Option<u64> {
    let pid = bp.pid().unwrap();
    let mut total = None;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:[io_uring]" {
            continue;
        }
        let name = e.file_name();
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
                .unwrap_or_default();
        let tail = info
            .lines()
            .find_map(|l| l.strip_prefix("CqTail:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *total.get_or_insert(0) += tail;
    }
    total
}

/// 30 writes of 64 KiB, an unaligned 512-byte write and a write-zeroes in
/// one kick (the harness has 32 slots); then 30 reads in one kick; the
/// data must come back.
fn deep_queue_round_trip(dev: &mut vhost_user_harness::BlkDevice) {
    for i in 0..30u64 {
        let data = pattern(64 << 10, i);
        dev.submit(
            0,
            Request::Write {
                sector: i * 128,
                data: &data,
            },
        )
        .unwrap();
    }
    dev.submit(
        0,
        Request::Write {
            sector: 32 * 128 + 1,
            data: &pattern(512, 99),
        },
    )
    .unwrap();
    dev.submit(
        0,
        Request::WriteZeroes {
            sector: 40 * 128,
            num: 8,
            unmap: false,
        },
    )
    .unwrap();
    dev.kick(0).unwrap();
    let mut done = Vec::new();
    while done.len() < 32 {
        done.extend(dev.wait(0).unwrap());
    }
    assert!(done.iter().all(|c| c.status == Some(S_OK)), "{done:?}");
    let mut slots = Vec::new();
    for i in 0..30u64 {
        let (_, slot) = dev
            .submit(
                0,
                Request::Read {
                    sector: i * 128,
                    len: 64 << 10,
                },
            )
            .unwrap();
        slots.push((i, slot));
    }
    dev.kick(0).unwrap();
    let mut done = Vec::new();
    while done.len() < 30 {
        done.extend(dev.wait(0).unwrap());
    }
    assert!(done.iter().all(|c| c.status == Some(S_OK)));
    for (i, slot) in slots {
        assert_eq!(
            dev.slot_data(0, slot, 64 << 10).unwrap(),
            pattern(64 << 10, i),
            "block {i}"
        );
    }
    assert_eq!(dev.read(0, 32 * 128 + 1, 512).unwrap().1, pattern(512, 99));
    assert_eq!(dev.flush(0).unwrap(), S_OK);
    assert_eq!(
        dev.run(
            0,
            Request::Discard {
                sector: 0,
                num: 128
            }
        )
        .unwrap()
        .status,
        Some(S_OK)
    );
    assert_eq!(dev.read(0, 0, 4096).unwrap().1, vec![0u8; 4096]);
}

#[test]
fn aio_io_uring_runs_a_deep_queue_on_the_ring_o_direct_and_buffered() {
    for direct in [true, false] {
        let img = disk(&format!("deep-{direct}.raw"), 16 << 20);
        let sock = tmp(&format!("deep-{direct}.sock"));
        let bp = start(&sock, &json(&img, "io_uring", direct), &[]);
        let mut dev = connect(&sock, 1);
        deep_queue_round_trip(&mut dev);
        // The queue's ring was made when the queue started: at least the
        // 30 aligned writes and 30 reads completed on it.
        let n = ring_completions(&bp).expect("the queue has a ring");
        assert!(n >= 60, "{n} ring completions");
        drop(dev);
        drop(bp);
        std::fs::remove_file(img).unwrap();
    }
}

#[test]
fn aio_threads_serves_the_same_queue_without_a_ring() {
    let img = disk("threads.raw", 16 << 20);
    let sock = tmp("threads.sock");
    let bp = start(&sock, &json(&img, "threads", true), &[]);
    let mut dev = connect(&sock, 1);
    deep_queue_round_trip(&mut dev);
    assert_eq!(ring_completions(&bp), None);
    drop(dev);
    drop(bp);
    std::fs::remove_file(img).unwrap();
}

#[test]
fn without_aio_a_direct_file_gets_io_uring_and_a_buffered_one_threads() {
    for (direct, ring) in [(true, true), (false, false)] {
        let img = disk(&format!("default-{direct}.raw"), 4 << 20);
        let sock = tmp(&format!("default-{direct}.sock"));
        let bp = start(&sock, &json(&img, "", direct), &[]);
        let mut dev = connect(&sock, 1);
        assert_eq!(dev.read(0, 0, 4096).unwrap().0, S_OK);
        assert_eq!(ring_completions(&bp).is_some(), ring, "direct={direct}");
        drop(dev);
        drop(bp);
        std::fs::remove_file(img).unwrap();
    }
}

#[test]
fn aio_native_is_refused_with_qemus_messages() {
    let img = disk("native.raw", 1 << 20);
    for (direct, msg) in [
        (
            false,
            "aio=native was specified, but it requires cache.direct=on, which was not specified.",
        ),
        (
            true,
            "aio=native was specified, but is not supported in this build.",
        ),
    ] {
        let sock = tmp("native.sock");
        let out = std::process::Command::new(bin())
            .args(["--standalone", "--socket"])
            .arg(&*sock)
            .arg("--blockdev")
            .arg(json(&img, "native", direct))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{err}");
    }
    std::fs::remove_file(img).unwrap();
}

#[test]
fn sigkill_with_requests_on_the_ring_loses_no_write() {
    let img = disk("crash.raw", 96 << 20);
    let sock = tmp("crash.sock");
    let json = json(&img, "io_uring", true);
    sigkill_mid_flight_round(&sock, &json);
    std::fs::remove_file(img).unwrap();
}
