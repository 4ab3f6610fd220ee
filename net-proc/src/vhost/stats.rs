//! A NIC's counters, shared by its queue workers and read by `QueryStats`.

use std::sync::atomic::{AtomicU64, Ordering};

use ipc_proto::net::NicStats;

/// Live counters (relaxed atomics: each is a monotonic count).
#[derive(Default)]
pub struct Counters {
    /// Frames sent to the port.
    pub tx_packets: AtomicU64,
    /// Bytes sent to the port (without the vnet header).
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped.
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the guest (without the vnet header).
    pub rx_bytes: AtomicU64,
    /// Frames from the port dropped.
    pub rx_dropped: AtomicU64,
    /// Malformed descriptor chains.
    pub bad_chains: AtomicU64,
}

/// Adds `n` to `c`.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// A snapshot.
    pub fn snapshot(&self) -> NicStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NicStats {
            tx_packets: r(&self.tx_packets),
            tx_bytes: r(&self.tx_bytes),
            tx_dropped: r(&self.tx_dropped),
            rx_packets: r(&self.rx_packets),
            rx_bytes: r(&self.rx_bytes),
            rx_dropped: r(&self.rx_dropped),
            bad_chains: r(&self.bad_chains),
        }
    }
}
