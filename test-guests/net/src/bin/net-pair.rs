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
use net::exchange::{Exchange, ENDLESS_PATIENCE_MS, ENDLESS_ROUND, ENDLESS_WINDOW};
use net::start::nic;
use net::virtio_net::RX_BUF_LEN;

guest_rt::guest!("net-pair", main);

/// NIC `nth`, named on the serial port.
fn exchange(nth: usize) -> Exchange {
    let net = nic(nth, RX_BUF_LEN);
    println!("net: nic{} {}", nth, net);
    Exchange::new(net)
}

fn main() -> ! {
    clock::start();
    let mut x = [exchange(0), exchange(1)];
    let mut n = 1u64;
    loop {
        for pinger in 0..2 {
            let (a, b) = x.split_at_mut(1);
            let (p, answerer) = if pinger == 0 {
                (&mut a[0], &mut b[0])
            } else {
                (&mut b[0], &mut a[0])
            };
            let r = p.round_beside(
                ENDLESS_ROUND,
                ENDLESS_WINDOW,
                ENDLESS_PATIENCE_MS,
                Some(answerer),
            );
            r.print(format_args!("nic{} round {}", pinger, n));
        }
        n += 1;
    }
}
