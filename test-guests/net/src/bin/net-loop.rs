//! `net-loop`: rounds of pings forever (see `net`), a line of counts after
//! each (`net: round N: sent .. received .. lost .. duplicate .. corrupt
//! ..`); for chaos tests that kill the network backend meanwhile (the
//! rounds during a kill lose pings; the later ones must not). Ends with
//! `VERDICT: FAIL net-loop` only if the NIC cannot be set up.

#![no_std]
#![no_main]

use guest_rt::println;
use net::clock;
use net::exchange::Exchange;
use net::virtio_net::Net;

const ROUND: u32 = 50;
const WINDOW: u32 = 8;
const PATIENCE_MS: u64 = 1000;

guest_rt::guest!("net-loop", main);

fn main() -> ! {
    clock::start();
    let net = match Net::setup() {
        Ok(n) => n,
        Err(e) => guest_rt::fail!("virtio-net set-up: {:?}", e),
    };
    let m = net.mac;
    println!(
        "net: virtio-net at {:#x}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, features {:#x}",
        net.base(),
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        net.features
    );
    let mut x = Exchange::new(net);
    let mut n = 1u64;
    loop {
        let r = x.round(ROUND, WINDOW, PATIENCE_MS);
        println!(
            "net: round {}: sent {} received {} lost {} duplicate {} corrupt {} late {}",
            n, r.sent, r.received, r.lost, r.duplicate, r.corrupt, r.late
        );
        n += 1;
    }
}
