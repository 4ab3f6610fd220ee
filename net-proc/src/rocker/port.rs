//! A switch's ports ([`Member`]): fd-backed [`Port`]s, the trait a NIC's
//! queues use too — a netdev of [`crate::nics`] (a TAP the broker
//! opened), or in tests an [`FdPort`] —, and guest NICs on switch port
//! netdevs ([`NicPort`], ring to ring). On an fd port the switch uses
//! queue 0 and bare Ethernet frames: [`recv_frame`] and [`send_frame`]
//! take the vnet header off and put a zeroed one on when the port
//! carries one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::nic_port::NicPort;
use crate::port::Port;
use crate::tap::VNET_HDR_LEN;

/// One port of a switch.
#[derive(Clone)]
pub enum Member {
    /// An fd the switch thread polls (a TAP).
    Fd(Arc<dyn Port>),
    /// A guest NIC's switch port: its tx worker forwards, its rx ring is
    /// filled directly.
    Nic(Arc<NicPort>),
}

/// Receives one bare frame from `port` into `buf` (call after its
/// `rx_fd(0)` polled readable).
pub fn recv_frame(port: &dyn Port, buf: &mut [u8]) -> io::Result<usize> {
    let n = port.recv(0, buf)?;
    if !port.vnet_hdr() {
        return Ok(n);
    }
    // No offloads are enabled on a switch's TAP (TUNSETOFFLOAD 0), so
    // the header carries nothing the frame needs.
    let n = n.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "frame shorter than its vnet header",
        )
    })?;
    buf.copy_within(VNET_HDR_LEN..VNET_HDR_LEN + n, 0);
    Ok(n)
}

/// Sends one bare frame out of `port`.
pub fn send_frame(port: &dyn Port, frame: &[u8]) -> io::Result<usize> {
    if !port.vnet_hdr() {
        return port.send(0, frame);
    }
    let mut out = Vec::with_capacity(VNET_HDR_LEN + frame.len());
    out.resize(VNET_HDR_LEN, 0);
    out.extend_from_slice(frame);
    Ok(port.send(0, &out)?.saturating_sub(VNET_HDR_LEN))
}

/// Receives one frame from `port` into `buf` after its first
/// [`VNET_HDR_LEN`] bytes (the header slot: a port with a vnet header
/// reads its header there); returns the bare frame's length, which sits
/// at `buf[VNET_HDR_LEN..]`. No copy: the forwarding path's reader.
pub fn recv_slotted(port: &dyn Port, buf: &mut [u8]) -> io::Result<usize> {
    if !port.vnet_hdr() {
        return port.recv(0, &mut buf[VNET_HDR_LEN..]);
    }
    port.recv(0, buf)?.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "frame shorter than its vnet header",
        )
    })
}

/// Sends the bare frame of `len` bytes at `buf[VNET_HDR_LEN..]` out of
/// `port`, with the header slot (zeroed by the caller) in front when the
/// port carries vnet headers. No allocation, no copy.
pub fn send_slotted(port: &dyn Port, buf: &[u8], len: usize) -> io::Result<usize> {
    if !port.vnet_hdr() {
        return port.send(0, &buf[VNET_HDR_LEN..VNET_HDR_LEN + len]);
    }
    Ok(port
        .send(0, &buf[..VNET_HDR_LEN + len])?
        .saturating_sub(VNET_HDR_LEN))
}

/// An fd where one read or write is one bare frame (a datagram socket, a
/// TAP without vnet header): a one-queue [`Port`].
#[derive(Debug)]
pub struct FdPort {
    fd: OwnedFd,
}

impl FdPort {
    /// Takes over `fd` and makes it non-blocking (readers read until
    /// `WouldBlock`; a peer that does not read loses frames, as on a
    /// wire, instead of stopping the writer).
    pub fn new(fd: OwnedFd) -> FdPort {
        let nonblocking = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).and_then(|fl| {
            let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(fl))
        });
        if let Err(e) = nonblocking {
            tracing::warn!("a switch port's fd stays blocking: {e}");
        }
        FdPort { fd }
    }
}

impl Port for FdPort {
    fn vnet_hdr(&self) -> bool {
        false
    }

    fn queues(&self) -> usize {
        1
    }

    fn set_offloads(&self, _flags: u32) -> io::Result<()> {
        // Without a vnet header no offload can be passed: nothing to set.
        Ok(())
    }

    fn rx_fd(&self, _queue: usize) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn send(&self, _queue: usize, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.fd, frame).map_err(io::Error::from)
    }

    fn recv(&self, _queue: usize, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.fd.as_fd(), buf).map_err(io::Error::from)
    }
}
