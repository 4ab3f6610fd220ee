//! vhost-user dirty logging in net-proc (`VHOST_F_LOG_ALL`, SET_LOG_BASE):
//! the spawned worker with a real host TAP, the harness as a migrating
//! frontend. With logging on, a received frame marks the pages of the rx
//! buffers it was written into and the rx used ring; a sent frame marks
//! only the tx used ring (the device only reads tx buffers); with logging
//! off again nothing is marked. Needs root.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::tap::{frame, unique_name, HostTap, PacketSocket};
use common::{spawn, MAC};
use vhost_user_harness::dirty_log::{pages_of, HarnessLog, F_LOG_ALL};
use vhost_user_harness::{NetDevice, NetOptions};

const T: Duration = Duration::from_secs(5);
const SRC: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcd];

fn used_ring_pages(dev: &NetDevice, q: usize) -> BTreeSet<u64> {
    let r = dev.ring_addrs(q);
    pages_of(r.used, 6 + 8 * u64::from(r.size)).collect()
}

#[test]
fn rx_buffers_and_used_rings_are_logged_while_log_all_is_on() {
    let tap = HostTap::create(&unique_name("dlog"), 1, true);
    let sock = PacketSocket::bind(&tap.name);
    let mut worker = spawn();
    worker.add_tap("tap0", &tap.dup_fds(), true);
    worker.add_nic("nic0", "tap0", 1);
    let mut dev = worker.attach("nic0", NetOptions::default());
    dev.fill_rx(0).unwrap();
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    dev.set_dirty_log(Some(&log), true).unwrap();
    assert_ne!(dev.features() & F_LOG_ALL, 0);

    // Host → guest: a frame needing two merged buffers.
    sock.send(&frame(SRC, 1, 3000));
    let used = dev.used(0, T).unwrap();
    let marked: BTreeSet<u64> = log.pages().unwrap().into_iter().collect();
    let mut required: BTreeSet<u64> = pages_of(dev.ring_addrs(0).used + 2, 2).collect();
    for &(head, len) in &used {
        required.extend(pages_of(dev.slot_addr(0, head), u64::from(len)));
    }
    assert!(
        required.is_subset(&marked),
        "missing pages {:?} (used {used:?})",
        required.difference(&marked).collect::<Vec<_>>()
    );
    let (rx0, rx_len) = dev.slots_range(0);
    let mut allowed: BTreeSet<u64> = pages_of(rx0, rx_len).collect();
    allowed.extend(used_ring_pages(&dev, 0));
    allowed.extend(used_ring_pages(&dev, 1));
    assert!(
        marked.is_subset(&allowed),
        "pages nothing wrote: {:?}",
        marked.difference(&allowed).collect::<Vec<_>>()
    );

    // Guest → host: only the tx used ring is written.
    log.clear().unwrap();
    dev.send(0, &frame(MAC, 2, 1000)).unwrap();
    assert!(sock.recv(T).is_some());
    let tx_used = used_ring_pages(&dev, 1);
    let deadline = std::time::Instant::now() + T;
    let marked = loop {
        let m: BTreeSet<u64> = log.pages().unwrap().into_iter().collect();
        if !m.is_disjoint(&tx_used) || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        !marked.is_disjoint(&tx_used),
        "tx used ring not logged: {marked:?}"
    );
    let (tx0, tx_len) = dev.slots_range(1);
    let tx_bufs: BTreeSet<u64> = pages_of(tx0, tx_len).collect();
    assert!(
        marked.is_disjoint(&tx_bufs),
        "a tx buffer was logged: {marked:?}"
    );

    // Logging off: a received frame marks nothing.
    dev.set_dirty_log(None, false).unwrap();
    log.clear().unwrap();
    dev.fill_rx(0).unwrap();
    sock.send(&frame(SRC, 3, 100));
    assert!(!dev.used(0, T).unwrap().is_empty());
    assert_eq!(log.pages().unwrap(), Vec::<u64>::new());
}
