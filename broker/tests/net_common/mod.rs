//! Helpers of the network tests (`net_*.rs`): a TAP device on the host,
//! a host process's echo of the `net` guests' pings read and written as
//! raw frames on it (AF_PACKET), the test frames (the very source the
//! guests use) and the scenario every NIC must pass: a round of pings, the
//! link turned off (`set_link`) and on, a second round.

#![allow(dead_code)]

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::json;

use crate::common::Qmp;
use crate::disk_common::SerialLog;

/// The guests' test frames.
#[path = "../../../test-guests/net/src/frame.rs"]
pub mod frame;

/// The MAC the tests give the guest's NIC.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
/// The host side's MAC in its answers.
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Pings per round of the `net` guest.
pub const ROUND: usize = 200;

/// A TAP device, up, deleted on drop.
pub struct Tap {
    /// Interface name.
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the network tests need iproute2's ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tap {
    /// Creates TAP `bh<tag><pid>` (needs root) and sets it up.
    pub fn create(tag: &str) -> Tap {
        let name = format!("bh{tag}{}", std::process::id() % 100_000);
        assert!(name.len() < 16, "interface name {name} too long");
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        // No IPv6 chatter on the test's wire.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", &name, "up"]);
        Tap { name }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// What the host's echo saw.
#[derive(Debug, Default, Clone)]
pub struct EchoCounts {
    /// Distinct pings (source MAC, sequence number).
    pub pings: usize,
    /// Pings seen again.
    pub duplicate: usize,
    /// Frames of the test EtherType that were damaged.
    pub corrupt: usize,
    /// Test frames that arrived while the test said the link was down.
    pub while_down: usize,
}

/// A thread answering every ping that comes out of a TAP.
pub struct Echo {
    stop: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    counts: Arc<Mutex<EchoCounts>>,
    thread: Option<JoinHandle<()>>,
}

fn packet_socket(ifname: &str) -> OwnedFd {
    bound_packet_socket(ifname, frame::ETHERTYPE)
}

/// An AF_PACKET raw socket bound to `ifname` for EtherType `ethertype`
/// (`ETH_P_ALL`: every frame), with a 100 ms receive timeout.
pub fn bound_packet_socket(ifname: &str, ethertype: u16) -> OwnedFd {
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(ifindex != 0, "no interface {ifname}");
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a timeval option of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(r, 0);
    fd
}

impl Echo {
    /// Starts answering pings on `tap` with pongs from [`HOST_MAC`].
    pub fn start(tap: &Tap) -> Echo {
        let fd = packet_socket(&tap.name);
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(EchoCounts::default()));
        let (s, d, c) = (stop.clone(), down.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut buf = [0u8; 4096];
            let mut out = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                // SAFETY: recv into our buffer.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else {
                    continue;
                };
                let mut c = c.lock().unwrap();
                if d.load(Ordering::SeqCst) {
                    c.while_down += 1;
                }
                match frame::parse(&buf[..n]) {
                    frame::Parsed::Other => {}
                    frame::Parsed::Corrupt => c.corrupt += 1,
                    frame::Parsed::Test(f) if f.kind == frame::PING => {
                        if !frame::pattern_ok(f.seq, f.data) {
                            c.corrupt += 1;
                            continue;
                        }
                        if seen.insert((f.src, f.seq)) {
                            c.pings += 1;
                        } else {
                            c.duplicate += 1;
                        }
                        let len = frame::build_with(
                            &mut out,
                            f.src,
                            HOST_MAC,
                            frame::PONG,
                            f.seq,
                            f.data,
                        )
                        .unwrap();
                        // SAFETY: send from our buffer on the bound socket.
                        unsafe { libc::send(fd.as_raw_fd(), out.as_ptr().cast(), len, 0) };
                    }
                    frame::Parsed::Test(_) => {}
                }
            }
        });
        Echo {
            stop,
            down,
            counts,
            thread: Some(thread),
        }
    }

    /// From now on, count the frames that arrive as arriving while the
    /// link is down (or stop counting).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The counts so far.
    pub fn counts(&self) -> EchoCounts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drives the `net` guest through its scenario with `qmp` (QEMU's or
/// bulkhead's) and checks it: every ping of both rounds came out of the
/// TAP once and intact and was answered, `set_link n0 off` reached the
/// guest as a config interrupt with the link down, nothing left the
/// guest while it was down, and the guest's verdict is PASS.
pub fn link_scenario(qmp: &mut Qmp, serial: &SerialLog, echo: &Echo) {
    serial.wait_for("net: watching the link");
    let first = echo.counts();
    assert_eq!(first.pings, ROUND, "{first:?}\n{}", serial.text());
    echo.set_down(true);
    let r = qmp.execute("set_link", json!({"name": "n0", "up": false}));
    assert_eq!(r["return"], json!({}), "set_link off: {r}");
    serial.wait_for("net: link down (config interrupt)");
    serial.wait_for("net: while the link was down:");
    echo.set_down(false);
    let r = qmp.execute("set_link", json!({"name": "n0", "up": true}));
    assert_eq!(r["return"], json!({}), "set_link on: {r}");
    serial.wait_for("net: link up (config interrupt)");
    // The whole verdict line (a FAIL ends the wait at once): the serial
    // output may come in pieces, "VERDICT: " before the rest.
    serial.wait_for("VERDICT: PASS net");
    let text = serial.text();
    assert!(text.contains("VERDICT: PASS net"), "{text}");
    assert!(
        text.contains("net: while the link was down: sent 5 received 0"),
        "{text}"
    );
    // Long pongs overflow the guest's 1 KiB receive buffers: the device
    // merged buffers (MRG_RXBUF) and the guest put them back together.
    let merged = text
        .lines()
        .find_map(|l| {
            let (before, _) = l.split_once(" packets in several buffers")?;
            before.rsplit(' ').next()?.parse::<u32>().ok()
        })
        .unwrap_or(0);
    assert!(merged > 0, "no packet came in several buffers:\n{text}");
    let c = echo.counts();
    assert_eq!(c.pings, 2 * ROUND, "{c:?}");
    assert_eq!((c.duplicate, c.corrupt, c.while_down), (0, 0, 0), "{c:?}");
}

/// One `net-loop` round as the guest reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Round number.
    pub n: u64,
    /// Pings sent.
    pub sent: u32,
    /// Distinct pings answered.
    pub received: u32,
    /// Pings never answered.
    pub lost: u32,
    /// Answers seen twice.
    pub duplicate: u32,
    /// Damaged frames.
    pub corrupt: u32,
}

/// The `net: round N: sent S received R lost L duplicate D corrupt C ...`
/// lines of the serial log.
pub fn rounds(serial: &SerialLog) -> Vec<Round> {
    rounds_after(serial, "net: round ")
}

/// `net-pair`'s rounds where NIC `nic` pinged (`net: nicN round ...`).
pub fn nic_rounds(serial: &SerialLog, nic: usize) -> Vec<Round> {
    rounds_after(serial, &format!("net: nic{nic} round "))
}

fn rounds_after(serial: &SerialLog, prefix: &str) -> Vec<Round> {
    serial
        .text()
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix(prefix)?;
            let (n, counts) = rest.split_once(':')?;
            let w: Vec<&str> = counts.split_whitespace().collect();
            let num = |key: &str| -> Option<u32> {
                let i = w.iter().position(|x| *x == key)?;
                w.get(i + 1)?.parse().ok()
            };
            Some(Round {
                n: n.trim().parse().ok()?,
                sent: num("sent")?,
                received: num("received")?,
                lost: num("lost")?,
                duplicate: num("duplicate")?,
                corrupt: num("corrupt")?,
            })
        })
        .collect()
}

/// The pid of `broker`'s child named `comm`, if one runs.
pub fn worker_pid(broker: u32, comm: &str) -> Option<i32> {
    for t in std::fs::read_dir(format!("/proc/{broker}/task"))
        .ok()?
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in list
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let name = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if name.trim() == comm {
                return Some(c);
            }
        }
    }
    None
}
