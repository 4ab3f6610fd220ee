//! `net-pair`: a guest with two NICs that ping each other forever (for a
//! host switch between them: two NICs of one guest on one rocker
//! switch). Each round one NIC pings (broadcast, so the switch floods
//! them) and the other answers (unicast to the pinger's MAC, which the
//! switch has learned), then the roles swap, so frames cross both ways;
//! a line of counts per round (`net: nicN round R: sent .. received ..
//! lost .. duplicate .. corrupt .. late ..`). Ends with
//! `VERDICT: FAIL net-pair` only if a NIC cannot be set up.

#![no_std]
#![no_main]

use guest_rt::println;
use net::clock;
use net::exchange::Exchange;
use net::virtio_net::{Net, RX_BUF_LEN};

const ROUND: u32 = 50;
const WINDOW: u32 = 8;
const PATIENCE_MS: u64 = 1000;

guest_rt::guest!("net-pair", main);

fn nic(nth: usize) -> Exchange {
    let net = match Net::setup_nth(nth, RX_BUF_LEN) {
        Ok(n) => n,
        Err(e) => guest_rt::fail!("virtio-net {} set-up: {:?}", nth, e),
    };
    let m = net.mac;
    println!(
        "net: nic{} virtio-net at {:#x}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        nth,
        net.base(),
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    );
    Exchange::new(net)
}

fn main() -> ! {
    clock::start();
    let mut x = [nic(0), nic(1)];
    let mut n = 1u64;
    loop {
        for pinger in 0..2 {
            let (a, b) = x.split_at_mut(1);
            let (p, answerer) = if pinger == 0 {
                (&mut a[0], &mut b[0])
            } else {
                (&mut b[0], &mut a[0])
            };
            let r = p.round_beside(ROUND, WINDOW, PATIENCE_MS, Some(answerer));
            println!(
                "net: nic{} round {}: sent {} received {} lost {} duplicate {} corrupt {} late {}",
                pinger, n, r.sent, r.received, r.lost, r.duplicate, r.corrupt, r.late
            );
        }
        n += 1;
    }
}
