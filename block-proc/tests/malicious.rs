//! Malformed descriptor chains: block-proc answers an error status or
//! stops the offending queue, and never dies; other queues keep working
//! and a new connection gets a working device again.

mod common;

use std::time::Duration;

use common::*;
use vhost_user_harness::blk::{S_IOERR, S_OK};
use vhost_user_harness::ring::{RawDesc, F_NEXT, F_WRITE};
use vhost_user_harness::{BlkDevice, HarnessError};
use vm_memory::{Bytes, GuestAddress};

fn alive(bp: &vhost_user_harness::process::Backend) -> bool {
    let pid = bp.pid().unwrap() as i32;
    // A zombie would still answer kill(0); check /proc state too.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// Header for a read of sector 0 in the slot, status byte reset.
fn prepare(dev: &BlkDevice, q: usize, slot: u16, ty: u32) -> (u64, u64, u64) {
    let base = dev.slot_addr(q, slot);
    let m = &dev.mem().mem;
    m.write_obj(ty, GuestAddress(base)).unwrap();
    m.write_obj(0u64, GuestAddress(base + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(base + 32)).unwrap();
    (base, base + 32, base + 4096)
}

fn status(dev: &BlkDevice, addr: u64) -> u8 {
    dev.mem().mem.read_obj::<u8>(GuestAddress(addr)).unwrap()
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

fn setup(name: &str) -> (vhost_user_harness::process::Backend, BlkDevice, Tmp) {
    let img = raw_image(&format!("{name}.raw"), 1 << 20);
    let sock = tmp(&format!("{name}.sock"));
    let bp = start(&sock, &raw_json(&img), &["--num-queues", "2"]);
    let dev = connect(&sock, 2);
    (bp, dev, sock)
}

#[test]
fn descriptor_loop_stops_the_queue_but_not_the_process() {
    let (bp, mut dev, sock) = setup("loop");
    let slot = dev.take_slot(0).unwrap();
    let (h, st, _) = prepare(&dev, 0, slot, 0);
    dev.submit_raw(
        0,
        &[
            (100, d(h, 16, F_NEXT, 101)),
            (101, d(st, 1, F_WRITE | F_NEXT, 100)),
        ],
        100,
    )
    .unwrap();
    dev.kick_now(0).unwrap();
    let r = dev.wait_timeout(0, Duration::from_millis(300));
    assert!(matches!(r, Err(HarnessError::Timeout)));
    assert!(alive(&bp));
    assert_eq!(dev.read(1, 0, 512).unwrap().0, S_OK);
    drop(dev);
    let mut fresh = connect(&sock, 2);
    assert_eq!(fresh.read(0, 0, 512).unwrap().0, S_OK);
}

#[test]
fn head_index_out_of_range_stops_the_queue_but_not_the_process() {
    let (bp, mut dev, _sock) = setup("head");
    dev.publish_raw_head(0, 4000).unwrap();
    dev.kick_now(0).unwrap();
    assert!(matches!(
        dev.wait_timeout(0, Duration::from_millis(300)),
        Err(HarnessError::Timeout)
    ));
    assert!(alive(&bp));
    assert_eq!(dev.read(1, 0, 512).unwrap().0, S_OK);
}

#[test]
fn data_address_outside_guest_memory_answers_ioerr() {
    let (bp, mut dev, _sock) = setup("oob");
    let slot = dev.take_slot(0).unwrap();
    let (h, st, _) = prepare(&dev, 0, slot, 0);
    dev.submit_raw(
        0,
        &[
            (100, d(h, 16, F_NEXT, 101)),
            (101, d(1 << 40, 4096, F_WRITE | F_NEXT, 102)),
            (102, d(st, 1, F_WRITE, 0)),
        ],
        100,
    )
    .unwrap();
    dev.kick_now(0).unwrap();
    let c = dev.wait(0).unwrap();
    assert_eq!(c[0].head, 100);
    assert_eq!(status(&dev, st), S_IOERR);
    assert!(alive(&bp));
    assert_eq!(dev.read(0, 0, 512).unwrap().0, S_OK);
}

#[test]
fn huge_length_and_short_header_answer_ioerr() {
    let (bp, mut dev, _sock) = setup("huge");
    let slot = dev.take_slot(0).unwrap();
    let (h, st, data) = prepare(&dev, 0, slot, 0);
    dev.submit_raw(
        0,
        &[
            (100, d(h, 16, F_NEXT, 101)),
            (101, d(data, u32::MAX, F_WRITE | F_NEXT, 102)),
            (102, d(st, 1, F_WRITE, 0)),
        ],
        100,
    )
    .unwrap();
    dev.kick_now(0).unwrap();
    dev.wait(0).unwrap();
    assert_eq!(status(&dev, st), S_IOERR);
    let (h, st, _) = prepare(&dev, 0, slot, 0);
    dev.submit_raw(
        0,
        &[(110, d(h, 8, F_NEXT, 111)), (111, d(st, 1, F_WRITE, 0))],
        110,
    )
    .unwrap();
    dev.kick_now(0).unwrap();
    dev.wait(0).unwrap();
    assert_eq!(status(&dev, st), S_IOERR);
    let (h, st, _) = prepare(&dev, 0, slot, 0);
    dev.submit_raw(
        0,
        &[
            (120, d(h, 16, F_WRITE | F_NEXT, 121)),
            (121, d(st, 1, F_WRITE, 0)),
        ],
        120,
    )
    .unwrap();
    dev.kick_now(0).unwrap();
    dev.wait(0).unwrap();
    assert_eq!(status(&dev, st), S_IOERR);
    assert!(alive(&bp));
}

#[test]
fn chain_without_status_byte_completes_with_zero_length() {
    let (bp, mut dev, _sock) = setup("nostatus");
    let slot = dev.take_slot(0).unwrap();
    let (h, _, _) = prepare(&dev, 0, slot, 0);
    dev.submit_raw(0, &[(100, d(h, 16, 0, 0))], 100).unwrap();
    dev.kick_now(0).unwrap();
    let c = dev.wait(0).unwrap();
    assert_eq!((c[0].head, c[0].used_len), (100, 0));
    dev.submit_raw(0, &[(101, d(h, 0, F_WRITE, 0))], 101)
        .unwrap();
    dev.kick_now(0).unwrap();
    let c = dev.wait(0).unwrap();
    assert_eq!((c[0].head, c[0].used_len), (101, 0));
    assert!(alive(&bp));
    assert_eq!(dev.read(0, 0, 512).unwrap().0, S_OK);
}

#[test]
fn invalid_vhost_user_requests_are_refused_and_the_backend_stays_up() {
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::VhostBackend;
    use vhost_user_harness::frontend::{connect_retry, Connection, F_EVENT_IDX, F_VERSION_1};

    let img = raw_image("proto.raw", 1 << 20);
    let sock = tmp("proto.sock");
    let bp = start(&sock, &raw_json(&img), &[]);
    let fe = connect_retry(&sock, 1, Duration::from_secs(10)).unwrap();
    let mut c = Connection::negotiate(fe, F_EVENT_IDX | F_VERSION_1).unwrap();
    assert!(c.fe.set_vring_num(0, 3).is_err());
    assert!(c.fe.set_vring_num(0, 65535).is_err());
    assert!(c.fe.set_vring_base(7, 0).is_err());
    assert!(c
        .fe
        .get_config(
            56,
            8,
            vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
            &[0u8; 8]
        )
        .is_err());
    assert!(c.fe.set_features(1 << 63).is_err());
    drop(c);
    assert!(alive(&bp));
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.read(0, 0, 512).unwrap().0, S_OK);
}

/// An empty-or-small memfd for a hostile frontend.
fn memfd(len: u64) -> std::fs::File {
    let fd =
        nix::sys::memfd::memfd_create(c"hostile", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(len).unwrap();
    f
}

#[test]
fn requests_taken_before_the_queue_broke_still_complete() {
    // Two slow requests are running on the I/O threads when the guest
    // publishes a head out of range: the queue stops taking requests, but
    // the two it had taken are published.
    let sock = tmp("brokencompl.sock");
    let json = r#"{"driver":"null-co","node-name":"n","size":1048576,"latency-ns":300000000}"#;
    let bp = start(&sock, json, &[]);
    let mut dev = connect(&sock, 1);
    for k in 0..2u64 {
        dev.submit(
            0,
            vhost_user_harness::Request::Write {
                sector: k,
                data: &pattern(512, k),
            },
        )
        .unwrap();
    }
    dev.kick_now(0).unwrap();
    dev.publish_raw_head(0, 4000).unwrap();
    dev.kick_now(0).unwrap();
    let mut done = Vec::new();
    while done.len() < 2 {
        match dev.wait_timeout(0, Duration::from_secs(3)) {
            Ok(c) => done.extend(c),
            Err(e) => panic!("only {} of 2 taken requests completed: {e}", done.len()),
        }
    }
    assert!(done.iter().all(|c| c.status == Some(S_OK)));
    assert!(alive(&bp));
}

#[test]
fn mem_table_region_larger_than_its_file_is_refused_and_the_backend_stays_up() {
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    use vhost_user_harness::frontend::{connect_retry, Connection, F_EVENT_IDX, F_VERSION_1};
    use vmm_sys_util::eventfd::EventFd;

    let img = raw_image("memtab.raw", 1 << 20);
    let sock = tmp("memtab.sock");
    let bp = start(&sock, &raw_json(&img), &[]);
    let fe = connect_retry(&sock, 1, Duration::from_secs(10)).unwrap();
    let mut c = Connection::negotiate(fe, F_EVENT_IDX | F_VERSION_1).unwrap();
    // 64 KiB of memfd announced as 16 MiB of guest memory.
    let f = memfd(64 << 10);
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 16 << 20,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: 0,
        mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&f),
    };
    let refused = c.fe.set_mem_table(&[region]).is_err();
    // Rings in the part past the end of the file: touching them would
    // raise SIGBUS in the backend.
    let va = 0x7000_0000_0000u64 + (8 << 20);
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(0).unwrap();
    let _ = c.fe.set_vring_num(0, 128);
    let _ = c.fe.set_vring_base(0, 0);
    let _ = c.fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: 128,
            queue_size: 128,
            flags: 0,
            desc_table_addr: va,
            used_ring_addr: va + 8192,
            avail_ring_addr: va + 4096,
            log_addr: None,
        },
    );
    let _ = c.fe.set_vring_call(0, &call);
    let _ = c.fe.set_vring_kick(0, &kick);
    let _ = c.fe.set_vring_enable(0, true);
    let _ = kick.write(1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(&bp),
        "block-proc died (SIGBUS) on a short memory file"
    );
    assert!(
        refused,
        "SET_MEM_TABLE past the end of the memfd was accepted"
    );
    drop(c);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.read(0, 0, 512).unwrap().0, S_OK);
}

#[test]
fn inflight_region_larger_than_its_file_is_refused_and_the_backend_stays_up() {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::VhostUserInflight;
    use vhost::vhost_user::VhostUserFrontend;
    use vhost_user_harness::frontend::{connect_retry, Connection, F_EVENT_IDX, F_VERSION_1};

    let img = raw_image("inflsz.raw", 1 << 20);
    let sock = tmp("inflsz.sock");
    let bp = start(&sock, &raw_json(&img), &[]);
    let fe = connect_retry(&sock, 1, Duration::from_secs(10)).unwrap();
    let mut c = Connection::negotiate(fe, F_EVENT_IDX | F_VERSION_1).unwrap();
    let f = memfd(0);
    let info = VhostUserInflight::new(1 << 20, 0, 1, 128);
    let refused = c.fe.set_inflight_fd(&info, f.as_raw_fd()).is_err();
    assert!(alive(&bp));
    assert!(
        refused,
        "SET_INFLIGHT_FD past the end of the memfd was accepted"
    );
    drop(c);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.read(0, 0, 512).unwrap().0, S_OK);
}
