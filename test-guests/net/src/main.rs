//! `net`: finds the first virtio-net device (Bulkhead's slots, then QEMU
//! microvm's transports), sends a round of pings (custom EtherType with
//! sequence numbers, see `frame.rs`) that a peer echoes, answers the
//! peers' pings, then watches the link: when it goes down it sends pings
//! that must not be answered, and once it is up again a second round.
//! Reports the counts and `VERDICT: PASS net` when no ping of either
//! round was lost, duplicated or damaged, none was answered while the
//! link was down and every link change came with a config interrupt.

#![no_std]
#![no_main]

use guest_rt::println;
use net::exchange::{Exchange, Stats};
use net::start::nic;
use net::virtio_net::RX_BUF_LEN;
use net::{clock, frame};

/// Pings per round.
const ROUND: u32 = 200;
/// Pings outstanding at most.
const WINDOW: u32 = 8;
/// How long an unanswered ping holds the window (ms).
const PATIENCE_MS: u64 = 3000;
/// How long the guest waits for the link to go down, then up (ms).
const LINK_WAIT_MS: u64 = 60_000;
/// Pings sent while the link is down.
const DOWN_PINGS: u32 = 5;

guest_rt::guest!("net", main);

fn main() -> ! {
    clock::start();
    let net = nic(0, RX_BUF_LEN);
    println!(
        "net: {}, link {}, ethertype {:#06x}",
        net,
        if net.link_up() { "up" } else { "down" },
        frame::ETHERTYPE
    );
    let mut x = Exchange::new(net);
    let mut total = Stats::default();
    let r1 = x.round(ROUND, WINDOW, PATIENCE_MS);
    r1.print("round 1");
    total.add(&r1);
    println!("net: watching the link");
    let mut down = Stats::default();
    if x.wait_link(false, LINK_WAIT_MS) {
        down = x.round(DOWN_PINGS, DOWN_PINGS, 1000);
        down.print("while the link was down");
        if !x.wait_link(true, LINK_WAIT_MS) {
            guest_rt::fail!("the link stayed down");
        }
        let r2 = x.round(ROUND, WINDOW, PATIENCE_MS);
        r2.print("round 2");
        total.add(&r2);
    } else {
        println!("net: no link change seen");
    }
    total.print("total");
    println!(
        "net: answered {} pings of peers, {} other frames, {} link changes, {} packets in several buffers, rx errors {}",
        x.answered,
        x.other,
        x.link_changes,
        x.net().merged,
        x.net().rx_errors
    );
    if total.lost != 0 || total.duplicate != 0 || total.corrupt != 0 {
        guest_rt::fail!(
            "lost {} duplicate {} corrupt {}",
            total.lost,
            total.duplicate,
            total.corrupt
        );
    }
    if down.received != 0 {
        guest_rt::fail!("{} pings answered while the link was down", down.received);
    }
    if x.silent_link_changes != 0 {
        guest_rt::fail!(
            "{} link changes without a config interrupt",
            x.silent_link_changes
        );
    }
    guest_rt::exit::pass()
}
