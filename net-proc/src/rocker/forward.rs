//! A running switch: its ports, its bridge, and the forwarding thread that
//! polls every port, runs each frame through the pipeline and writes it to
//! the output ports; it ages learned entries once a second. A readable
//! port is read until it is empty (up to [`BATCH`] frames, so one busy
//! port does not starve the others), into one buffer with a header slot
//! in front: per frame one read, one write per output port, no allocation.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::rocker::PortState;
use ipc_proto::warn_limited;

use super::bridge::Bridge;
use super::port::{recv_slotted, send_slotted};
use crate::port::Port;
use crate::tap::VNET_HDR_LEN;

/// How long one poll waits (the stop flag and ageing are checked between).
const TICK: Duration = Duration::from_millis(100);
/// How often learned entries are aged.
const AGE_EVERY: Duration = Duration::from_secs(1);
/// Largest frame read (jumbo frames included).
const MAX_FRAME: usize = 65_536;
/// Frames read from one port before the thread polls again.
const BATCH: usize = 64;

/// What the forwarding thread and the queries share.
struct Shared {
    bridge: Mutex<Bridge>,
    ports: Vec<Arc<dyn Port>>,
    link_up: Vec<AtomicBool>,
    stop: AtomicBool,
}

/// A switch forwarding on its own thread; dropping it stops the thread.
pub struct Running {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts forwarding between `ports` (pport 1 is `ports[0]`).
    pub fn start(
        name: &str,
        bridge: Bridge,
        ports: Vec<Arc<dyn Port>>,
    ) -> std::io::Result<Running> {
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
            .link_up
            .iter()
            .map(|l| PortState {
                enabled: true,
                link_up: l.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
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
    let mut out = Vec::new();
    let mut last_age = Instant::now();
    let mut pfds: Vec<libc::pollfd> = s
        .ports
        .iter()
        .map(|p| libc::pollfd {
            fd: p.rx_fd(0).as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
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
        for (i, pfd) in pfds.iter_mut().enumerate() {
            let revents = std::mem::take(&mut pfd.revents);
            if revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    if !receive(s, i, &mut buf, &mut out, now) {
                        break;
                    }
                }
            } else if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                s.link_up[i].store(false, Ordering::Relaxed);
                // A TAP whose interface is gone: do not spin on it.
                pfd.events = 0;
            }
        }
        if now.duration_since(last_age) >= AGE_EVERY {
            last_age = now;
            lock(&s.bridge).age(now);
        }
    }
}

/// Reads one frame from port index `i` and forwards it; false when the
/// port had none (or failed).
fn receive(s: &Shared, i: usize, buf: &mut [u8], out: &mut Vec<u32>, now: Instant) -> bool {
    let len = match recv_slotted(s.ports[i].as_ref(), buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
        Err(e) => {
            s.link_up[i].store(false, Ordering::Relaxed);
            warn_limited!("rocker: port {} read failed: {e}", i + 1);
            return false;
        }
    };
    s.link_up[i].store(true, Ordering::Relaxed);
    out.clear();
    {
        let frame = &buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
        if let Some(v) = lock(&s.bridge).forward(frame, i as u32 + 1, now) {
            out.extend_from_slice(&v.out_pports);
        }
    }
    // No offloads on a switch's ports: an all-zero header.
    buf[..VNET_HDR_LEN].fill(0);
    for &pport in out.iter() {
        let Some(o) = (pport as usize).checked_sub(1) else {
            continue;
        };
        let Some(port) = s.ports.get(o) else {
            continue;
        };
        match send_slotted(port.as_ref(), buf, len) {
            Ok(_) => s.link_up[o].store(true, Ordering::Relaxed),
            // The interface is down (EIO) or its queue full: dropped, as
            // on a wire.
            Err(e) => {
                s.link_up[o].store(e.raw_os_error() != Some(libc::EIO), Ordering::Relaxed);
            }
        }
    }
    true
}
