//! `cache.direct=on`: files opened with `O_DIRECT`, aligned requests going
//! straight to guest memory and unaligned ones through aligned bounce
//! buffers, for the file driver alone and for raw and qcow2 exports.
//! Files live in cargo's per-test temp directory, on the disk (a tmpfs
//! `/tmp` would refuse `O_DIRECT`).

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use block_proc::block::file::FileDriver;
use block_proc::block::iobuf::{self, AlignedBuf};
use block_proc::block::Driver;
use common::*;
use vhost_user_harness::blk::S_OK;

fn disk_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bp-direct-{}-{name}", std::process::id()))
}

#[test]
fn direct_file_driver_handles_unaligned_requests_through_bounce_buffers() {
    let path = disk_path("driver.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let d = FileDriver::new(f, "x".into(), true).unwrap();
    let mut data = vec![0x5au8; 700];
    d.write(&[iobuf::slice_of(&mut data)], 4000).unwrap();
    let mut aligned = AlignedBuf::new(8192).unwrap();
    d.read(&[iobuf::slice_of(aligned.as_mut_slice())], 0)
        .unwrap();
    let a = aligned.as_slice();
    assert!(a[..4000].iter().all(|&b| b == 0));
    assert!(a[4000..4700].iter().all(|&b| b == 0x5a));
    assert!(a[4700..].iter().all(|&b| b == 0));
    let mut back = vec![0u8; 700];
    d.read(&[iobuf::slice_of(&mut back)], 4000).unwrap();
    assert_eq!(back, vec![0x5au8; 700]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn direct_io_export_serves_aligned_and_unaligned_requests() {
    let img = disk_path("export.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let sock = tmp("direct.sock");
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let bp = start(&sock, &json, &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.write(0, 8, &pattern(8192, 3)).unwrap(), S_OK);
    assert_eq!(dev.write(0, 1, &pattern(512, 4)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 8, 8192).unwrap().1, pattern(8192, 3));
    assert_eq!(dev.read(0, 1, 512).unwrap().1, pattern(512, 4));
    drop(dev);
    drop(bp);
    std::fs::remove_file(img).unwrap();
}

#[test]
fn direct_io_qcow2_export_round_trips_data() {
    let img = disk_path("export.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let sock = tmp("directq.sock");
    let json = format!(
        r#"{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let mut bp = start(&sock, &json, &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.write(0, 8, &pattern(8192, 5)).unwrap(), S_OK);
    assert_eq!(dev.write(0, 3, &pattern(512, 6)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 8, 8192).unwrap().1, pattern(8192, 5));
    assert_eq!(dev.read(0, 3, 512).unwrap().1, pattern(512, 6));
    drop(dev);
    bp.kill();
    assert!(qemu_img_check(&img));
    std::fs::remove_file(img).unwrap();
}

fn direct_file(name: &str, len: u64, fill: u8) -> (PathBuf, std::fs::File) {
    let path = disk_path(name);
    std::fs::write(&path, vec![fill; usize::try_from(len).unwrap()]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    (path, f)
}

#[test]
fn unaligned_write_racing_write_zeroes_of_neighbouring_sectors_keeps_both() {
    // Sector 0 is written (read-modify-write of block 0 through a bounce
    // buffer) while sectors 1..8 of the same block are zeroed: whatever
    // the order, sector 0 must hold the write and sectors 1..8 zeroes.
    let (path, f) = direct_file("rmw-race.img", 1 << 20, 0xaa);
    let d = std::sync::Arc::new(FileDriver::new(f, "x".into(), true).unwrap());
    let stale = std::sync::atomic::AtomicUsize::new(0);
    for round in 0..2000u64 {
        let block = round % 256 * 4096;
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut data = vec![0x11u8; 512];
                barrier.wait();
                d.write(&[iobuf::slice_of(&mut data)], block).unwrap();
            });
            s.spawn(|| {
                barrier.wait();
                d.write_zeroes(block + 512, 3584, false).unwrap();
            });
        });
        let mut back = AlignedBuf::new(4096).unwrap();
        d.read(&[iobuf::slice_of(back.as_mut_slice())], block)
            .unwrap();
        let b = back.as_slice();
        assert!(
            b[..512].iter().all(|&x| x == 0x11),
            "round {round}: write lost"
        );
        if b[512..].iter().any(|&x| x != 0) {
            stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Refill the block for the next round.
        let mut fill = AlignedBuf::new(4096).unwrap();
        fill.as_mut_slice().fill(0xaa);
        d.write(&[iobuf::slice_of(fill.as_mut_slice())], block)
            .unwrap();
    }
    let stale = stale.into_inner();
    assert_eq!(stale, 0, "{stale} rounds put stale bytes back over zeroes");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bounce_write_of_the_partial_last_block_does_not_grow_the_file() {
    let len = 2 * 4096 + 1000;
    let (path, f) = direct_file("tail.img", len, 0x77);
    let d = FileDriver::new(f, "x".into(), true).unwrap();
    // Sector 16 is the first sector of the partial last block.
    let mut data = vec![0x42u8; 512];
    d.write(&[iobuf::slice_of(&mut data)], 8192).unwrap();
    // An unaligned write reaching the very end of the file.
    let mut tail = vec![0x43u8; 472];
    d.write(&[iobuf::slice_of(&mut tail)], len - 472).unwrap();
    d.write_zeroes(8192 + 512, 8, false).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    let back = std::fs::read(&path).unwrap();
    assert!(back[..8192].iter().all(|&b| b == 0x77));
    assert!(back[8192..8704].iter().all(|&b| b == 0x42));
    assert!(back[8704..8712].iter().all(|&b| b == 0));
    assert!(back[8712..(len - 472) as usize].iter().all(|&b| b == 0x77));
    assert!(back[(len - 472) as usize..].iter().all(|&b| b == 0x43));
    // Still O_DIRECT afterwards: an aligned read from guest-like memory works.
    let mut a = AlignedBuf::new(8192).unwrap();
    d.read(&[iobuf::slice_of(a.as_mut_slice())], 0).unwrap();
    assert!(a.as_slice().iter().all(|&b| b == 0x77));
    std::fs::remove_file(path).unwrap();
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Start block-proc exporting `json` (over a 64 MiB `O_DIRECT` file),
/// optionally fill the disk with aligned writes first, then put maximal
/// unaligned reads on every queue at once and check block-proc's peak RSS
/// grew by no more than the bounce budget (plus what it must touch).
fn assert_bounce_memory_within_budget(name: &str, json: &str, prefill: bool) {
    use block_proc::block::bounce::BOUNCE_BUDGET;
    use vhost_user_harness::blk::req;
    use vhost_user_harness::ring::{RawDesc, F_NEXT, F_WRITE};
    use vhost_user_harness::{BlkDevice, BlkOptions};
    use vm_memory::{Bytes, GuestAddress};

    const QUEUES: u16 = 2;
    const DEPTH: u16 = 6;
    const SEGS: u16 = 32;
    let sock = tmp(&format!("budget-{name}.sock"));
    let bp = start(&sock, json, &["--num-queues", &QUEUES.to_string()]);
    let mut dev = BlkDevice::connect(
        &sock,
        BlkOptions {
            num_queues: QUEUES,
            queue_size: 256,
            slots: DEPTH,
            ..Default::default()
        },
    )
    .unwrap();
    if prefill {
        for mib in 0..48u64 {
            assert_eq!(
                dev.write(0, mib * 2048, &pattern(1 << 20, mib)).unwrap(),
                S_OK
            );
        }
    }
    for q in 0..usize::from(QUEUES) {
        assert_eq!(dev.read(q, 1, 512).unwrap().0, S_OK);
    }
    let pid = bp.pid().unwrap();
    let before = status_kib(pid, "VmHWM:");
    // Every queue gets DEPTH reads of almost 32 MiB (32 segments of
    // almost 1 MiB, all on the slot's data buffer, at an address aligned
    // to 256 bytes only) at an odd sector: each needs bouncing.
    for q in 0..usize::from(QUEUES) {
        for k in 0..DEPTH {
            let base = dev.slot_addr(q, k);
            let data = dev.slot_data_addr(q, k);
            let m = &dev.mem().mem;
            m.write_obj(req::IN, GuestAddress(base)).unwrap();
            m.write_obj(1u64 + 2 * u64::from(k), GuestAddress(base + 8))
                .unwrap();
            m.write_obj(0xffu8, GuestAddress(base + 32)).unwrap();
            let first = k * (SEGS + 2);
            let mut chain = vec![(
                first,
                RawDesc {
                    addr: base,
                    len: 16,
                    flags: F_NEXT,
                    next: first + 1,
                },
            )];
            for s in 0..SEGS {
                chain.push((
                    first + 1 + s,
                    RawDesc {
                        addr: data + 256,
                        len: (1 << 20) - 512,
                        flags: F_WRITE | F_NEXT,
                        next: first + 2 + s,
                    },
                ));
            }
            chain.push((
                first + 1 + SEGS,
                RawDesc {
                    addr: base + 32,
                    len: 1,
                    flags: F_WRITE,
                    next: 0,
                },
            ));
            dev.submit_raw(q, &chain, first).unwrap();
        }
    }
    for q in 0..usize::from(QUEUES) {
        dev.kick_now(q).unwrap();
    }
    for q in 0..usize::from(QUEUES) {
        while dev.pending(q) > 0 {
            dev.wait(q).unwrap();
        }
        for k in 0..DEPTH {
            let st: u8 = dev
                .mem()
                .mem
                .read_obj(GuestAddress(dev.slot_addr(q, k) + 32))
                .unwrap();
            assert_eq!(st, S_OK);
        }
    }
    let grown = status_kib(pid, "VmHWM:").saturating_sub(before) << 10;
    eprintln!(
        "block-proc peak RSS grew by {} MiB ({} bounce MiB of requests in flight, budget {} MiB)",
        grown >> 20,
        u64::from(QUEUES) * u64::from(DEPTH) * u64::from(SEGS),
        BOUNCE_BUDGET >> 20
    );
    // The budget, plus the guest buffers block-proc touched (shared
    // memory counts in its RSS), plus thread stacks and slack.
    let allowed =
        BOUNCE_BUDGET as u64 + u64::from(QUEUES) * u64::from(DEPTH) * (1 << 20) + (16 << 20);
    assert!(
        grown <= allowed,
        "peak RSS grew by {} MiB, more than {} MiB",
        grown >> 20,
        allowed >> 20
    );
}

#[test]
fn maximal_unaligned_requests_on_all_queues_stay_within_the_bounce_budget() {
    let img = disk_path("budget.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    assert_bounce_memory_within_budget("raw", &json, false);
    std::fs::remove_file(img).unwrap();
}

#[test]
fn maximal_unaligned_qcow2_requests_on_all_queues_stay_within_the_bounce_budget() {
    let img = disk_path("budget.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let json = format!(
        r#"{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    assert_bounce_memory_within_budget("qcow2", &json, true);
    std::fs::remove_file(img).unwrap();
}

/// Write 3 MiB from a guest buffer aligned to 256 bytes only at an odd
/// sector, read it back the same way into another buffer, compare.
fn unaligned_multi_mib_round_trip(name: &str, json: &str) {
    use vhost_user_harness::blk::req;
    use vhost_user_harness::ring::{RawDesc, F_NEXT, F_WRITE};
    use vhost_user_harness::{BlkDevice, BlkOptions};
    use vm_memory::{Bytes, GuestAddress};

    let sock = tmp(&format!("rt-{name}.sock"));
    let _bp = start(&sock, json, &[]);
    let mut dev = BlkDevice::connect(
        &sock,
        BlkOptions {
            slots: 2,
            slot_size: 4 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let data = pattern(3 << 20, 9);
    let run = |dev: &mut BlkDevice, slot: u16, ty: u32, first: u16| {
        let base = dev.slot_addr(0, slot);
        let buf = dev.slot_data_addr(0, slot) + 256;
        let m = &dev.mem().mem;
        m.write_obj(ty, GuestAddress(base)).unwrap();
        m.write_obj(3u64, GuestAddress(base + 8)).unwrap();
        m.write_obj(0xffu8, GuestAddress(base + 32)).unwrap();
        let flags = if ty == req::IN {
            F_WRITE | F_NEXT
        } else {
            F_NEXT
        };
        let mut chain = vec![(
            first,
            RawDesc {
                addr: base,
                len: 16,
                flags: F_NEXT,
                next: first + 1,
            },
        )];
        for i in 0..3u16 {
            chain.push((
                first + 1 + i,
                RawDesc {
                    addr: buf + u64::from(i) * (1 << 20),
                    len: 1 << 20,
                    flags,
                    next: first + 2 + i,
                },
            ));
        }
        chain.push((
            first + 4,
            RawDesc {
                addr: base + 32,
                len: 1,
                flags: F_WRITE,
                next: 0,
            },
        ));
        dev.submit_raw(0, &chain, first).unwrap();
        dev.kick_now(0).unwrap();
        dev.wait(0).unwrap();
        let st: u8 = dev.mem().mem.read_obj(GuestAddress(base + 32)).unwrap();
        assert_eq!(st, S_OK);
        buf
    };
    let src = dev.slot_data_addr(0, 0) + 256;
    dev.mem().mem.write_slice(&data, GuestAddress(src)).unwrap();
    run(&mut dev, 0, req::OUT, 0);
    let dst = run(&mut dev, 1, req::IN, 10);
    let mut back = vec![0u8; 3 << 20];
    dev.mem()
        .mem
        .read_slice(&mut back, GuestAddress(dst))
        .unwrap();
    assert!(back == data, "{name}: data read back differs");
    assert_eq!(dev.read(0, 3, 3 << 20).unwrap().1, data);
}

#[test]
fn unaligned_multi_mib_requests_round_trip_on_raw_and_qcow2() {
    let raw = disk_path("rt.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    unaligned_multi_mib_round_trip(
        "raw",
        &format!(
            r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
            raw.display()
        ),
    );
    let q = disk_path("rt.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    unaligned_multi_mib_round_trip(
        "qcow2",
        &format!(
            r#"{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
            q.display()
        ),
    );
    assert!(qemu_img_check(&q));
    std::fs::remove_file(raw).unwrap();
    std::fs::remove_file(q).unwrap();
}

#[test]
fn concurrent_unaligned_multi_mib_requests_are_correct_and_share_the_budget() {
    use block_proc::block::bounce::BOUNCE_BUDGET;
    const THREADS: u64 = 20;
    const LEN: usize = 2 << 20;
    let path = disk_path("concurrent.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(THREADS * (4 << 20))
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let d = FileDriver::new(f, "x".into(), true).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let d = &d;
            s.spawn(move || {
                let off = t * (4 << 20) + 512 * (t + 1);
                let mut data = pattern(LEN, t);
                d.write(&[iobuf::slice_of(&mut data)], off).unwrap();
                let mut back = vec![0u8; LEN];
                d.read(&[iobuf::slice_of(&mut back)], off).unwrap();
                assert!(back == pattern(LEN, t), "thread {t}: data differs");
            });
        }
    });
    let peak = d.bounce_pool().peak_bytes();
    assert!(peak <= BOUNCE_BUDGET, "{peak} bounce bytes lent at once");
    std::fs::remove_file(path).unwrap();
}
