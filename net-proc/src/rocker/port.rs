//! A switch's ports are [`Port`]s, the trait a NIC's queues use too: a
//! netdev of [`crate::nics`] (a TAP the broker opened), or in tests an
//! [`FdPort`]. The switch uses queue 0 and bare Ethernet frames:
//! [`recv_frame`] and [`send_frame`] take the vnet header off and put a
//! zeroed one on when the port carries one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::port::Port;
use crate::tap::VNET_HDR_LEN;

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

/// An fd where one read or write is one bare frame (a datagram socket, a
/// TAP without vnet header): a one-queue [`Port`].
#[derive(Debug)]
pub struct FdPort {
    fd: OwnedFd,
}

impl FdPort {
    /// Takes over `fd`.
    pub fn new(fd: OwnedFd) -> FdPort {
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
