//! A host TAP interface for tests, and an AF_PACKET socket on it that plays
//! the host's side (it reads what the guest sent, sends what the guest
//! receives). Frames use a test EtherType so stray host traffic (IPv6
//! router solicitations...) is ignored.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The EtherType of test frames (IEEE 802 local experimental).
pub const ETHERTYPE: u16 = 0x88b5;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

/// A TAP interface; its fds (one per queue) go to net-proc.
pub struct HostTap {
    /// Interface name.
    pub name: String,
    /// Queue fds.
    pub fds: Vec<OwnedFd>,
}

/// A fresh interface name for this process.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("bh{tag}{}x{n}", std::process::id() % 100_000)
}

impl HostTap {
    /// Creates a TAP with `queues` queues (IFF_VNET_HDR when `vnet_hdr`),
    /// IPv6 off, MTU 9000, up.
    pub fn create(name: &str, queues: usize, vnet_hdr: bool) -> HostTap {
        let mut fds = Vec::new();
        for _ in 0..queues {
            // SAFETY: a plain open of a device path with a NUL-terminated name.
            let fd =
                unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            assert!(
                fd >= 0,
                "open /dev/net/tun: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` was just opened and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut r = ifreq(name);
            let mut flags = IFF_TAP | IFF_NO_PI;
            if vnet_hdr {
                flags |= IFF_VNET_HDR;
            }
            if queues > 1 {
                flags |= IFF_MULTI_QUEUE;
            }
            r.data[..2].copy_from_slice(&flags.to_ne_bytes());
            // SAFETY: TUNSETIFF reads an ifreq that outlives the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut r) };
            assert!(rc >= 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            fds.push(fd);
        }
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        set_mtu(name, 9000);
        set_up(name);
        HostTap {
            name: name.to_string(),
            fds,
        }
    }

    /// Duplicates of the queue fds (to hand to a net-proc).
    pub fn dup_fds(&self) -> Vec<OwnedFd> {
        self.fds.iter().map(|f| f.try_clone().unwrap()).collect()
    }
}

fn ctl_socket() -> OwnedFd {
    // SAFETY: socket() with constant arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0);
    // SAFETY: just created, owned here.
    unsafe { OwnedFd::from_raw_fd(s) }
}

fn set_mtu(name: &str, mtu: i32) {
    let s = ctl_socket();
    let mut r = ifreq(name);
    r.data[..4].copy_from_slice(&mtu.to_ne_bytes());
    // SAFETY: SIOCSIFMTU reads an ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU as _, &mut r) };
    assert!(rc >= 0, "SIOCSIFMTU: {}", std::io::Error::last_os_error());
}

fn set_up(name: &str) {
    let s = ctl_socket();
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut r) };
    assert!(rc >= 0);
    let mut flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
    flags |= libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: SIOCSIFFLAGS reads the ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut r) };
    assert!(rc >= 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
}

/// An AF_PACKET socket bound to one interface, test EtherType only.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Binds to `ifname`, test EtherType.
    pub fn bind(ifname: &str) -> PacketSocket {
        Self::bind_proto(ifname, ETHERTYPE)
    }

    /// Binds to `ifname`, frames of EtherType `ethertype`.
    pub fn bind_proto(ifname: &str, ethertype: u16) -> PacketSocket {
        let proto = ethertype.to_be() as i32;
        // SAFETY: socket() with constant arguments.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: just created, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: bind reads `sll`, which outlives the call, with its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
        let buf = 8 << 20;
        // SAFETY: setsockopt reads an int that outlives the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &buf as *const i32 as *const libc::c_void,
                4,
            );
        }
        PacketSocket { fd, ifindex }
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sendto reads `frame` and `sll`, both alive for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next test frame within `timeout`, or None.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on one pollfd that outlives the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r <= 0 {
                return None;
            }
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n > 0 {
                return Some(buf[..n as usize].to_vec());
            }
        }
    }
}

/// A test frame: broadcast destination, `src` source, the test EtherType,
/// `seq` then `len - 18` pattern bytes.
pub fn frame(src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}

/// The sequence number of a test frame.
pub fn seq_of(frame: &[u8]) -> Option<u32> {
    if frame.len() < 18 || frame[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes([
        frame[14], frame[15], frame[16], frame[17],
    ]))
}
