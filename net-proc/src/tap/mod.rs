//! A TAP netdev as net-proc holds it: the fds the broker opened on
//! `/dev/net/tun` (one per queue of a multiqueue TAP), set non-blocking,
//! their vnet header size and offloads set with ioctls on the fds (net-proc
//! has no filesystem and opens nothing).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::port::Port;

/// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ` (`_IOW('T', 216, int)`).
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNGETIFF` (`_IOR('T', 210, unsigned int)`), to check an fd is a TAP.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// `TUN_F_CSUM`: the peer accepts partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUN_F_UFO`.
pub const TUN_F_UFO: u32 = 0x10;

/// `IFF_TAP`.
const IFF_TAP: u16 = 0x0002;
/// `IFF_VNET_HDR`.
const IFF_VNET_HDR: u16 = 0x4000;

/// The vnet header net-proc uses on a TAP with `IFF_VNET_HDR`: the 12-byte
/// `virtio_net_hdr_mrg_rxbuf` of VIRTIO 1.0, the guest's own header.
pub const VNET_HDR_LEN: usize = 12;

/// Errors setting up a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No fd given.
    #[error("a TAP netdev needs at least one fd")]
    NoFd,
    /// The fd is not a TAP (`TUNGETIFF` failed or says TUN).
    #[error("fd is not a TAP device")]
    NotTap,
    /// The TAP was not opened with `IFF_VNET_HDR` although the broker said so.
    #[error("TAP was opened without IFF_VNET_HDR")]
    NoVnetHdr,
    /// An ioctl or fcntl failed.
    #[error("{what}: {err}")]
    Sys {
        /// The call.
        what: &'static str,
        /// The error.
        err: io::Error,
    },
}

fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, val: libc::c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ takes a pointer to an int that outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &val as *const libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One TAP queue fd.
pub struct TapQueue {
    fd: OwnedFd,
}

impl TapQueue {
    fn new(fd: OwnedFd, vnet_hdr: bool) -> Result<Self, TapError> {
        // TUNGETIFF fills a whole `struct ifreq` (its request number says
        // `unsigned int`, but the kernel copies the ifreq): name, then the
        // flags at offset 16.
        let mut ifr = [0u8; 40];
        // SAFETY: the kernel writes at most sizeof(struct ifreq) = 40 bytes
        // into `ifr`, which outlives the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF as _, ifr.as_mut_ptr()) };
        if r < 0 {
            return Err(TapError::NotTap);
        }
        let flags = u16::from_ne_bytes([ifr[16], ifr[17]]);
        if flags & IFF_TAP == 0 {
            return Err(TapError::NotTap);
        }
        if vnet_hdr && flags & IFF_VNET_HDR == 0 {
            return Err(TapError::NoVnetHdr);
        }
        let fl =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| TapError::Sys {
                what: "F_GETFL",
                err: e.into(),
            })?;
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(|e| TapError::Sys {
            what: "F_SETFL",
            err: e.into(),
        })?;
        if vnet_hdr {
            ioctl_int(fd.as_fd(), TUNSETVNETHDRSZ, VNET_HDR_LEN as libc::c_int).map_err(|err| {
                TapError::Sys {
                    what: "TUNSETVNETHDRSZ",
                    err,
                }
            })?;
        }
        Ok(TapQueue { fd })
    }
}

/// A TAP netdev.
pub struct Tap {
    queues: Vec<TapQueue>,
    vnet_hdr: bool,
}

impl Tap {
    /// A TAP over `fds` (one per queue), checked to be TAPs, set
    /// non-blocking, their vnet header size set when `vnet_hdr`.
    pub fn new(fds: Vec<OwnedFd>, vnet_hdr: bool) -> Result<Self, TapError> {
        if fds.is_empty() {
            return Err(TapError::NoFd);
        }
        let queues = fds
            .into_iter()
            .map(|fd| TapQueue::new(fd, vnet_hdr))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tap { queues, vnet_hdr })
    }
}

impl Port for Tap {
    fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn queues(&self) -> usize {
        self.queues.len()
    }

    fn set_offloads(&self, flags: u32) -> io::Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        for q in &self.queues {
            // SAFETY: TUNSETOFFLOAD takes its flags by value.
            let r = unsafe {
                libc::ioctl(
                    q.fd.as_raw_fd(),
                    TUNSETOFFLOAD as _,
                    libc::c_ulong::from(flags),
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn rx_fd(&self, queue: usize) -> BorrowedFd<'_> {
        self.queues[queue % self.queues.len()].fd.as_fd()
    }

    fn send(&self, queue: usize, frame: &[u8]) -> io::Result<usize> {
        let fd = self.rx_fd(queue);
        nix::unistd::write(fd, frame).map_err(io::Error::from)
    }

    fn recv(&self, queue: usize, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.rx_fd(queue);
        nix::unistd::read(fd, buf).map_err(io::Error::from)
    }
}
