//! A running switch: its ports, its bridge, and the forwarding thread that
//! polls every fd port (TAP), runs each frame through the pipeline and
//! writes it to the output ports; it ages learned entries once a second.
//! A readable port is read until it is empty (up to `BATCH` frames, so
//! one busy port does not starve the others), into one buffer with a
//! header slot in front: per frame one read, one write per output TAP, no
//! allocation. Guest NIC ports ([`Member::Nic`]) are not polled: their tx
//! workers call [`Shared::forward`] themselves, and a frame for a NIC port
//! is written into its rx ring by the thread forwarding it (ring to
//! ring, the rings signalled once per batch).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::rocker::PortState;
use ipc_proto::warn_limited;

use super::bridge::Bridge;
use super::nic_port::{Pending, Uplink};
use super::port::{recv_slotted, send_slotted, Member};
use crate::tap::VNET_HDR_LEN;
use crate::vhost::body::Body;
use crate::virtio_net::HDR_LEN;

/// How long one poll waits (the stop flag and ageing are checked between).
const TICK: Duration = Duration::from_millis(100);
/// How often learned entries are aged.
const AGE_EVERY: Duration = Duration::from_secs(1);
/// Largest frame read (jumbo frames included).
const MAX_FRAME: usize = 65_536;
/// Frames read from one port before the thread polls again.
const BATCH: usize = 64;

/// Bytes of a frame the pipeline looks at (Ethernet, a VLAN tag, an IPv4
/// header: 38; the rest is never read to classify).
const CLASSIFY_LEN: usize = 64;

/// A frame entering a switch.
pub enum Frame<'a> {
    /// Contiguous: a zeroed vnet header slot ([`VNET_HDR_LEN`]) and the
    /// bare frame (read from a TAP port).
    Slotted(&'a [u8]),
    /// A guest NIC's tx chain, read where it lies, and what completes
    /// the chain (called once, after it was read and before any receiver
    /// sees the frame: see [`crate::vhost::ring::Ring::deliver`]).
    Chain(Body<'a>, &'a mut dyn FnMut()),
}

/// What a forwarding thread keeps from frame to frame (no allocation per
/// frame once grown).
#[derive(Default)]
pub struct Scratch {
    /// A guest's frame gathered for a TAP port: header slot and frame.
    buf: Vec<u8>,
    /// The output ports of the frame being forwarded.
    out: Vec<u32>,
    /// NIC ports whose rx rings this thread filled and has not signalled.
    pub pending: Pending,
}

/// What the forwarding thread, the NIC ports' tx workers and the queries
/// share.
pub struct Shared {
    bridge: Mutex<Bridge>,
    ports: Vec<Member>,
    /// Fd ports: their link as the last read or write saw it.
    link_up: Vec<AtomicBool>,
    stop: AtomicBool,
}

/// A switch forwarding on its own thread; dropping it stops the thread.
pub struct Running {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts forwarding between `ports` (pport 1 is `ports[0]`): the
    /// thread for the fd ports, and the NIC ports joined to the switch.
    pub fn start(name: &str, bridge: Bridge, ports: Vec<Member>) -> std::io::Result<Running> {
        let link_up = ports.iter().map(|_| AtomicBool::new(true)).collect();
        let shared = Arc::new(Shared {
            bridge: Mutex::new(bridge),
            ports,
            link_up,
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rocker-{name}"))
            .spawn(move || run(&s))?;
        for (index, p) in shared.ports.iter().enumerate() {
            if let Member::Nic(nic) = p {
                nic.set_uplink(Some(Uplink {
                    switch: shared.clone(),
                    index,
                }));
            }
        }
        Ok(Running {
            shared,
            thread: Some(thread),
        })
    }

    /// The bridge (its tables), locked.
    pub fn bridge(&self) -> MutexGuard<'_, Bridge> {
        lock(&self.shared.bridge)
    }

    /// Every port's state, in port order.
    pub fn ports(&self) -> Vec<PortState> {
        self.shared
            .ports
            .iter()
            .zip(&self.shared.link_up)
            .map(|(p, l)| PortState {
                enabled: true,
                link_up: match p {
                    Member::Fd(_) => l.load(Ordering::Relaxed),
                    Member::Nic(nic) => nic.link_up(),
                },
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // The NIC ports hold the switch: let go (no cycle left behind).
        for p in &self.shared.ports {
            if let Member::Nic(nic) = p {
                nic.set_uplink(None);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<Bridge>) -> MutexGuard<'_, Bridge> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The forwarding loop.
fn run(s: &Shared) {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    let mut scratch = Scratch::default();
    let mut last_age = Instant::now();
    // The fd ports polled: (index in the switch, pollfd).
    let (index, mut pfds): (Vec<usize>, Vec<libc::pollfd>) = s
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Member::Fd(port) => Some((
                i,
                libc::pollfd {
                    fd: port.rx_fd(0).as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            )),
            Member::Nic(_) => None,
        })
        .unzip();
    while !s.stop.load(Ordering::Relaxed) {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds whose fds
        // stay open (owned by `s.ports`) for the call.
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                TICK.as_millis() as libc::c_int,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                warn_limited!("rocker: poll failed: {e}");
                std::thread::sleep(TICK);
            }
            continue;
        }
        // One clock read per wake-up (learning keeps seconds).
        let now = Instant::now();
        for (&i, pfd) in index.iter().zip(pfds.iter_mut()) {
            let revents = std::mem::take(&mut pfd.revents);
            if revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    if !receive(s, i, &mut buf, now, &mut scratch) {
                        break;
                    }
                }
            } else if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                s.link_up[i].store(false, Ordering::Relaxed);
                // A TAP whose interface is gone: do not spin on it.
                pfd.events = 0;
            }
        }
        scratch.pending.flush();
        if now.duration_since(last_age) >= AGE_EVERY {
            last_age = now;
            lock(&s.bridge).age(now);
        }
    }
}

/// Reads one frame from fd port index `i` and forwards it; false when the
/// port had none (or failed).
fn receive(s: &Shared, i: usize, buf: &mut [u8], now: Instant, scratch: &mut Scratch) -> bool {
    let Member::Fd(port) = &s.ports[i] else {
        return false;
    };
    let len = match recv_slotted(port.as_ref(), buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
        Err(e) => {
            s.link_up[i].store(false, Ordering::Relaxed);
            warn_limited!("rocker: port {} read failed: {e}", i + 1);
            return false;
        }
    };
    s.link_up[i].store(true, Ordering::Relaxed);
    // No offloads on a switch's ports: an all-zero header.
    buf[..VNET_HDR_LEN].fill(0);
    s.forward(i, Frame::Slotted(&buf[..VNET_HDR_LEN + len]), now, scratch);
    true
}

impl Shared {
    /// Forwards `frame`, which came in on port index `i`. A guest's frame
    /// for one NIC port is copied from its chain straight into that NIC's
    /// rx ring; otherwise it is gathered once, its chain completed, and
    /// written to each output: into NIC ports' rx rings (remembered in
    /// `scratch.pending` for the batch's signal) and to fd ports.
    pub fn forward(&self, i: usize, frame: Frame<'_>, now: Instant, scratch: &mut Scratch) {
        let Scratch { buf, out, pending } = scratch;
        let (body, slot, mut done) = match frame {
            Frame::Slotted(f) => {
                let bare = Body::Bytes(f.get(VNET_HDR_LEN..).unwrap_or_default());
                (bare, Some(f), None)
            }
            Frame::Chain(b, d) => (b, None, Some(d)),
        };
        let mut complete = || {
            if let Some(d) = done.take() {
                d();
            }
        };
        let mut head = [0u8; CLASSIFY_LEN];
        let seen = match body {
            Body::Bytes(b) => &b[..b.len().min(CLASSIFY_LEN)],
            Body::Guest { .. } => {
                let n = body.gather(&mut head);
                &head[..n]
            }
        };
        let classified = lock(&self.bridge).forward_into(seen, i as u32 + 1, now, out);
        if classified.is_none() {
            return complete();
        }
        let port = |pport: u32| self.ports.get((pport as usize).checked_sub(1)?);
        // No offloads on a switch's ports: an all-zero header.
        let zero = [0u8; HDR_LEN];
        if let (Body::Guest { .. }, &[only]) = (body, &out[..]) {
            if let Some(Member::Nic(nic)) = port(only) {
                if nic.deliver(&zero, &body, &mut complete) {
                    pending.add(nic);
                }
                return complete();
            }
        }
        // Contiguous from here: a TAP's frame as read, a guest's gathered
        // (with a zeroed header slot in front) and its chain completed.
        let slotted: &[u8] = match slot {
            Some(f) if f.len() >= VNET_HDR_LEN => f,
            Some(_) => return,
            None => {
                let len = body.len();
                buf.clear();
                buf.resize(VNET_HDR_LEN + len, 0);
                let n = body.gather(&mut buf[VNET_HDR_LEN..]);
                complete();
                if n != len {
                    return;
                }
                buf
            }
        };
        let bytes = Body::Bytes(&slotted[VNET_HDR_LEN..]);
        for &pport in out.iter() {
            match port(pport) {
                Some(Member::Fd(p)) => {
                    let o = pport as usize - 1;
                    match send_slotted(p.as_ref(), slotted, slotted.len() - VNET_HDR_LEN) {
                        Ok(_) => self.link_up[o].store(true, Ordering::Relaxed),
                        // The interface is down (EIO) or its queue full:
                        // dropped, as on a wire.
                        Err(e) => {
                            let up = e.raw_os_error() != Some(libc::EIO);
                            self.link_up[o].store(up, Ordering::Relaxed);
                        }
                    }
                }
                Some(Member::Nic(nic)) if nic.deliver(&zero, &bytes, &mut || {}) => {
                    pending.add(nic)
                }
                Some(Member::Nic(_)) | None => {}
            }
        }
    }
}
