//! A switch port: something that sends a frame and yields the frames it
//! receives, one bare Ethernet frame per call. [`NetdevPort`] is a netdev
//! of [`crate::nics`] (a TAP the broker opened) seen through the NIC
//! [`Port`] trait, its vnet header taken off and put on; [`FdPort`] is any
//! fd where one read or write is one frame (a TAP without vnet header, a
//! datagram socket in tests).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::port::Port;
use crate::tap::VNET_HDR_LEN;

/// A place frames go to and come from.
pub trait SwitchPort: Send + Sync {
    /// Polls readable when [`SwitchPort::recv`] has a frame.
    fn rx_fd(&self) -> BorrowedFd<'_>;
    /// Receives one frame into `buf` (call after `rx_fd` polled readable).
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
}

/// A netdev (its first queue) as a switch port.
pub struct NetdevPort {
    port: Arc<dyn Port>,
}

impl NetdevPort {
    /// Wraps netdev `port`.
    pub fn new(port: Arc<dyn Port>) -> NetdevPort {
        NetdevPort { port }
    }
}

impl SwitchPort for NetdevPort {
    fn rx_fd(&self) -> BorrowedFd<'_> {
        self.port.rx_fd(0)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.port.recv(0, buf)?;
        if !self.port.vnet_hdr() {
            return Ok(n);
        }
        // No offloads are enabled on a switch's TAP (TUNSETOFFLOAD 0),
        // so the header carries nothing the frame needs.
        let n = n.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "frame shorter than its vnet header",
            )
        })?;
        buf.copy_within(VNET_HDR_LEN..VNET_HDR_LEN + n, 0);
        Ok(n)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        if !self.port.vnet_hdr() {
            return self.port.send(0, frame);
        }
        let mut out = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        out.resize(VNET_HDR_LEN, 0);
        out.extend_from_slice(frame);
        Ok(self.port.send(0, &out)?.saturating_sub(VNET_HDR_LEN))
    }
}

/// An fd where one read or write is one frame.
#[derive(Debug)]
pub struct FdPort {
    file: File,
}

impl FdPort {
    /// Takes over `fd`.
    pub fn new(fd: OwnedFd) -> FdPort {
        FdPort {
            file: File::from(fd),
        }
    }
}

impl SwitchPort for FdPort {
    fn rx_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}
