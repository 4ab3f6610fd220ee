//! block-proc's vhost-user-scsi export end to end, driven as the broker
//! drives it (IPC control channel, socketpair connections) with the
//! VM-less harness as the virtio-scsi driver: INQUIRY, READ CAPACITY,
//! reads of a known disc, a medium change (unit attention, then the new
//! disc), the guest's lock and eject reported as events, malicious chains,
//! and a SIGKILL of block-proc with the medium state replayed.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::worker::{spawn, Worker};
use common::*;
use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest, BlockdevOptions, FileFd};
use ipc_proto::scsi::{MediumOp, ScsiEvent, ScsiExportSpec, ScsiLunConfig, ScsiLunKind};
use vhost_user_harness::ring::RawDesc;
use vhost_user_harness::scsi::{
    Data, ScsiDevice, ScsiOptions, CHECK_CONDITION, REQ_LEN, RESP_LEN, S_BAD_TARGET, S_OK,
    S_OVERRUN,
};

const BLOCKS: u64 = 256;
const TUR: [u8; 6] = [0; 6];

/// A disc image of `BLOCKS` 2048-byte blocks holding `pattern(.., seed)`.
fn disc(name: &str, seed: u64) -> (Tmp, Vec<u8>) {
    let p = tmp(name);
    let data = pattern((BLOCKS * 2048) as usize, seed);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// Node `node` over `img`, read-only.
fn add_disc(w: &mut Worker, img: &std::path::Path, node: &str) {
    add_disc_with(w, img, node, "");
}

/// Node `node` over `img`, read-only, with `file_opts` (`"k":v,`) for
/// its file node.
fn add_disc_with(w: &mut Worker, img: &std::path::Path, node: &str, file_opts: &str) {
    let json = format!(
        r#"{{"driver":"raw","node-name":"{node}","read-only":true,"file":{{"driver":"file",{file_opts}"filename":"{}"}}}}"#,
        img.display()
    );
    let options: BlockdevOptions = serde_json::from_str(&json).unwrap();
    let file = std::fs::File::open(img).unwrap();
    let files = vec![FileFd {
        filename: img.display().to_string(),
        fd_index: 0,
    }];
    let r = w.call(BlockRequest::AddNode { options, files }, &[file.as_fd()]);
    assert_eq!(r, Ok(BlockReply::Done));
}

fn cd(node: Option<&str>, locked: bool) -> ScsiLunConfig {
    ScsiLunConfig {
        device_id: "cd0".into(),
        target: 0,
        lun: 0,
        kind: ScsiLunKind::Cd,
        node_name: node.map(String::from),
        writable: false,
        tray_open: false,
        locked,
        serial: "QM00001".into(),
        logical_block_size: 2048,
    }
}

fn export(w: &mut Worker, lun: ScsiLunConfig) {
    let spec = ScsiExportSpec {
        id: "scsi0".into(),
        num_request_queues: 1,
        luns: vec![lun],
    };
    assert_eq!(
        w.call(BlockRequest::AddScsiExport(spec), &[]),
        Ok(BlockReply::Done)
    );
}

fn pair(w: &mut Worker) -> UnixStream {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let req = BlockRequest::AttachExportConnection { id: "scsi0".into() };
    assert_eq!(w.call(req, &[theirs.as_fd()]), Ok(BlockReply::Done));
    ours
}

fn attach(w: &mut Worker) -> ScsiDevice {
    ScsiDevice::from_stream(pair(w), ScsiOptions::default()).unwrap()
}

fn medium(w: &mut Worker, op: MediumOp) {
    let req = BlockRequest::ScsiMedium {
        export_id: "scsi0".into(),
        device_id: "cd0".into(),
        op,
    };
    assert_eq!(w.call(req, &[]), Ok(BlockReply::Done));
}

fn sense(dev: &mut ScsiDevice, cdb: &[u8]) -> (u8, u8, u8) {
    let r = dev.command(0, 0, cdb, Data::None).unwrap();
    assert_eq!(r.response, S_OK);
    if r.status == 0 {
        return (0, 0, 0);
    }
    assert_eq!(r.status, CHECK_CONDITION);
    r.sense_key()
}

/// The next `n` ScsiEvents (they travel on the event thread, apart from
/// replies: pinged for until they came, at most 10 s).
fn scsi_events(w: &mut Worker, n: usize) -> Vec<ScsiEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n && std::time::Instant::now() < deadline {
        assert_eq!(w.call(BlockRequest::Ping, &[]), Ok(BlockReply::Done));
        got.extend(w.events.drain(..).filter_map(|e| match e {
            BlockEvent::Scsi(s) => Some(s),
            _ => None,
        }));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    got
}

#[test]
fn cd_export_answers_inquiry_and_capacity_and_reads_the_disc() {
    let (img, data) = disc("scsi-read.iso", 1);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    let cfg = dev.config(36).unwrap();
    assert_eq!(&cfg[..4], &1u32.to_le_bytes(), "num_queues");
    assert_eq!(
        &cfg[20..28],
        &[96, 0, 0, 0, 32, 0, 0, 0],
        "sense and cdb sizes"
    );
    // The driver may write back the sizes it read; other values or
    // fields are refused and the connection stays.
    dev.set_config(20, &[96, 0, 0, 0, 32, 0, 0, 0]).unwrap();
    assert!(dev.set_config(20, &[64, 0, 0, 0]).is_err());
    assert!(dev.set_config(0, &[4, 0, 0, 0]).is_err());
    let inq = dev
        .command(0, 0, &[0x12, 0, 0, 0, 36, 0], Data::In(36))
        .unwrap();
    assert_eq!((inq.response, inq.status), (S_OK, 0));
    assert_eq!((inq.data[0], inq.data[1]), (5, 0x80), "CD-ROM, removable");
    assert_eq!(&inq.data[16..27], b"QEMU CD-ROM");
    let cap = dev
        .command(0, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], Data::In(8))
        .unwrap();
    assert_eq!(cap.data, [0, 0, 0, 255, 0, 0, 8, 0]);
    for (lba, n) in [(0u32, 1u16), (7, 16), (200, 56)] {
        let r = dev.read10(lba, n, 2048).unwrap();
        assert_eq!((r.response, r.status, r.resid), (S_OK, 0, 0));
        assert_eq!(r.used_len, RESP_LEN + u32::from(n) * 2048);
        let at = lba as usize * 2048;
        assert!(
            r.data == data[at..at + usize::from(n) * 2048],
            "READ(10) at {lba}"
        );
    }
    // Past the end: 05/21/00; a write to the CD: 07/27/00.
    let r = dev.read10(250, 7, 2048).unwrap();
    assert_eq!(r.sense_key(), (5, 0x21, 0));
    let w10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let r = dev.command(0, 0, &w10, Data::Out(&[0u8; 2048])).unwrap();
    assert_eq!(r.sense_key(), (7, 0x27, 0));
    // No unit at target 3.
    assert_eq!(
        dev.command(3, 0, &TUR, Data::None).unwrap().response,
        S_BAD_TARGET
    );
}

#[test]
fn reads_on_the_io_uring_engine_return_the_disc_before_and_after_a_medium_change() {
    let (img1, data1) = disc("scsi-ring1.iso", 11);
    let (img2, data2) = disc("scsi-ring2.iso", 12);
    let direct = r#""aio":"io_uring","cache":{"direct":true},"#;
    let mut w = spawn();
    add_disc_with(&mut w, &img1, "disc1", direct);
    add_disc_with(&mut w, &img2, "disc2", direct);
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    let q = 2;
    for (data, round) in [(&data1, 0), (&data2, 1)] {
        // Aligned (ring) and unaligned (bounced, synchronous) reads, many
        // in flight at once.
        let reads: Vec<(u32, u16)> = (0..24u32)
            .map(|k| (k * 10 + k % 2, 2 + (k % 3) as u16))
            .collect();
        let mut heads = std::collections::HashMap::new();
        for &(lba, n) in &reads {
            let mut cdb = [0u8; 10];
            cdb[0] = 0x28;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&n.to_be_bytes());
            let (h, _) = dev
                .submit(q, 0, 0, &cdb, Data::In(u32::from(n) * 2048))
                .unwrap();
            heads.insert(h, (lba, n));
        }
        dev.kick(q).unwrap();
        while dev.pending(q) > 0 {
            for u in dev.wait(q).unwrap() {
                let (lba, n) = heads[&u.head];
                let r = dev.result(&u, u32::from(n) * 2048).unwrap();
                assert_eq!(
                    (r.response, r.status, r.resid),
                    (S_OK, 0, 0),
                    "round {round} lba {lba}"
                );
                assert_eq!(r.used_len, RESP_LEN + u32::from(n) * 2048);
                let at = lba as usize * 2048;
                assert!(
                    r.data == data[at..at + usize::from(n) * 2048],
                    "round {round} lba {lba}"
                );
            }
        }
        if round == 0 {
            medium(&mut w, MediumOp::OpenTray);
            medium(&mut w, MediumOp::Remove);
            medium(
                &mut w,
                MediumOp::Insert {
                    node_name: "disc2".into(),
                },
            );
            medium(&mut w, MediumOp::CloseTray);
            assert_eq!(sense(&mut dev, &TUR), (6, 0x3a, 0));
            assert_eq!(sense(&mut dev, &TUR), (6, 0x28, 0));
        }
    }
}

#[test]
fn medium_change_gives_unit_attention_then_the_new_disc() {
    let (img1, _) = disc("scsi-chg1.iso", 1);
    let (img2, data2) = disc("scsi-chg2.iso", 2);
    let mut w = spawn();
    add_disc(&mut w, &img1, "disc1");
    add_disc(&mut w, &img2, "disc2");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    assert_eq!(sense(&mut dev, &TUR), (0, 0, 0));
    medium(&mut w, MediumOp::OpenTray);
    assert_eq!(
        sense(&mut dev, &TUR),
        (6, 0x3a, 0),
        "unit attention: medium gone"
    );
    assert_eq!(sense(&mut dev, &TUR), (2, 0x3a, 2), "not ready, tray open");
    medium(&mut w, MediumOp::Remove);
    medium(
        &mut w,
        MediumOp::Insert {
            node_name: "disc2".into(),
        },
    );
    medium(&mut w, MediumOp::CloseTray);
    let gesn = [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];
    let ev = dev.command(0, 0, &gesn, Data::In(8)).unwrap();
    assert_eq!(ev.data[4..6], [2, 2], "new media event, media present");
    assert_eq!(sense(&mut dev, &TUR), (6, 0x3a, 0));
    assert_eq!(
        sense(&mut dev, &TUR),
        (6, 0x28, 0),
        "medium may have changed"
    );
    let r = dev.read10(3, 4, 2048).unwrap();
    assert_eq!(r.status, 0);
    assert!(
        r.data == data2[3 * 2048..7 * 2048],
        "the new disc's content"
    );
    // disc1 is free again: the broker can delete it.
    let del = BlockRequest::DelNode {
        node_name: "disc1".into(),
    };
    assert_eq!(w.call(del, &[]), Ok(BlockReply::Done));
}

#[test]
fn guest_lock_and_eject_are_reported_and_a_locked_tray_refuses_eject() {
    let (img, _) = disc("scsi-lock.iso", 3);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    assert_eq!(sense(&mut dev, &[0x1e, 0, 0, 0, 1, 0]), (0, 0, 0));
    let eject = [0x1b, 0, 0, 0, 2, 0];
    assert_eq!(sense(&mut dev, &eject), (5, 0x53, 2), "removal prevented");
    assert_eq!(sense(&mut dev, &[0x1e, 0, 0, 0, 0, 0]), (0, 0, 0));
    assert_eq!(sense(&mut dev, &eject), (0, 0, 0));
    assert_eq!(sense(&mut dev, &TUR), (2, 0x3a, 2));
    let lock = |locked| ScsiEvent::LockChanged {
        export_id: "scsi0".into(),
        device_id: "cd0".into(),
        locked,
    };
    let tray = ScsiEvent::TrayMoved {
        export_id: "scsi0".into(),
        device_id: "cd0".into(),
        open: true,
    };
    assert_eq!(scsi_events(&mut w, 3), vec![lock(true), lock(false), tray]);
}

#[test]
fn malicious_chains_and_cdbs_never_crash_block_proc() {
    let (img, data) = disc("scsi-evil.iso", 4);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    let q = 2;
    let base = dev.slot_addr(q, 31);
    let mut hdr = [0u8; REQ_LEN as usize];
    hdr[0] = 1;
    hdr[19] = 0x28;
    hdr[26] = 1;
    dev.poke(base, &hdr).unwrap();
    let d = |addr, len, flags, next| RawDesc {
        addr,
        len,
        flags,
        next,
    };
    let chains: Vec<Vec<RawDesc>> = vec![
        // Header too short, then a response.
        vec![d(base, 10, 1, 1), d(base + 256, RESP_LEN, 2, 0)],
        // No room for a response.
        vec![d(base, REQ_LEN, 1, 1), d(base + 256, 7, 2, 0)],
        // Response outside guest memory, and a huge length.
        vec![d(base, REQ_LEN, 1, 1), d(1 << 50, RESP_LEN, 2, 0)],
        vec![d(base, REQ_LEN, 1, 1), d(base + 256, u32::MAX, 2, 0)],
        // Readable after writable.
        vec![d(base + 256, RESP_LEN, 3, 1), d(base, REQ_LEN, 0, 0)],
        // Only a header.
        vec![d(base, REQ_LEN, 0, 0)],
    ];
    for (i, c) in chains.iter().enumerate() {
        let descs: Vec<(u16, RawDesc)> = c
            .iter()
            .enumerate()
            .map(|(k, x)| {
                (
                    100 + k as u16,
                    RawDesc {
                        next: if x.flags & 1 != 0 { 101 + k as u16 } else { 0 },
                        ..*x
                    },
                )
            })
            .collect();
        dev.submit_raw(q, &descs, 100).unwrap();
        dev.kick(q).unwrap();
        let used = dev.wait(q).unwrap();
        assert_eq!(used.len(), 1, "chain {i} answered once");
    }
    // Huge transfer lengths, bad fields, every opcode: answered, no crash.
    let huge = [0xa8, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0];
    assert_eq!(
        dev.command(0, 0, &huge, Data::In(2048))
            .unwrap()
            .sense_key(),
        (5, 0x21, 0)
    );
    let r = dev
        .command(0, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], Data::In(2048))
        .unwrap();
    assert_eq!(r.response, S_OVERRUN);
    for op in 0..=255u8 {
        let mut cdb = [0xffu8; 16];
        cdb[0] = op;
        let r = dev.command(0, 0, &cdb, Data::In(4096)).unwrap();
        assert!(
            r.response == S_OK || r.response == S_OVERRUN,
            "opcode {op:#x}"
        );
    }
    // The unit still works; block-proc is alive.
    medium(&mut w, MediumOp::SetLocked(false));
    medium(&mut w, MediumOp::CloseTray);
    while dev.command(0, 0, &TUR, Data::None).unwrap().status != 0 {}
    let r = dev.read10(1, 1, 2048).unwrap();
    assert!(r.data == data[2048..4096]);
    assert_eq!(w.child.try_wait().unwrap(), None);
}

#[test]
fn sigkill_of_block_proc_keeps_reads_and_the_medium_state() {
    let (img1, _) = disc("scsi-kill1.iso", 5);
    let (img2, data2) = disc("scsi-kill2.iso", 6);
    let mut w = spawn();
    add_disc(&mut w, &img1, "disc1");
    add_disc(&mut w, &img2, "disc2");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    // The broker's desired state after a change: disc2 in, locked.
    medium(&mut w, MediumOp::OpenTray);
    medium(&mut w, MediumOp::Remove);
    medium(
        &mut w,
        MediumOp::Insert {
            node_name: "disc2".into(),
        },
    );
    medium(&mut w, MediumOp::CloseTray);
    while dev.command(0, 0, &TUR, Data::None).unwrap().status != 0 {}
    assert_eq!(sense(&mut dev, &[0x1e, 0, 0, 0, 1, 0]), (0, 0, 0));
    // Reads in flight when block-proc dies.
    let q = 2;
    let mut heads = Vec::new();
    for k in 0..16u32 {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&(k * 8).to_be_bytes());
        cdb[8] = 8;
        heads.push((dev.submit(q, 0, 0, &cdb, Data::In(8 * 2048)).unwrap().0, k));
    }
    dev.kick(q).unwrap();
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    // The broker's replay: nodes, the export with its state, a new pair.
    let mut w = spawn();
    add_disc(&mut w, &img1, "disc1");
    add_disc(&mut w, &img2, "disc2");
    export(&mut w, cd(Some("disc2"), true));
    let s = pair(&mut w);
    dev.reconnect_stream(s).unwrap();
    let mut done = 0;
    while dev.pending(q) > 0 {
        for u in dev.wait(q).unwrap() {
            let k = heads
                .iter()
                .find(|(h, _)| *h == u.head)
                .map(|x| x.1)
                .unwrap();
            let r = dev.result(&u, 8 * 2048).unwrap();
            assert_eq!(
                (r.response, r.status),
                (S_OK, 0),
                "read {k} after the restart"
            );
            let at = k as usize * 8 * 2048;
            assert!(r.data == data2[at..at + 8 * 2048], "read {k} content");
            done += 1;
        }
    }
    assert_eq!(done, 16);
    // Same medium, still locked, no unit attention: the guest saw nothing.
    assert_eq!(sense(&mut dev, &TUR), (0, 0, 0));
    assert_eq!(sense(&mut dev, &[0x1b, 0, 0, 0, 2, 0]), (5, 0x53, 2));
    let r = dev.read10(100, 2, 2048).unwrap();
    assert!(r.data == data2[100 * 2048..102 * 2048]);
}

#[test]
fn bad_scsi_export_specs_and_medium_ops_are_refused_with_clear_errors() {
    let (img, _) = disc("scsi-bad.iso", 7);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    let mut bad = cd(Some("disc1"), false);
    bad.writable = true;
    let spec = |l: ScsiLunConfig| {
        BlockRequest::AddScsiExport(ScsiExportSpec {
            id: "scsi0".into(),
            num_request_queues: 1,
            luns: vec![l],
        })
    };
    let e = w.call(spec(bad), &[]).unwrap_err();
    assert!(e.desc.contains("read-only"), "{}", e.desc);
    let e = w.call(spec(cd(Some("nope"), false)), &[]).unwrap_err();
    assert!(e.desc.contains("nope"), "{}", e.desc);
    export(&mut w, cd(Some("disc1"), false));
    let req = BlockRequest::ScsiMedium {
        export_id: "scsi0".into(),
        device_id: "cd0".into(),
        op: MediumOp::Remove,
    };
    let e = w.call(req, &[]).unwrap_err();
    assert_eq!(e.desc, "Tray of device 'cd0' is not open");
    let req = BlockRequest::ScsiMedium {
        export_id: "scsi0".into(),
        device_id: "cd9".into(),
        op: MediumOp::OpenTray,
    };
    assert!(w.call(req, &[]).is_err());
    assert_eq!(w.child.try_wait().unwrap(), None);
}

#[test]
fn scsi_hd_writes_read_back_and_a_resize_is_a_capacity_unit_attention() {
    let img = raw_image("scsi-hd.raw", 1 << 20);
    let mut w = spawn();
    let json = format!(
        r#"{{"driver":"raw","node-name":"hd0","file":{{"driver":"file","filename":"{}"}}}}"#,
        img.display()
    );
    let options: BlockdevOptions = serde_json::from_str(&json).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let files = vec![FileFd {
        filename: img.display().to_string(),
        fd_index: 0,
    }];
    let r = w.call(BlockRequest::AddNode { options, files }, &[file.as_fd()]);
    assert_eq!(r, Ok(BlockReply::Done));
    export(
        &mut w,
        ScsiLunConfig {
            device_id: "hd0".into(),
            kind: ScsiLunKind::Hd,
            node_name: Some("hd0".into()),
            writable: true,
            logical_block_size: 512,
            ..cd(None, false)
        },
    );
    let mut dev = attach(&mut w);
    let inq = dev
        .command(0, 0, &[0x12, 0, 0, 0, 36, 0], Data::In(36))
        .unwrap();
    assert_eq!(
        (inq.data[0], inq.data[1]),
        (0, 0),
        "direct access, not removable"
    );
    let data = pattern(4096, 21);
    let w16 = [0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 8, 0, 0];
    let r = dev.command(0, 0, &w16, Data::Out(&data)).unwrap();
    assert_eq!((r.response, r.status), (S_OK, 0));
    assert_eq!(
        sense(&mut dev, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (0, 0, 0)
    );
    let r = dev
        .command(0, 0, &[0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0], Data::In(4096))
        .unwrap();
    assert!(r.data == data);
    let on_disk = std::fs::read(&img).unwrap();
    assert!(on_disk[16 * 512..16 * 512 + 4096] == data[..]);
    let resize = BlockRequest::ResizeNode {
        node_name: "hd0".into(),
        size: 2 << 20,
    };
    assert_eq!(w.call(resize, &[]), Ok(BlockReply::Done));
    assert_eq!(
        sense(&mut dev, &TUR),
        (6, 0x2a, 9),
        "capacity data has changed"
    );
    let cap = dev
        .command(0, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], Data::In(8))
        .unwrap();
    assert_eq!(cap.data, [0, 0, 0x0f, 0xff, 0, 0, 2, 0]);
}

/// A null-co CD of `BLOCKS` blocks whose reads take 300 ms.
fn add_slow_disc(w: &mut Worker) {
    let json = format!(
        r#"{{"driver":"null-co","node-name":"slow","size":{},"latency-ns":300000000,"read-zeroes":true}}"#,
        BLOCKS * 2048
    );
    let options: BlockdevOptions = serde_json::from_str(&json).unwrap();
    let r = w.call(
        BlockRequest::AddNode {
            options,
            files: vec![],
        },
        &[],
    );
    assert_eq!(r, Ok(BlockReply::Done));
}

#[test]
fn reads_executing_when_block_proc_is_killed_are_resubmitted_and_complete() {
    let mut w = spawn();
    add_slow_disc(&mut w);
    export(&mut w, cd(Some("slow"), false));
    let mut dev = attach(&mut w);
    assert!(dev.has_inflight(), "the export offers an inflight region");
    let q = 2;
    for k in 0..4u32 {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&(k * 4).to_be_bytes());
        cdb[8] = 2;
        dev.submit(q, 0, 0, &cdb, Data::In(4096)).unwrap();
    }
    dev.kick(q).unwrap();
    // Each read takes 300 ms: all four are executing now.
    std::thread::sleep(std::time::Duration::from_millis(50));
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    assert_eq!(dev.pending(q), 4);
    let mut w = spawn();
    add_slow_disc(&mut w);
    export(&mut w, cd(Some("slow"), false));
    let s = pair(&mut w);
    dev.reconnect_stream(s).unwrap();
    let mut done = 0;
    while dev.pending(q) > 0 {
        for u in dev.wait(q).unwrap() {
            let r = dev.result(&u, 4096).unwrap();
            assert_eq!((r.response, r.status, r.resid), (S_OK, 0, 0));
            assert_eq!(r.used_len, RESP_LEN + 4096);
            done += 1;
        }
    }
    assert_eq!(
        done, 4,
        "every read killed in flight completes after the restart"
    );
}

/// The next SCSI event already waiting on the broker's end of the
/// channel (none: the worker has not written one yet); other events
/// (the export's connection) are skipped.
fn event_already_sent(w: &mut Worker) -> Option<BlockEvent> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(w.chan.socket().as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::ZERO).unwrap() == 0 {
            return None;
        }
        match w.chan.recv().unwrap().0 {
            ipc_proto::envelope::WorkerMsg::Event(e @ BlockEvent::Scsi(_)) => return Some(e),
            ipc_proto::envelope::WorkerMsg::Event(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn guest_lock_and_eject_reach_the_broker_before_the_guest_sees_them_complete() {
    let (img, _) = disc("scsi-order.iso", 8);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    let lock = |locked| {
        BlockEvent::Scsi(ScsiEvent::LockChanged {
            export_id: "scsi0".into(),
            device_id: "cd0".into(),
            locked,
        })
    };
    // The broker decides `eject` on the lock it was told about: each
    // change must be on its channel by the time the guest sees GOOD.
    for k in 0..40 {
        let locked = k % 2 == 0;
        let cdb = [0x1e, 0, 0, 0, u8::from(locked), 0];
        assert_eq!(sense(&mut dev, &cdb), (0, 0, 0));
        assert_eq!(
            event_already_sent(&mut w),
            Some(lock(locked)),
            "PREVENT ALLOW {k} completed before its event was sent"
        );
    }
    assert_eq!(sense(&mut dev, &[0x1b, 0, 0, 0, 2, 0]), (0, 0, 0));
    let tray = BlockEvent::Scsi(ScsiEvent::TrayMoved {
        export_id: "scsi0".into(),
        device_id: "cd0".into(),
        open: true,
    });
    assert_eq!(event_already_sent(&mut w), Some(tray));
}

#[test]
fn opening_a_tray_the_guest_locked_is_refused_with_qemus_message_unless_unlocked_first() {
    let (img, _) = disc("scsi-backstop.iso", 10);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    // The guest locks; a broker that has not read the event yet thinks
    // the drive unlocked and asks to open the tray.
    assert_eq!(sense(&mut dev, &[0x1e, 0, 0, 0, 1, 0]), (0, 0, 0));
    let open = BlockRequest::ScsiMedium {
        export_id: "scsi0".into(),
        device_id: "cd0".into(),
        op: MediumOp::OpenTray,
    };
    let e = w.call(open.clone(), &[]).unwrap_err();
    assert_eq!(
        e.desc,
        "Device 'cd0' is locked and force was not specified, wait for tray to open and try again"
    );
    // Nothing moved; the guest was asked to eject, as QEMU does.
    assert_eq!(sense(&mut dev, &TUR), (0, 0, 0));
    let gesn = [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];
    let r = dev.command(0, 0, &gesn, Data::In(8)).unwrap();
    assert_eq!(r.data[4], 1, "eject requested");
    // `force`: the broker unlocks, then opens.
    medium(&mut w, MediumOp::SetLocked(false));
    medium(&mut w, MediumOp::OpenTray);
    assert_eq!(sense(&mut dev, &TUR), (6, 0x3a, 0));
    assert_eq!(w.child.try_wait().unwrap(), None);
}

#[test]
fn a_guest_lock_that_completed_reaches_the_broker_even_if_block_proc_is_then_sigkilled() {
    let (img, _) = disc("scsi-lockkill.iso", 11);
    let mut w = spawn();
    add_disc(&mut w, &img, "disc1");
    export(&mut w, cd(Some("disc1"), false));
    let mut dev = attach(&mut w);
    assert_eq!(sense(&mut dev, &[0x1e, 0, 0, 0, 1, 0]), (0, 0, 0));
    // SIGKILL right after the guest saw GOOD: the event is already in
    // the channel, so the broker's replay will carry the lock.
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    let mut got = Vec::new();
    while let Ok((msg, _)) = w.chan.recv() {
        if let ipc_proto::envelope::WorkerMsg::Event(BlockEvent::Scsi(e)) = msg {
            got.push(e);
        }
    }
    assert_eq!(
        got,
        vec![ScsiEvent::LockChanged {
            export_id: "scsi0".into(),
            device_id: "cd0".into(),
            locked: true,
        }]
    );
}

#[test]
fn get_vring_base_of_a_request_queue_answers_once_its_commands_completed() {
    // The save of a VM stops each queue (GET_VRING_BASE): the virtio-scsi
    // queues drain as the virtio-blk ones do (`tests/vring_stop.rs`).
    let mut w = spawn();
    add_slow_disc(&mut w);
    export(&mut w, cd(Some("slow"), false));
    let mut dev = attach(&mut w);
    let q = 2;
    for k in 0..4u32 {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&(k * 4).to_be_bytes());
        cdb[8] = 2;
        dev.submit(q, 0, 0, &cdb, Data::In(4096)).unwrap();
    }
    dev.kick(q).unwrap();
    // Each read takes 300 ms: they are executing when the stop arrives.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let base = dev.stop_queue(q).unwrap();
    // Answered after every command it took completed: their used
    // elements are there already (no waiting).
    let done = match base {
        0 => Vec::new(),
        _ => dev.wait_timeout(q, std::time::Duration::ZERO).unwrap(),
    };
    assert_eq!(done.len(), base as usize);
    for u in &done {
        let r = dev.result(u, 4096).unwrap();
        assert_eq!((r.response, r.status), (S_OK, 0));
    }
}
