//! What a NIC backend's queues exchange frames with: a netdev
//! ([`Netdev`]). A [`Port`] is an fd-backed one — a TAP
//! ([`crate::tap::Tap`]) — and the rocker switches take TAPs as their
//! ports through the same trait (`crate::rocker::port`). A switch port
//! netdev (`x-switch-port`, [`crate::rocker::nic_port::NicPort`]) makes
//! the NIC itself a port of the switch listing it: frames go ring to
//! ring, with no fd and no syscall per frame.
//!
//! Frames cross a port with the 12-byte vnet header in front when
//! [`Port::vnet_hdr`] is true, bare otherwise.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::rocker::nic_port::NicPort;

/// A netdev as a NIC sees it.
#[derive(Clone)]
pub enum Netdev {
    /// An fd-backed port (a TAP).
    Port(Arc<dyn Port>),
    /// A switch port: the NIC is a port of the switch that lists it.
    Switch(Arc<NicPort>),
}

impl Netdev {
    /// Frames carry a vnet header with offloads (a switch port has none).
    pub fn vnet_hdr(&self) -> bool {
        match self {
            Netdev::Port(p) => p.vnet_hdr(),
            Netdev::Switch(_) => false,
        }
    }

    /// Number of queue pairs it can serve.
    pub fn queues(&self) -> usize {
        match self {
            Netdev::Port(p) => p.queues(),
            Netdev::Switch(_) => 1,
        }
    }

    /// Which offloads (`TUN_F_*`) the guest accepts (a switch port has
    /// none to pass: no vnet header, no offload offered).
    pub fn set_offloads(&self, flags: u32) -> io::Result<()> {
        match self {
            Netdev::Port(p) => p.set_offloads(flags),
            Netdev::Switch(_) => Ok(()),
        }
    }
}

/// A place frames go to and come from.
pub trait Port: Send + Sync {
    /// Frames carry a 12-byte virtio net header (offloads possible).
    fn vnet_hdr(&self) -> bool;
    /// Number of queues (frames of queue pair `i` use queue `i % queues()`).
    fn queues(&self) -> usize;
    /// Which offloads (`TUN_F_*`) the receiving side (the guest) accepts.
    fn set_offloads(&self, flags: u32) -> io::Result<()>;
    /// An fd that polls readable when [`Port::recv`] has a frame for
    /// queue `queue`.
    fn rx_fd(&self, queue: usize) -> BorrowedFd<'_>;
    /// Sends one frame (non-blocking; `WouldBlock` when full).
    fn send(&self, queue: usize, frame: &[u8]) -> io::Result<usize>;
    /// Receives one frame into `buf` (non-blocking; `WouldBlock` when none).
    fn recv(&self, queue: usize, buf: &mut [u8]) -> io::Result<usize>;
}
