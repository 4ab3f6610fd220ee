//! Port to port: frames into one port of a switch and out of another,
//! net-proc's rocker switch (two TAPs as ports, driven over its control
//! channel as the broker does) against the kernel's bridge (two veth
//! pairs in a Linux bridge). The same AF_PACKET sender writes broadcast
//! frames into the first port (the TAP's or the veth's host end) for the
//! run's time; the frames that came out of the other port are the second
//! interface's `rx_packets` (so counting costs nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_proto::net::NetRequest;
use ipc_proto::rocker::{RockerRequest, SwitchSpec};

use crate::guest::{if_stat, Run};
use crate::packet::Packet;
use crate::{frame, open_tap, Worker, ETHERTYPE};

/// Sends `len`-byte frames into `from` for `secs`; what came out of `to`.
pub fn blast(from: &str, to: &str, len: usize, secs: f64) -> Result<Run, String> {
    let sock = Packet::bind(from, ETHERTYPE)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let before = if_stat(to, "rx_packets")?;
    let start = Instant::now();
    let (s2, n2) = (stop.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        let f = frame(len, 0);
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            for _ in 0..64 {
                n += u64::from(sock.send(&f));
            }
        }
        n2.store(n, Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    // Frames still in the switch's queue come out within moments.
    std::thread::sleep(Duration::from_millis(50));
    let el = start.elapsed().as_secs_f64();
    let arrived = if_stat(to, "rx_packets")?.saturating_sub(before);
    Ok(Run {
        pps: arrived as f64 / el,
        sent: sent.load(Ordering::Relaxed),
        arrived,
    })
}

/// net-proc with switch `sw` on TAPs `a` and `b` (kept while it lives).
pub fn start_switch(net_proc: &str, a: &str, b: &str) -> Result<Worker, String> {
    let mut w = Worker::spawn(net_proc)?;
    for (id, tap) in [("pa", a), ("pb", b)] {
        let fd = open_tap(tap)?;
        w.call(
            NetRequest::AddTapNetdev {
                id: id.into(),
                vnet_hdr: true,
            },
            &[std::os::fd::AsFd::as_fd(&fd)],
        )?;
    }
    create(&mut w)?;
    Ok(w)
}

/// Creates switch `sw` on netdevs `pa` and `pb` of `w`.
pub fn create(w: &mut Worker) -> Result<(), String> {
    w.call(
        NetRequest::Rocker(RockerRequest::Create(SwitchSpec {
            name: "sw".into(),
            id: 1,
            ports: vec!["pa".into(), "pb".into()],
            ageing_secs: 300,
        })),
        &[],
    )?;
    Ok(())
}
