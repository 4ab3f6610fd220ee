//! `net-loop`: rounds of pings forever (see `net`), a line of counts after
//! each (`net: round N: sent .. received .. lost .. duplicate .. corrupt
//! ..`); for chaos tests that kill the network backend meanwhile (the
//! rounds during a kill lose pings; the later ones must not). Ends with
//! `VERDICT: FAIL net-loop` only if the NIC cannot be set up.

#![no_std]
#![no_main]

use guest_rt::println;
use net::clock;
use net::exchange::{Exchange, ENDLESS_PATIENCE_MS, ENDLESS_ROUND, ENDLESS_WINDOW};
use net::start::nic;
use net::virtio_net::RX_BUF_LEN;

guest_rt::guest!("net-loop", main);

fn main() -> ! {
    clock::start();
    let net = nic(0, RX_BUF_LEN);
    println!("net: {}", net);
    let mut x = Exchange::new(net);
    let mut n = 1u64;
    loop {
        let r = x.round(ENDLESS_ROUND, ENDLESS_WINDOW, ENDLESS_PATIENCE_MS);
        r.print(format_args!("round {}", n));
        n += 1;
    }
}
