//! A virtqueue's worker thread: the tx queue of a pair moves the guest's
//! frames to the netdev, the rx queue moves a TAP's frames into the
//! guest's buffers. Chains come from `virtio-queue` (ring indexes, EVENT_IDX
//! and chain-length limits); every descriptor is checked too
//! ([`super::ring`]): its direction (tx: device-readable only, rx:
//! device-writable only), its bounds in guest memory, the chain's total
//! length (a tx chain holds at least a vnet header and at most
//! [`MAX_FRAME`] bytes), and a chain cut short by a bad `next` or a loop is
//! refused. A refused chain is returned with length 0 and counted; the
//! queue carries on.
//!
//! On a switch port (`x-switch-port`, [`Netdev::Switch`]) the tx worker
//! forwards each frame through the switch straight into the other ports
//! (another NIC's rx ring, a TAP) and signals the rings it filled once per
//! batch; the rx ring has no thread: it is handed to the switch port, and
//! the threads forwarding to it fill it.
//!
//! Stopping (GET_VRING_BASE, also for a save of the VM state) needs no
//! drain: a chain is completed (used) in the same step it is taken, and
//! the worker looks at its stop eventfd only between steps, so the avail
//! position it returns is always the used index in guest memory
//! (`tests/vring_stop.rs`). A switch port's rx ring is taken back from
//! the port under the lock every delivery holds, so the same holds there.
//!
//! Dirty logging (a migration runs, `vhost_backend_common::log`): with a
//! [`QueueLog`], every write into guest RAM is logged right after it is
//! made: rx buffers (vnet header and frame), used elements and index, the
//! notification flags / avail event. The tx side writes only the used
//! ring.
//!
//! Rx: a frame that finds no (or not enough) buffers is dropped and
//! counted (`rx_dropped`); the port is read on regardless, so one guest
//! queue that stops refilling never holds up the port or another queue.
//!
//! Per frame the worker allocates nothing (the segment lists and the
//! switch's scratch are reused), copies the frame once (on a switch port
//! from the chain straight into the receiving NIC's rx buffers, see
//! [`crate::rocker::forward`]) and makes one port syscall on a TAP, none
//! on a switch port (a long run is signalled every `SIGNAL_EVERY`
//! frames). After a batch the tx worker watches the avail ring for `POLL` before it sleeps, as block-proc's queue does
//! (see there for why only after a batch). The rx worker does not watch
//! the port: that costs a syscall per look, and on a loaded 2-core host
//! it measured slower (it takes the CPU from the sender).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use virtio_queue::QueueT;

use super::body::Body;
use super::memory::Mem;
use super::ring::{Chain, Ring, Seg};
use super::stats::{add, Counters};
use crate::port::Netdev;
use crate::rocker::forward::Scratch;
use crate::rocker::nic_port::NicPort;
use crate::virtio_net::{HDR_LEN, MAX_FRAME};
use vhost_backend_common::log::QueueLog;

/// Frames moved per wake-up before the worker looks at its other fds.
const BATCH: usize = 256;

/// How long a worker that just moved several frames watches its source
/// before it re-enables kicks and sleeps: a sender keeping the queue busy
/// adds frames within microseconds, and catching them here saves a
/// sleep, a wake-up and the driver's kick per batch. It yields while it
/// watches, so a thread woken onto this CPU runs at once.
const POLL: Duration = Duration::from_micros(32);

/// Frames a tx worker moves between two signals (its own driver's, and
/// the switch ports' whose rx rings it filled).
const SIGNAL_EVERY: usize = 64;

/// Frames moved at once after which the worker watches ([`POLL`]).
const POLL_AFTER: usize = 2;

/// Rounds over the tx ring before the worker looks at its stop fd again
/// (and, on a ring whose avail index keeps claiming entries it does not
/// hold, gives up until the next kick).
const MAX_ROUNDS: usize = 64;

/// Ring geometry in guest physical addresses.
#[derive(Debug, Clone, Copy)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// What a worker needs.
pub struct QueueParams {
    /// Virtqueue index (even: rx, odd: tx).
    pub index: u16,
    /// Ring size.
    pub size: u16,
    /// Ring addresses.
    pub addrs: RingAddrs,
    /// First avail index to process (SET_VRING_BASE).
    pub base: u16,
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    pub event_idx: bool,
    /// `VIRTIO_NET_F_MRG_RXBUF` negotiated.
    pub mrg_rxbuf: bool,
    /// Guest memory.
    pub mem: Arc<Mem>,
    /// The netdev frames go to and come from.
    pub netdev: Netdev,
    /// The NIC's link state.
    pub link_up: Arc<AtomicBool>,
    /// The NIC's counters.
    pub stats: Arc<Counters>,
    /// Kick eventfd.
    pub kick: File,
    /// Call eventfd.
    pub call: Option<File>,
    /// The dirty log, while the frontend has logging on.
    pub log: Option<QueueLog>,
}

/// A running queue: a worker thread, or an rx ring handed to a switch
/// port.
pub enum QueueWorker {
    /// A thread serves the ring.
    Thread {
        /// Wakes the thread to stop.
        stop: Arc<EventFd>,
        /// The thread; it returns the next avail index.
        handle: JoinHandle<u16>,
    },
    /// The switch port fills the ring.
    Switch {
        /// The port holding the ring.
        port: Arc<NicPort>,
        /// The ring's start, if the port lost it (it does not).
        base: u16,
    },
}

/// Errors starting a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The rings do not fit guest memory or the size is bad.
    #[error("invalid ring: {0}")]
    Ring(String),
    /// The thread or eventfd could not be created.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl QueueWorker {
    /// Checks the ring and starts serving it.
    pub fn start(mut p: QueueParams) -> Result<Self, QueueError> {
        let call = p.call.take();
        let ring = Ring::new(&p, call)?;
        if let (true, Netdev::Switch(port)) = (p.index.is_multiple_of(2), &p.netdev) {
            port.attach_rx(ring);
            return Ok(QueueWorker::Switch {
                port: port.clone(),
                base: p.base,
            });
        }
        let stop = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(io::Error::from)?,
        );
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("net-q{}", p.index))
            .spawn(move || {
                Worker {
                    ring,
                    netdev: p.netdev,
                    kick: p.kick,
                    buf: vec![0; MAX_FRAME],
                    scratch: Scratch::default(),
                }
                .run(&s)
            })?;
        Ok(QueueWorker::Thread { stop, handle })
    }

    /// Stops serving the ring; returns the next avail index to process.
    pub fn stop(self) -> u16 {
        match self {
            QueueWorker::Thread { stop, handle } => {
                let _ = stop.write(1);
                handle.join().unwrap_or(0)
            }
            QueueWorker::Switch { port, base } => port.detach_rx().unwrap_or(base),
        }
    }
}

/// Counts a tx frame of `total` bytes (vnet header included): sent, or
/// dropped (the link was down, the port failed).
fn count(stats: &Counters, sent: bool, total: usize) {
    if sent {
        add(&stats.tx_packets, 1);
        add(&stats.tx_bytes, (total - HDR_LEN) as u64);
    } else {
        add(&stats.tx_dropped, 1);
    }
}

struct Worker {
    ring: Ring,
    netdev: Netdev,
    kick: File,
    buf: Vec<u8>,
    /// On a switch port: what forwarding keeps between frames (the
    /// switch ports' rx rings this worker filled and has not signalled).
    scratch: Scratch,
}

impl Worker {
    fn is_rx(&self) -> bool {
        self.ring.index.is_multiple_of(2)
    }

    fn pair(&self) -> usize {
        usize::from(self.ring.index / 2)
    }

    fn run(mut self, stop: &EventFd) -> u16 {
        let mut again = false;
        loop {
            let netdev = self.netdev.clone();
            let mut fds = vec![
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.kick.as_fd(), PollFlags::POLLIN),
            ];
            if let (true, Netdev::Port(port)) = (self.is_rx(), &netdev) {
                fds.push(PollFd::new(port.rx_fd(self.pair()), PollFlags::POLLIN));
            }
            let timeout = if again {
                PollTimeout::ZERO
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("queue {}: poll failed: {e}", self.ring.index);
                    return self.ring.next_avail();
                }
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                return self.ring.next_avail();
            }
            let kicked = ready(&fds[1]);
            let port_ready = fds.get(2).is_some_and(ready);
            drop(fds);
            if kicked {
                let mut v = [0u8; 8];
                let _ = (&self.kick).read(&mut v);
            }
            let used = if self.is_rx() {
                if port_ready {
                    self.rx_burst()
                } else {
                    false
                }
            } else {
                let (used, more) = self.tx_all();
                again = more;
                used
            };
            if used {
                self.signal();
            }
        }
    }

    /// Notifies this ring's driver and the switch ports' drivers whose
    /// rings this worker filled.
    fn signal(&mut self) {
        self.ring.signal();
        self.scratch.pending.flush();
    }

    /// Watches the avail ring for up to [`POLL`]; true when a chain came.
    fn poll_avail(&self) -> bool {
        let end = Instant::now() + POLL;
        loop {
            if self.ring.has_avail() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Drains the tx ring: (a chain was used and not signalled yet, more
    /// is waiting and the caller should come back without sleeping).
    fn tx_all(&mut self) -> (bool, bool) {
        let mut used = false;
        let mut rounds = 0usize;
        let mut segs = std::mem::take(&mut self.ring.segs);
        loop {
            let mem = self.ring.mem.clone();
            if self.ring.q.disable_notification(&*mem).is_err() {
                break;
            }
            self.ring.log_notification();
            let mut moved = 0usize;
            // One clock read per round (learning keeps seconds).
            let now = Instant::now();
            loop {
                segs.clear();
                let Some(c) = self.ring.pop(false, &mut segs) else {
                    break;
                };
                used = true;
                moved += 1;
                self.tx_one(c, &segs, now);
                if moved.is_multiple_of(SIGNAL_EVERY) {
                    // A long run: the driver gets its buffers back, and
                    // the switch ports' drivers their frames, meanwhile.
                    self.signal();
                }
            }
            if moved >= POLL_AFTER {
                // The used entries go to the driver before the watch.
                self.signal();
                used = false;
                if rounds >= MAX_ROUNDS {
                    // Busy for long: back to `run` (which checks its stop
                    // fd) and straight here again, kicks still off.
                    self.ring.segs = segs;
                    return (false, true);
                }
                rounds += 1;
                if self.poll_avail() {
                    continue;
                }
            }
            rounds += 1;
            // `true`: more arrived while notifications were off. A corrupt
            // avail index says so forever while popping yields nothing:
            // give up after a bounded number of rounds.
            let more = self.ring.q.enable_notification(&*mem);
            self.ring.log_notification();
            match more {
                Ok(true) if rounds < MAX_ROUNDS => continue,
                // Still moving frames: come back at once.
                Ok(true) if moved > 0 => {
                    self.ring.segs = segs;
                    return (used, true);
                }
                _ => break,
            }
        }
        self.ring.segs = segs;
        (used, false)
    }

    fn tx_one(&mut self, c: Chain, segs: &[Seg], now: Instant) {
        if !c.ok {
            return self.ring.bad_chain(c.head);
        }
        let total: usize = segs.iter().map(|s| s.len).sum();
        if !(HDR_LEN..=MAX_FRAME).contains(&total) {
            return self.ring.bad_chain(c.head);
        }
        if !self.ring.link_up() {
            self.ring.add_used(c.head, 0);
            return count(&self.ring.stats, false, total);
        }
        // The chain is completed as soon as it was read, before anyone can
        // see the frame: a net-proc killed in between loses the frame,
        // never sends it twice (its successor starts at the used index).
        let sent = match &self.netdev {
            Netdev::Port(port) => {
                let chain = Body::Guest {
                    mem: &self.ring.mem,
                    segs,
                    skip: 0,
                    len: total,
                };
                if chain.gather(&mut self.buf[..total]) != total {
                    return self.ring.bad_chain(c.head);
                }
                self.ring.add_used(c.head, 0);
                let frame = if port.vnet_hdr() {
                    &self.buf[..total]
                } else {
                    &self.buf[HDR_LEN..total]
                };
                match port.send(usize::from(self.ring.index / 2), frame) {
                    Ok(_) => true,
                    Err(e) => {
                        ipc_proto::warn_limited!(
                            "queue {}: port send failed: {e}",
                            self.ring.index
                        );
                        false
                    }
                }
            }
            // No offloads over a switch port: the header carries nothing
            // the frame needs (the receivers get a zeroed one). The switch
            // reads the frame where it lies and completes the chain
            // (`done`) before a receiver sees it.
            Netdev::Switch(port) => {
                let mem = self.ring.mem.clone();
                let body = Body::Guest {
                    mem: &mem,
                    segs,
                    skip: HDR_LEN,
                    len: total - HDR_LEN,
                };
                let ring = &mut self.ring;
                let mut done = || ring.add_used(c.head, 0);
                port.ingress(body, now, &mut self.scratch, &mut done)
            }
        };
        count(&self.ring.stats, sent, total);
    }

    /// Reads up to [`BATCH`] frames from the port into the rx ring. True
    /// if any chain was used.
    fn rx_burst(&mut self) -> bool {
        let Netdev::Port(port) = self.netdev.clone() else {
            return false;
        };
        let mut used = false;
        let off = if port.vnet_hdr() { 0 } else { HDR_LEN };
        for _ in 0..BATCH {
            let n = match port.recv(self.pair(), &mut self.buf[off..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    ipc_proto::warn_limited!("queue {}: port receive failed: {e}", self.ring.index);
                    break;
                }
            };
            let len = n + off;
            if len < HDR_LEN {
                add(&self.ring.stats.rx_dropped, 1);
                continue;
            }
            if off > 0 {
                self.buf[..HDR_LEN].fill(0);
            }
            if !self.ring.link_up() {
                add(&self.ring.stats.rx_dropped, 1);
                continue;
            }
            let mut hdr = [0u8; HDR_LEN];
            hdr.copy_from_slice(&self.buf[..HDR_LEN]);
            let body = Body::Bytes(&self.buf[HDR_LEN..len]);
            used |= self.ring.deliver(&hdr, &body, &mut || {});
        }
        used
    }
}
