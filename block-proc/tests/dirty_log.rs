//! vhost-user dirty logging (`VHOST_F_LOG_ALL`, SET_LOG_BASE) end to end:
//! block-proc standalone, the harness as a migrating frontend. With
//! logging on, a read marks its data pages, the page of its status byte
//! and the used ring's page — also when the data comes from an O_DIRECT
//! io_uring read straight into guest RAM, also in the sandboxed worker —
//! and nothing else; a virtio-scsi READ marks its response and data pages;
//! with LOG_ALL off nothing is marked; a SET_LOG_BASE region larger than its file is
//! refused without harm to the process.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;
use vhost_user_harness::blk::S_OK;
use vhost_user_harness::dirty_log::{pages_of, HarnessLog, F_LOG_ALL};
use vhost_user_harness::{BlkDevice, BlkOptions, Request};

fn opts() -> BlkOptions {
    BlkOptions {
        slots: 8,
        slot_size: 256 << 10,
        ..Default::default()
    }
}

/// The pages a read of `len` bytes into `slot` may mark: its status byte
/// (in the slot's header page), its data, the used ring of queue 0.
fn read_pages(dev: &BlkDevice, slot: u16, len: u64) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let r = dev.ring_addrs(0);
    let status = pages_of(dev.slot_addr(0, slot) + 32, 1);
    let data = pages_of(dev.slot_data_addr(0, slot), len);
    let used = pages_of(r.used, 6 + 8 * u64::from(r.size));
    let required: BTreeSet<u64> = status
        .clone()
        .chain(data.clone())
        .chain(pages_of(r.used + 2, 2))
        .collect();
    let allowed: BTreeSet<u64> = status.chain(data).chain(used).collect();
    (required, allowed)
}

fn assert_read_logged(dev: &mut BlkDevice, log: &HarnessLog, sector: u64, len: u32) {
    let c = dev.run(0, Request::Read { sector, len }).unwrap();
    assert_eq!(c.status, Some(S_OK));
    let marked: BTreeSet<u64> = log.pages().unwrap().into_iter().collect();
    let (required, allowed) = read_pages(dev, c.slot.unwrap(), u64::from(len));
    assert!(
        required.is_subset(&marked),
        "missing pages: {:?}",
        required.difference(&marked).collect::<Vec<_>>()
    );
    assert!(
        marked.is_subset(&allowed),
        "pages nothing wrote: {:?}",
        marked.difference(&allowed).collect::<Vec<_>>()
    );
}

#[test]
fn with_log_all_a_read_marks_its_data_status_and_used_ring_pages() {
    let img = raw_image("log-threads", 4 << 20);
    let sock = tmp("log-threads.sock");
    let _bp = start(&sock, &raw_json(&img), &[]);
    let mut dev = BlkDevice::connect(&sock, opts()).unwrap();
    assert_eq!(dev.write(0, 8, &pattern(64 << 10, 1)).unwrap(), S_OK);
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    // Turned on while the queue runs, as a migration does.
    dev.set_dirty_log(Some(&log), true).unwrap();
    assert_ne!(dev.features() & F_LOG_ALL, 0);
    assert_read_logged(&mut dev, &log, 8, 64 << 10);
    log.clear().unwrap();
    assert_read_logged(&mut dev, &log, 0, 4096);
    // Off again: nothing is marked any more.
    dev.set_dirty_log(None, false).unwrap();
    log.clear().unwrap();
    let (st, back) = dev.read(0, 8, 64 << 10).unwrap();
    assert_eq!((st, back), (S_OK, pattern(64 << 10, 1)));
    assert_eq!(log.pages().unwrap(), Vec::<u64>::new());
}

#[test]
fn without_log_all_a_log_base_alone_marks_nothing() {
    let img = raw_image("log-off", 4 << 20);
    let sock = tmp("log-off.sock");
    let _bp = start(&sock, &raw_json(&img), &[]);
    let mut dev = BlkDevice::connect(&sock, opts()).unwrap();
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    dev.set_dirty_log(Some(&log), false).unwrap();
    assert_eq!(dev.features() & F_LOG_ALL, 0);
    assert_eq!(dev.write(0, 0, &pattern(8192, 2)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 0, 8192).unwrap().0, S_OK);
    assert_eq!(log.pages().unwrap(), Vec::<u64>::new());
}

fn disk(name: &str, size: u64) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bp-log-{}-{name}", std::process::id()));
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

#[test]
fn o_direct_io_uring_reads_into_guest_ram_are_logged() {
    let img = disk("uring", 8 << 20);
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","aio":"io_uring","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let sock = tmp("log-uring.sock");
    let bp = start(&sock, &json, &[]);
    let mut dev = BlkDevice::connect(&sock, opts()).unwrap();
    for i in 0..6u64 {
        assert_eq!(dev.write(0, i * 128, &pattern(64 << 10, i)).unwrap(), S_OK);
    }
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    dev.set_dirty_log(Some(&log), true).unwrap();
    let before = uring_completions(bp.pid().unwrap());
    // Six reads in one kick: they go to the queue's ring.
    let mut slots = Vec::new();
    for i in 0..6u64 {
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
    while done.len() < 6 {
        done.extend(dev.wait(0).unwrap());
    }
    assert!(done.iter().all(|c| c.status == Some(S_OK)), "{done:?}");
    let after = uring_completions(bp.pid().unwrap());
    assert!(
        after >= before + 6,
        "the reads did not go through io_uring ({before} -> {after})"
    );
    let marked: BTreeSet<u64> = log.pages().unwrap().into_iter().collect();
    for (i, slot) in slots {
        assert_eq!(
            dev.slot_data(0, slot, 64 << 10).unwrap(),
            pattern(64 << 10, i)
        );
        let (required, _) = read_pages(&dev, slot, 64 << 10);
        assert!(
            required.is_subset(&marked),
            "read {i}: missing pages {:?}",
            required.difference(&marked).collect::<Vec<_>>()
        );
    }
    let _ = std::fs::remove_file(&img);
}

/// Completions posted by the io_uring instances of process `pid`.
fn uring_completions(pid: u32) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:[io_uring]" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("CqTail:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[test]
fn a_log_region_larger_than_its_file_is_refused_and_the_export_carries_on() {
    let img = raw_image("log-bad", 4 << 20);
    let sock = tmp("log-bad.sock");
    let mut bp = start(&sock, &raw_json(&img), &[]);
    let mut dev = BlkDevice::connect(&sock, opts()).unwrap();
    // 64 KiB of log in a 4 KiB file: mapping it would fault on touch.
    let bad = HarnessLog::with_file_size(64 << 10, 4096).unwrap();
    assert!(dev.set_dirty_log(Some(&bad), true).is_err());
    // The process lives (a SIGBUS would have ended it) and serves the
    // next frontend.
    drop(dev);
    let mut dev = BlkDevice::connect(&sock, opts()).unwrap();
    assert_eq!(dev.write(0, 0, &pattern(4096, 3)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 0, 4096).unwrap(), (S_OK, pattern(4096, 3)));
    bp.kill();
}

#[test]
fn the_sandboxed_worker_maps_the_log_and_logs_reads() {
    let img = raw_image("log-worker", 4 << 20);
    let mut w = common::worker::spawn();
    let _file = w.export_node(&img, "e0", &raw_json(&img));
    let mut dev = w.attach("e0", 1);
    assert_eq!(dev.write(0, 16, &pattern(8192, 4)).unwrap(), S_OK);
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    dev.set_dirty_log(Some(&log), true).unwrap();
    assert_read_logged(&mut dev, &log, 16, 8192);
}

#[test]
fn a_virtio_scsi_read_marks_its_response_data_and_used_ring_pages() {
    use ipc_proto::block::{BlockReply, BlockRequest, BlockdevOptions, FileFd};
    use ipc_proto::scsi::{ScsiExportSpec, ScsiLunConfig, ScsiLunKind};
    use std::os::fd::AsFd;
    use vhost_user_harness::scsi::{Data, ScsiDevice, ScsiOptions};

    let img = raw_image("log-scsi", 1 << 20);
    std::fs::write(&*img, pattern(1 << 20, 5)).unwrap();
    let mut w = common::worker::spawn();
    let options: BlockdevOptions = serde_json::from_str(&format!(
        r#"{{"driver":"raw","node-name":"hd0","file":{{"driver":"file","filename":"{}"}}}}"#,
        img.display()
    ))
    .unwrap();
    let file = std::fs::File::open(&img).unwrap();
    let files = vec![FileFd {
        filename: img.display().to_string(),
        fd_index: 0,
    }];
    let add = BlockRequest::AddNode { options, files };
    assert_eq!(w.call(add, &[file.as_fd()]), Ok(BlockReply::Done));
    let spec = ScsiExportSpec {
        id: "scsi0".into(),
        num_request_queues: 1,
        luns: vec![ScsiLunConfig {
            device_id: "hd0".into(),
            target: 0,
            lun: 0,
            kind: ScsiLunKind::Hd,
            node_name: Some("hd0".into()),
            writable: false,
            tray_open: false,
            locked: false,
            serial: "s".into(),
            logical_block_size: 512,
        }],
    };
    assert_eq!(
        w.call(BlockRequest::AddScsiExport(spec), &[]),
        Ok(BlockReply::Done)
    );
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let req = BlockRequest::AttachExportConnection { id: "scsi0".into() };
    assert_eq!(w.call(req, &[theirs.as_fd()]), Ok(BlockReply::Done));
    let opts = ScsiOptions {
        slots: 4,
        slot_size: 64 << 10,
        ..Default::default()
    };
    let mut dev = ScsiDevice::from_stream(ours, opts).unwrap();
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    dev.set_dirty_log(Some(&log), true).unwrap();

    // READ(10) of 16 blocks at LBA 8 on request queue 2.
    let (head, slot) = dev
        .submit(2, 0, 0, &[0x28, 0, 0, 0, 0, 8, 0, 0, 16, 0], Data::In(8192))
        .unwrap();
    dev.kick(2).unwrap();
    let used = loop {
        if let Some(u) = dev.wait(2).unwrap().into_iter().find(|u| u.head == head) {
            break u;
        }
    };
    let r = dev.result(&used, 8192).unwrap();
    assert_eq!((r.response, r.status), (0, 0));
    assert!(r.data == pattern(1 << 20, 5)[8 * 512..8 * 512 + 8192]);
    let marked: BTreeSet<u64> = log.pages().unwrap().into_iter().collect();
    let base = dev.slot_addr(2, slot);
    let ring = dev.ring_addrs(2);
    let required: BTreeSet<u64> = pages_of(base + 256, 108)
        .chain(pages_of(base + 4096, 8192))
        .chain(pages_of(ring.used + 2, 2))
        .collect();
    assert!(
        required.is_subset(&marked),
        "missing pages: {:?}",
        required.difference(&marked).collect::<Vec<_>>()
    );
    // Every queue's used ring may be written (the control queue's
    // notification flags when the queues restarted with logging on).
    let mut allowed = required.clone();
    for q in 0..3 {
        let r = dev.ring_addrs(q);
        allowed.extend(pages_of(r.used, 6 + 8 * u64::from(r.size)));
    }
    assert!(marked.is_subset(&allowed), "{marked:?}");
}
