//! block-proc as a vhost-user-blk backend, driven by the VM-less harness:
//! data round trips on raw and qcow2 images, multiqueue, flush, discard,
//! write zeroes, read-only exports, GET_ID and config space.

mod common;

use common::*;
use vhost_user_harness::blk::{F_RO, S_IOERR, S_OK, S_UNSUPP};
use vhost_user_harness::Request;

#[test]
fn raw_image_write_then_read_returns_the_same_bytes() {
    let img = raw_image("rw.raw", 16 << 20);
    let sock = tmp("rw.sock");
    let _bp = start(&sock, &raw_json(&img), &[]);
    let mut dev = connect(&sock, 1);
    for (i, (sector, len)) in [(0u64, 4096usize), (8, 512), (1000, 65536), (32760, 4096)]
        .iter()
        .enumerate()
    {
        let data = pattern(*len, i as u64);
        assert_eq!(dev.write(0, *sector, &data).unwrap(), S_OK);
        let (st, back) = dev.read(0, *sector, *len as u32).unwrap();
        assert_eq!(st, S_OK);
        assert_eq!(back, data);
    }
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(
        &on_disk[1000 * 512..1000 * 512 + 65536],
        &pattern(65536, 2)[..]
    );
}

#[test]
fn qcow2_image_round_trip_leaves_a_consistent_image() {
    let img = qcow2_image("rw.qcow2", "64M");
    let sock = tmp("q.sock");
    let mut bp = start(&sock, &qcow2_json(&img), &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.capacity().unwrap(), (64 << 20) / 512);
    for i in 0..16u64 {
        let data = pattern(1 << 16, i);
        assert_eq!(dev.write(0, i * 4096 + 3, &data).unwrap(), S_OK);
    }
    for i in 0..16u64 {
        let (st, back) = dev.read(0, i * 4096 + 3, 1 << 16).unwrap();
        assert_eq!(st, S_OK);
        assert_eq!(back, pattern(1 << 16, i));
    }
    let (st, unwritten) = dev.read(0, 100_000, 4096).unwrap();
    assert_eq!(st, S_OK);
    assert!(unwritten.iter().all(|&b| b == 0));
    assert_eq!(dev.flush(0).unwrap(), S_OK);
    drop(dev);
    bp.kill();
    assert!(qemu_img_check(&img));
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0 0 1536"])
        .arg(&img)
        .output();
    if let Ok(o) = out {
        // qemu-io may be absent; when present the unwritten head reads as zeroes.
        assert!(o.status.success());
    }
}

#[test]
fn multiqueue_requests_complete_on_every_queue() {
    let img = raw_image("mq.raw", 8 << 20);
    let sock = tmp("mq.sock");
    let _bp = start(&sock, &raw_json(&img), &["--num-queues", "4"]);
    let mut dev = connect(&sock, 4);
    for q in 0..4usize {
        for k in 0..8u64 {
            dev.submit(
                q,
                Request::Write {
                    sector: (q as u64 * 8 + k) * 8,
                    data: &pattern(4096, q as u64 * 8 + k),
                },
            )
            .unwrap();
        }
        dev.kick(q).unwrap();
    }
    for q in 0..4usize {
        let mut done = 0;
        while done < 8 {
            for c in dev.wait(q).unwrap() {
                assert_eq!(c.status, Some(S_OK));
                done += 1;
            }
        }
    }
    for q in 0..4usize {
        for k in 0..8u64 {
            let (st, back) = dev.read(3 - q, (q as u64 * 8 + k) * 8, 4096).unwrap();
            assert_eq!(st, S_OK);
            assert_eq!(back, pattern(4096, q as u64 * 8 + k));
        }
    }
}

#[test]
fn flush_discard_and_write_zeroes_succeed_and_zeroes_read_back() {
    let img = raw_image("dz.raw", 8 << 20);
    let sock = tmp("dz.sock");
    let _bp = start(&sock, &raw_json(&img), &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.write(0, 0, &pattern(1 << 20, 9)).unwrap(), S_OK);
    assert_eq!(dev.flush(0).unwrap(), S_OK);
    let c = dev
        .run(
            0,
            Request::WriteZeroes {
                sector: 8,
                num: 8,
                unmap: false,
            },
        )
        .unwrap();
    assert_eq!(c.status, Some(S_OK));
    let c = dev
        .run(
            0,
            Request::Discard {
                sector: 1024,
                num: 1024,
            },
        )
        .unwrap();
    assert_eq!(c.status, Some(S_OK));
    let (_, back) = dev.read(0, 0, 16 * 512).unwrap();
    assert_eq!(&back[..4096], &pattern(1 << 20, 9)[..4096]);
    assert!(back[4096..8192].iter().all(|&b| b == 0));
    assert_eq!(&back[8192..], &pattern(1 << 20, 9)[8192..16 * 512]);
    let c = dev
        .run(
            0,
            Request::Discard {
                sector: u64::MAX / 1024,
                num: 8,
            },
        )
        .unwrap();
    assert_eq!(c.status, Some(S_IOERR));
}

#[test]
fn read_only_export_offers_ro_and_rejects_writes() {
    let img = raw_image("ro.raw", 1 << 20);
    let sock = tmp("ro.sock");
    let _bp = start(&sock, &raw_json(&img), &["--read-only"]);
    let mut dev = connect(&sock, 1);
    assert_ne!(dev.features() & F_RO, 0);
    assert_eq!(dev.write(0, 0, &pattern(512, 1)).unwrap(), S_IOERR);
    let c = dev.run(0, Request::Discard { sector: 0, num: 1 }).unwrap();
    assert_eq!(c.status, Some(S_UNSUPP));
    let (st, back) = dev.read(0, 0, 512).unwrap();
    assert_eq!(st, S_OK);
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn get_id_returns_serial_and_config_space_describes_the_disk() {
    let img = raw_image("id.raw", 3 << 20);
    let sock = tmp("id.sock");
    let _bp = start(
        &sock,
        &raw_json(&img),
        &["--serial", "bulkhead-disk-7", "--num-queues", "2"],
    );
    let mut dev = connect(&sock, 2);
    let (st, id) = dev.get_id(1).unwrap();
    assert_eq!(st, S_OK);
    assert_eq!(&id[..15], b"bulkhead-disk-7");
    assert!(id[15..].iter().all(|&b| b == 0));
    let cfg = dev.config(60).unwrap();
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        (3 << 20) / 512
    );
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(cfg[34..36].try_into().unwrap()), 2);
}

#[test]
fn out_of_range_and_unaligned_reads_answer_ioerr() {
    let img = raw_image("oor.raw", 1 << 20);
    let sock = tmp("oor.sock");
    let _bp = start(&sock, &raw_json(&img), &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.read(0, 2048, 512).unwrap().0, S_IOERR);
    assert_eq!(dev.read(0, 2047, 1024).unwrap().0, S_IOERR);
    assert_eq!(dev.read(0, 0, 100).unwrap().0, S_IOERR);
    assert_eq!(dev.read(0, 2047, 512).unwrap().0, S_OK);
}

#[test]
fn qcow2_overlay_reads_backing_data_and_keeps_writes_in_the_overlay() {
    let base = raw_image("base.raw", 4 << 20);
    std::fs::write(&base, pattern(4 << 20, 11)).unwrap();
    let top = tmp("top.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&top)
        .status()
        .unwrap();
    assert!(st.success());
    let sock = tmp("ovl.sock");
    let mut bp = start(&sock, &qcow2_json(&top), &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(
        dev.read(0, 0, 65536).unwrap().1,
        pattern(4 << 20, 11)[..65536].to_vec()
    );
    assert_eq!(dev.write(0, 0, &pattern(4096, 12)).unwrap(), S_OK);
    let (_, back) = dev.read(0, 0, 8192).unwrap();
    assert_eq!(&back[..4096], &pattern(4096, 12)[..]);
    assert_eq!(&back[4096..], &pattern(4 << 20, 11)[4096..8192]);
    drop(dev);
    bp.kill();
    assert_eq!(std::fs::read(&base).unwrap(), pattern(4 << 20, 11));
    assert!(qemu_img_check(&top));
}

#[test]
fn deep_queues_on_every_queue_start_no_more_io_threads_than_the_export_limit() {
    use block_proc::vhost::queue::EXPORT_MAX_IO_THREADS;

    let sock = tmp("threads.sock");
    let json = r#"{"driver":"null-co","node-name":"n","size":1048576,"latency-ns":50000000}"#;
    let bp = start(&sock, json, &["--num-queues", "4"]);
    let mut dev = connect(&sock, 4);
    let pid = bp.pid().unwrap();
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count()
    };
    let before = threads();
    let mut most = before;
    for _ in 0..3 {
        for q in 0..4usize {
            for k in 0..32u64 {
                dev.submit(
                    q,
                    Request::Read {
                        sector: k,
                        len: 512,
                    },
                )
                .unwrap();
            }
            dev.kick(q).unwrap();
        }
        for q in 0..4usize {
            while dev.pending(q) > 0 {
                most = most.max(threads());
                assert!(dev.wait(q).unwrap().iter().all(|c| c.status == Some(S_OK)));
            }
        }
    }
    // Four queue threads were there before; I/O threads came on demand.
    let started = most - before;
    eprintln!("{started} I/O threads for 4 queues x 32 requests in flight");
    assert!(
        started <= EXPORT_MAX_IO_THREADS,
        "{started} I/O threads started, limit {EXPORT_MAX_IO_THREADS}"
    );
}
