//! TAP devices as the broker opens them for net-proc (which opens
//! nothing): `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! (the header left out with `vnet_hdr=off`)
//! (`IFF_MULTI_QUEUE` and one fd per queue when `queues` > 1), or an fd
//! the user passed, checked to be a TAP.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipc_proto::FlatError;

/// `TUNSETIFF`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNGETIFF` (fills a whole `struct ifreq`).
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const IFF_MULTI_QUEUE: u16 = 0x0100;

/// `struct ifreq`: the name, then a union whose first member we use.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    pad: [u8; 22],
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    let n = name.len().min(15);
    r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    r
}

fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Opens `queues` queues of TAP `ifname` (`IFF_VNET_HDR` if `vnet_hdr`) (created if it does not exist;
/// the kernel picks `tap%d` when `ifname` is empty). Returns the fds and
/// the interface's name. QEMU's message on failure.
pub fn open_with(
    ifname: &str,
    queues: u16,
    vnet_hdr: bool,
) -> Result<(Vec<OwnedFd>, String), FlatError> {
    if ifname.len() > 15 {
        return Err(FlatError::generic(format!(
            "could not configure /dev/net/tun ({ifname}): Invalid argument"
        )));
    }
    let mut fds = Vec::new();
    let mut name = ifname.to_owned();
    for _ in 0..queues.max(1) {
        // SAFETY: open(2) of a constant, NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(FlatError::generic(format!(
                "could not open /dev/net/tun: {}",
                strerror(&e)
            )));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut r = ifreq(&name);
        r.flags = IFF_TAP | IFF_NO_PI;
        if vnet_hdr {
            r.flags |= IFF_VNET_HDR;
        }
        if queues > 1 {
            r.flags |= IFF_MULTI_QUEUE;
        }
        // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut r) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(FlatError::generic(format!(
                "could not configure /dev/net/tun ({name}): {}",
                strerror(&e)
            )));
        }
        let end = r.name.iter().position(|b| *b == 0).unwrap_or(16);
        name = String::from_utf8_lossy(&r.name[..end]).into_owned();
        fds.push(fd);
    }
    Ok((fds, name))
}

/// Checks that `fd` (passed by the user) is a TAP; returns whether it has
/// `IFF_VNET_HDR` and its interface name.
pub fn check_fd(fd: &OwnedFd) -> Result<(bool, String), FlatError> {
    let mut r = ifreq("");
    // SAFETY: TUNGETIFF writes one `struct ifreq` into `r`, which outlives
    // the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF as _, &mut r) };
    if rc < 0 || r.flags & IFF_TAP == 0 {
        return Err(FlatError::generic(
            "The file descriptor passed is not a TAP device",
        ));
    }
    let end = r.name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok((
        r.flags & IFF_VNET_HDR != 0,
        String::from_utf8_lossy(&r.name[..end]).into_owned(),
    ))
}
