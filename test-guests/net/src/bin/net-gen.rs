//! `net-gen`: a traffic generator for `scripts/bench-net`. It sets the
//! first virtio-net device up (4 KiB receive buffers, as a Linux guest's
//! mergeable ones) and obeys the control frames of the host
//! (`net::gen_frame`): `OP_TX` sends data frames of the given size with
//! sequence numbers as fast as the transmit queue takes them (one
//! notification per batch) for the given time; `OP_RX` counts the data
//! frames that arrive meanwhile (receive buffers returned in batches).
//! When the transmit queue is full or nothing arrived, the guest halts
//! until the device's interrupt (or the 10 ms clock tick), so its vCPU
//! leaves the host CPU to the backend instead of spinning.
//! Each run ends with an `OP_DONE` frame to the host carrying the count,
//! and a line `net-gen: tx|rx SIZE B: N frames in MS ms` on the serial
//! port. It serves runs until the machine is stopped.

#![no_std]
#![no_main]

use guest_rt::{idt, port, println};
use net::clock;
use net::gen_frame::{self, Control, OP_DONE, OP_RX, OP_TX};
use net::start::nic;
use net::virtio_net::Net;

/// Receive buffer bytes.
const RX_LEN: usize = 4096;
/// Receive buffers returned before the device is notified.
const RX_BATCH: u32 = 8;
/// The device interrupt's vector.
const VECTOR: u8 = 0x30;

fn on_device_interrupt(_vector: u8) {}

/// Halts until an interrupt unless `ready` (checked with interrupts off,
/// so an interrupt that comes meanwhile wakes the halt), then
/// acknowledges the device's interrupt status.
fn wait_unless(net: &mut Net, ready: &mut dyn FnMut(&mut Net) -> bool) {
    port::cli();
    let go = ready(net);
    if !go {
        port::wait_for_interrupt();
    }
    port::sti();
    if !go {
        net.ack_interrupt();
    }
}

guest_rt::guest!("net-gen", main);

/// Waits for the next order; every other frame is dropped.
fn next_order(net: &mut Net) -> (Control, [u8; 6]) {
    loop {
        let mut order = None;
        let mut got = 0;
        while got < RX_BATCH
            && net.recv(&mut |f| {
                if let Some((c, src)) = gen_frame::parse_control(f) {
                    order = Some((c, src));
                }
            })
        {
            got += 1;
        }
        if got > 0 {
            net.kick_rx();
        }
        match order {
            Some((c, src)) if c.op == OP_TX || c.op == OP_RX => return (c, src),
            Some(_) | None if got == 0 => wait_unless(net, &mut |n| n.rx_pending()),
            Some(_) | None => {}
        }
    }
}

/// Sends data frames of `size` bytes to `host` until `end` (clock ms);
/// returns how many went into the queue (and out of it: the queue is
/// drained before returning).
fn transmit(net: &mut Net, host: [u8; 6], size: usize, end: u64) -> u64 {
    let mac = net.mac;
    let mut seq = 0u32;
    while clock::now_ms() < end {
        let mut queued = false;
        while net.queue_tx(size, &mut |b| gen_frame::data(b, host, mac, seq)) {
            seq = seq.wrapping_add(1);
            queued = true;
        }
        if queued {
            net.kick_tx();
        }
        wait_unless(net, &mut |n| n.tx_has_room());
    }
    let give_up = clock::now_ms() + 1000;
    while !net.tx_idle() && clock::now_ms() < give_up {
        port::pause();
    }
    u64::from(seq)
}

/// Counts the data frames that arrive until `end` (clock ms).
fn receive(net: &mut Net, end: u64) -> u64 {
    let mut count = 0u64;
    while clock::now_ms() < end {
        let mut got = 0;
        while got < RX_BATCH
            && net.recv(&mut |f| {
                if gen_frame::parse_data(f).is_some() {
                    count += 1;
                }
            })
        {
            got += 1;
        }
        if got > 0 {
            net.kick_rx();
        } else {
            wait_unless(net, &mut |n| n.rx_pending());
        }
    }
    count
}

fn main() -> ! {
    idt::set_handler(VECTOR, on_device_interrupt);
    clock::start();
    let mut net = nic(0, RX_LEN);
    net.batch_rx(true);
    let gsi = net.route_interrupt(VECTOR);
    println!("net-gen: ready: {}, GSI {:?}", net, gsi);
    loop {
        let (order, host) = next_order(&mut net);
        let size = usize::from(order.size).clamp(gen_frame::MIN_DATA, gen_frame::MAX_DATA);
        let start = clock::now_ms();
        let end = start + u64::from(order.ms);
        let (what, count) = if order.op == OP_TX {
            ("tx", transmit(&mut net, host, size, end))
        } else {
            ("rx", receive(&mut net, end))
        };
        let done = Control {
            op: OP_DONE,
            size: size as u16,
            ms: order.ms,
            count,
        };
        let mut buf = [0u8; gen_frame::CONTROL_LEN];
        if let Some(len) = gen_frame::control(&mut buf, host, net.mac, &done) {
            let give_up = clock::now_ms() + 1000;
            while !net.send(&buf[..len]) && clock::now_ms() < give_up {
                port::pause();
            }
        }
        println!(
            "net-gen: {} {} B: {} frames in {} ms",
            what,
            size,
            count,
            clock::now_ms() - start
        );
    }
}
