//! `--standalone`: serve one vhost-user-net NIC without a broker, on a
//! listening unix socket, over a TAP net-proc opens itself (tests and
//! interop with other frontends, e.g. QEMU's `-netdev vhost-user`). Only
//! here does net-proc open anything; like block-proc's standalone mode it
//! runs unsandboxed (it is never started by the broker).
//!
//! ```text
//! net-proc --standalone --socket PATH --tap IFNAME [--mac XX:XX:XX:XX:XX:XX]
//!          [--mtu N] [--no-vnet-hdr]
//! ```
//! The TAP is created if it does not exist (needs CAP_NET_ADMIN) or
//! attached to. The socket is made mode 0600 and a peer running as
//! another user (not root) is hung up on (`SO_PEERCRED`). One frontend is
//! served at a time; when it disconnects, the next one is taken.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use vhost_backend_common::export::peer_allowed;

use crate::tap::{Tap, TapError};
use crate::vhost::backend::Nic;
use crate::vhost::export::Export;
use crate::vhost::stats::Counters;
use crate::virtio_net::NetConfig;

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFF_TAP`.
const IFF_TAP: u16 = 0x0002;
/// `IFF_NO_PI`.
const IFF_NO_PI: u16 = 0x1000;
/// `IFF_VNET_HDR`.
const IFF_VNET_HDR: u16 = 0x4000;
/// QEMU's default MAC for the first NIC.
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Errors of standalone mode.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
    /// `/dev/net/tun` could not be opened or configured.
    #[error("could not configure /dev/net/tun ({0})")]
    OpenTap(String, #[source] std::io::Error),
    /// The TAP was refused.
    #[error("TAP {0}")]
    Tap(String, #[source] TapError),
    /// The socket could not be created.
    #[error("cannot listen on {0}")]
    Socket(String, #[source] std::io::Error),
    /// The export could not start.
    #[error("cannot start the NIC")]
    Export(#[source] std::io::Error),
}

/// Result of standalone mode.
pub type Result<T> = std::result::Result<T, StandaloneError>;

/// Parsed command line.
#[derive(Debug, PartialEq)]
struct Args {
    socket: String,
    tap: String,
    mac: [u8; 6],
    mtu: Option<u16>,
    vnet_hdr: bool,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse(args: &[String]) -> Result<Args> {
    let usage = |m: &str| StandaloneError::Usage(m.to_string());
    let mut a = Args {
        socket: String::new(),
        tap: String::new(),
        mac: DEFAULT_MAC,
        mtu: None,
        vnet_hdr: true,
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(&format!("{x} needs a value")))
        };
        match x.as_str() {
            "--standalone" => {}
            "--socket" => a.socket = val()?,
            "--tap" => a.tap = val()?,
            "--mac" => {
                let v = val()?;
                a.mac = parse_mac(&v).ok_or_else(|| usage(&format!("--mac {v}: not a MAC")))?
            }
            "--mtu" => {
                let v = val()?;
                let m: u16 = v.parse().map_err(|_| usage("--mtu N"))?;
                if m < 68 {
                    return Err(usage("--mtu: at least 68"));
                }
                a.mtu = Some(m)
            }
            "--no-vnet-hdr" => a.vnet_hdr = false,
            other => return Err(usage(&format!("unknown argument {other}"))),
        }
    }
    if a.socket.is_empty() || a.tap.is_empty() {
        return Err(usage("--socket PATH and --tap IFNAME are required"));
    }
    if a.tap.len() > 15 {
        return Err(usage("--tap: interface names have at most 15 bytes"));
    }
    Ok(a)
}

/// Opens (or creates) TAP `name` with one queue.
fn open_tap(name: &str, vnet_hdr: bool) -> Result<OwnedFd> {
    let fail = |e| StandaloneError::OpenTap(name.to_owned(), e);
    // SAFETY: open(2) of a constant, NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: 16-byte name, then the flags (short), padded to 40.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let mut flags = IFF_TAP | IFF_NO_PI;
    if vnet_hdr {
        flags |= IFF_VNET_HDR;
    }
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one 40-byte ifreq, which outlives
    // the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Listens on `path` with mode 0600, bound under a temporary name and
/// renamed into place so the socket never appears with a wider mode.
fn private_listener(path: &str) -> Result<UnixListener> {
    let fail = |e| StandaloneError::Socket(path.to_owned(), e);
    let tmp = format!("{path}.{}.tmp", std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(fail)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(listener)
}

/// Runs standalone mode until killed.
pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let fd = open_tap(&a.tap, a.vnet_hdr)?;
    let tap = Tap::new(vec![fd], a.vnet_hdr).map_err(|e| StandaloneError::Tap(a.tap.clone(), e))?;
    let nic = Arc::new(Nic {
        id: "standalone".into(),
        cfg: Mutex::new(NetConfig {
            mac: a.mac,
            link_up: true,
            queue_pairs: 1,
            mtu: a.mtu,
            vnet_hdr: a.vnet_hdr,
        }),
        link_up: Arc::new(AtomicBool::new(true)),
        stats: Arc::new(Counters::default()),
        port: crate::port::Netdev::Port(Arc::new(tap)),
        events: None,
    });
    let listener = private_listener(&a.socket)?;
    let export = Export::start(nic).map_err(StandaloneError::Export)?;
    tracing::info!("serving TAP {} on {}", a.tap, a.socket);
    for conn in listener.incoming() {
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept on {}: {e}", a.socket);
                continue;
            }
        };
        match peer_allowed(&s) {
            Ok(true) => {
                if let Err(e) = export.attach(s) {
                    tracing::warn!("cannot attach a connection: {e}");
                }
            }
            Ok(false) => tracing::warn!("a peer of another user was refused"),
            Err(e) => tracing::warn!("cannot check a connection's peer, refused: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn standalone_args_parse_with_defaults_and_refuse_bad_values() {
        let a = parse(&args(&[
            "--standalone",
            "--socket",
            "/tmp/s",
            "--tap",
            "t0",
        ]))
        .unwrap();
        assert_eq!(a.mac, DEFAULT_MAC);
        assert!(a.vnet_hdr);
        let a = parse(&args(&[
            "--socket",
            "/s",
            "--tap",
            "t0",
            "--mac",
            "02:00:00:00:00:0a",
            "--mtu",
            "1400",
        ]))
        .unwrap();
        assert_eq!(a.mac, [2, 0, 0, 0, 0, 10]);
        assert_eq!(a.mtu, Some(1400));
        for bad in [
            &["--socket", "/s"][..],
            &["--tap", "t0"],
            &["--socket", "/s", "--tap", "t0", "--mac", "zz"],
            &["--socket", "/s", "--tap", "t0", "--mac", "02:00:00:00:00"],
            &["--socket", "/s", "--tap", "t0", "--mtu", "10"],
            &["--socket", "/s", "--tap", "a-name-far-too-long"],
            &["--socket", "/s", "--tap", "t0", "--bogus"],
            &["--socket"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
