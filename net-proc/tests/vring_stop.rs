//! Stopping a queue for a save (`GET_VRING_BASE`): net-proc completes
//! every buffer it takes before it looks at the stop (a frame is moved
//! whole, `src/vhost/queue.rs`), so the avail position it answers is
//! exactly the used index in guest memory — nothing taken is left half
//! done, and a VMM saving the device needs no drain from it. Needs root
//! (a host TAP), as `vhost_net.rs`.

mod common;

use common::tap::{frame, unique_name, HostTap, PacketSocket};
use common::{spawn, MAC};
use vhost_user_harness::net::HDR_LEN;
use vhost_user_harness::NetOptions;

const SRC: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];

#[test]
fn get_vring_base_after_traffic_answers_the_used_index_of_each_queue() {
    let tap = HostTap::create(&unique_name("vstop"), 1, true);
    let sock = PacketSocket::bind(&tap.name);
    let mut worker = spawn();
    worker.add_tap("tap0", &tap.dup_fds(), true);
    worker.add_nic("nic0", "tap0", 1);
    let mut dev = worker.attach("nic0", NetOptions::default());
    dev.fill_rx(0).unwrap();
    // The host sends 100 frames; the receive queue is stopped once the
    // guest got the first ones (net-proc may or may not be done with the
    // others: the answer must match the used index either way).
    for seq in 0..100 {
        sock.send(&frame(SRC, seq, 1000));
    }
    dev.recv(0).unwrap();
    let (rx_base, rx_used) = dev.stop_queue(0).unwrap();
    // 200 frames published at once; the transmit queue is stopped right
    // after the kick.
    for seq in 0..200 {
        dev.queue_tx(0, &[0; HDR_LEN], &frame(MAC, seq, 1400))
            .unwrap();
    }
    dev.kick_tx(0).unwrap();
    let (tx_base, tx_used) = dev.stop_queue(1).unwrap();
    eprintln!("rx: GET_VRING_BASE {rx_base}, used {rx_used}; tx: {tx_base}, used {tx_used}");
    assert_eq!(rx_base, u32::from(rx_used), "receive queue");
    assert!(rx_base >= 1);
    assert_eq!(tx_base, u32::from(tx_used), "transmit queue");
}
