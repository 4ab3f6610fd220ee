//! A switch port: something that sends a frame and yields the frames it
//! receives. Today a TAP fd the broker opened (`IFF_TAP|IFF_NO_PI`, so a
//! read or write is exactly one Ethernet frame); a guest NIC's backend
//! queue can implement the same trait.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A place frames go to and come from.
pub trait SwitchPort: Send + Sync {
    /// Polls readable when [`SwitchPort::recv`] has a frame.
    fn rx_fd(&self) -> BorrowedFd<'_>;
    /// Receives one frame into `buf` (call after `rx_fd` polled readable).
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
}

/// A TAP netdev's fd, without packet information or vnet header.
#[derive(Debug)]
pub struct TapPort {
    file: File,
}

impl TapPort {
    /// Takes over a TAP fd.
    pub fn new(fd: OwnedFd) -> TapPort {
        TapPort {
            file: File::from(fd),
        }
    }
}

impl SwitchPort for TapPort {
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
