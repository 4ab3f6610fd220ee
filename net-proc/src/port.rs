//! What a NIC backend's queues exchange frames with: a port. Today a port
//! is a TAP netdev ([`crate::tap::Tap`]). The rocker switches take their
//! ports through the same trait (`crate::rocker::port`); a NIC on a
//! switch would be a port pair behind it, the queue workers unchanged.
//!
//! Frames cross a port with the 12-byte vnet header in front when
//! [`Port::vnet_hdr`] is true, bare otherwise.

use std::io;
use std::os::fd::BorrowedFd;

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
