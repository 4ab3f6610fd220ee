//! A running switch: its ports, its bridge, and the forwarding thread that
//! polls every port, runs each frame through the pipeline and writes it to
//! the output ports; it ages learned entries once a second.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::rocker::PortState;
use ipc_proto::warn_limited;

use super::bridge::Bridge;
use super::port::{recv_frame, send_frame};
use crate::port::Port;

/// How long one poll waits (the stop flag and ageing are checked between).
const TICK: Duration = Duration::from_millis(100);
/// How often learned entries are aged.
const AGE_EVERY: Duration = Duration::from_secs(1);
/// Largest frame read (jumbo frames included).
const MAX_FRAME: usize = 65_536;

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
    let mut buf = vec![0u8; MAX_FRAME];
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
        for (i, pfd) in pfds.iter_mut().enumerate() {
            let revents = std::mem::take(&mut pfd.revents);
            if revents & libc::POLLIN != 0 {
                receive(s, i, &mut buf);
            } else if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                s.link_up[i].store(false, Ordering::Relaxed);
                // A TAP whose interface is gone: do not spin on it.
                pfd.events = 0;
            }
        }
        let now = Instant::now();
        if now.duration_since(last_age) >= AGE_EVERY {
            last_age = now;
            lock(&s.bridge).age(now);
        }
    }
}

/// Reads one frame from port index `i` and forwards it.
fn receive(s: &Shared, i: usize, buf: &mut [u8]) {
    let len = match recv_frame(s.ports[i].as_ref(), buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(e) => {
            s.link_up[i].store(false, Ordering::Relaxed);
            warn_limited!("rocker: port {} read failed: {e}", i + 1);
            return;
        }
    };
    s.link_up[i].store(true, Ordering::Relaxed);
    let frame = &buf[..len];
    let verdict = lock(&s.bridge).forward(frame, i as u32 + 1, Instant::now());
    for pport in verdict.map(|v| v.out_pports).unwrap_or_default() {
        let Some(port) = (pport as usize).checked_sub(1).and_then(|o| s.ports.get(o)) else {
            continue;
        };
        let o = pport as usize - 1;
        match send_frame(port.as_ref(), frame) {
            Ok(_) => s.link_up[o].store(true, Ordering::Relaxed),
            // The interface is down (EIO) or its queue full: dropped, as
            // on a wire.
            Err(e) => {
                s.link_up[o].store(e.raw_os_error() != Some(libc::EIO), Ordering::Relaxed);
            }
        }
    }
}
