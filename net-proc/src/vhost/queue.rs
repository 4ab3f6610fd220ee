//! A virtqueue's worker thread: the tx queue of a pair moves the guest's
//! frames to the port, the rx queue moves the port's frames into the
//! guest's buffers. Chains come from `virtio-queue` (ring indexes, EVENT_IDX
//! and chain-length limits); every descriptor is checked here too: its
//! direction (tx: device-readable only, rx: device-writable only), its
//! bounds in guest memory, the chain's total length (a tx chain holds at
//! least a vnet header and at most [`MAX_FRAME`] bytes), and a chain cut
//! short by a bad `next` or a loop is refused. A refused chain is returned
//! with length 0 and counted; the queue carries on.
//!
//! Stopping (GET_VRING_BASE, also for a save of the VM state) needs no
//! drain: a chain is completed (used) in the same step it is taken, and
//! the worker looks at its stop eventfd only between steps, so the avail
//! position it returns is always the used index in guest memory
//! (`tests/vring_stop.rs`).
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
//! Per frame the worker allocates nothing (the segment lists are reused)
//! and makes one port syscall. After a batch the tx worker watches the
//! avail ring for [`POLL`] before it sleeps, as block-proc's queue does
//! (see there for why only after a batch). The rx worker does not watch
//! the port: that costs a syscall per look, and on a loaded 2-core host
//! it measured slower (it takes the CPU from the sender).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::memory::Mem;
use super::stats::{add, Counters};
use crate::port::Port;
use crate::virtio_net::{HDR_LEN, MAX_FRAME, MAX_QUEUE_SIZE, NUM_BUFFERS_OFFSET};
use vhost_backend_common::log::QueueLog;

/// Frames moved per wake-up before the worker looks at its other fds.
const BATCH: usize = 256;

/// How long a worker that just moved several frames watches its source
/// before it re-enables kicks and sleeps: a sender keeping the queue busy
/// adds frames within microseconds, and catching them here saves a
/// sleep, a wake-up and the driver's kick per batch. It yields while it
/// watches, so a thread woken onto this CPU runs at once.
const POLL: Duration = Duration::from_micros(32);

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
    /// The port frames go to and come from.
    pub port: Arc<dyn Port>,
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

/// A running queue.
pub struct QueueWorker {
    stop: Arc<EventFd>,
    handle: JoinHandle<u16>,
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
    /// Checks the ring and starts the worker thread.
    pub fn start(p: QueueParams) -> Result<Self, QueueError> {
        let ring = |e: virtio_queue::Error| QueueError::Ring(e.to_string());
        let mut q = Queue::new(MAX_QUEUE_SIZE).map_err(ring)?;
        q.try_set_size(p.size).map_err(ring)?;
        q.try_set_desc_table_address(GuestAddress(p.addrs.desc))
            .map_err(ring)?;
        q.try_set_avail_ring_address(GuestAddress(p.addrs.avail))
            .map_err(ring)?;
        q.try_set_used_ring_address(GuestAddress(p.addrs.used))
            .map_err(ring)?;
        q.set_event_idx(p.event_idx);
        q.set_next_avail(p.base);
        q.set_next_used(p.base);
        q.set_ready(true);
        if !q.is_valid(&*p.mem) {
            return Err(QueueError::Ring("rings outside guest memory".into()));
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
                    p,
                    q,
                    buf: vec![0; MAX_FRAME],
                    segs: Vec::new(),
                    chains: Vec::new(),
                }
                .run(&s)
            })?;
        Ok(QueueWorker { stop, handle })
    }

    /// Stops the thread; returns the next avail index to process.
    pub fn stop(self) -> u16 {
        let _ = self.stop.write(1);
        self.handle.join().unwrap_or(0)
    }
}

/// A descriptor checked against guest memory.
#[derive(Clone, Copy)]
struct Seg {
    addr: u64,
    len: usize,
}

/// A popped chain: its head, and whether the segments `pop` appended
/// are usable (false: it was refused).
struct Chain {
    head: u16,
    ok: bool,
}

struct Worker {
    p: QueueParams,
    q: Queue,
    buf: Vec<u8>,
    /// Segments of the chains in hand (reused: no allocation per frame).
    segs: Vec<Seg>,
    /// Rx: the chains a frame takes, as (head, end of its segments).
    chains: Vec<(u16, usize)>,
}

impl Worker {
    fn is_rx(&self) -> bool {
        self.p.index.is_multiple_of(2)
    }

    fn pair(&self) -> usize {
        usize::from(self.p.index / 2)
    }

    fn run(mut self, stop: &EventFd) -> u16 {
        let mut again = false;
        loop {
            let port = self.p.port.clone();
            let mut fds = vec![
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.p.kick.as_fd(), PollFlags::POLLIN),
            ];
            if self.is_rx() {
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
                    tracing::error!("queue {}: poll failed: {e}", self.p.index);
                    return self.q.next_avail();
                }
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                return self.q.next_avail();
            }
            let kicked = ready(&fds[1]);
            let port_ready = fds.get(2).is_some_and(ready);
            drop(fds);
            if kicked {
                let mut v = [0u8; 8];
                let _ = (&self.p.kick).read(&mut v);
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

    fn signal(&mut self) {
        let needed = self.q.needs_notification(&*self.p.mem).unwrap_or(true);
        if let (true, Some(call)) = (needed, self.p.call.as_ref()) {
            let _ = (&*call).write(&1u64.to_ne_bytes());
        }
    }

    /// Pops the next chain, checking each descriptor's direction and
    /// bounds, and appends its segments to `segs`. None: the ring is empty
    /// (or its avail index is corrupt).
    fn pop(&mut self, writable: bool, segs: &mut Vec<Seg>) -> Option<Chain> {
        let mem = self.p.mem.clone();
        if !self.ring_sane() {
            return None;
        }
        let chain = self.q.pop_descriptor_chain(&*mem)?;
        let head = chain.head_index();
        let first = segs.len();
        let mut ok = true;
        let mut last_has_next = false;
        for d in chain {
            last_has_next = d.has_next();
            if d.is_write_only() != writable {
                ok = false;
                continue;
            }
            let len = d.len() as usize;
            if len == 0 {
                continue;
            }
            if mem.check_range(d.addr(), len, Permissions::ReadWrite) {
                segs.push(Seg {
                    addr: d.addr().0,
                    len,
                });
            } else {
                ok = false;
            }
        }
        // A chain that ends with NEXT set was cut short: a `next` out of
        // the table, a loop (longer than the ring), a bad indirect table.
        if last_has_next || segs.len() == first {
            ok = false;
        }
        Some(Chain { head, ok })
    }

    /// True when the avail ring holds chains not taken yet.
    fn has_avail(&self) -> bool {
        self.q
            .avail_idx(&*self.p.mem, Ordering::Acquire)
            .is_ok_and(|a| a.0 != self.q.next_avail())
    }

    /// Watches the avail ring for up to [`POLL`]; true when a chain came.
    fn poll_avail(&self) -> bool {
        let end = Instant::now() + POLL;
        loop {
            if self.has_avail() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// False when the avail index claims more entries than the ring holds
    /// (checked here so a broken driver costs one rate-limited warning,
    /// not a log line per pop from `virtio-queue`).
    fn ring_sane(&mut self) -> bool {
        let Ok(avail) = self.q.avail_idx(&*self.p.mem, Ordering::Acquire) else {
            return false;
        };
        let pending = avail.0.wrapping_sub(self.q.next_avail());
        if pending > self.q.size() {
            add(&self.p.stats.bad_chains, 1);
            ipc_proto::warn_limited!(
                "queue {}: avail index {} is {pending} entries ahead of a ring of {}",
                self.p.index,
                avail.0,
                self.q.size()
            );
            return false;
        }
        true
    }

    fn add_used(&mut self, head: u16, len: u32) {
        let slot = self.q.next_used() % self.q.size().max(1);
        match self.q.add_used(&*self.p.mem, head, len) {
            Ok(()) => {
                if let Some(log) = &self.p.log {
                    log.used(4 + 8 * u64::from(slot), 8);
                    log.used(2, 2);
                }
            }
            Err(e) => ipc_proto::warn_limited!("queue {}: add_used failed: {e}", self.p.index),
        }
    }

    /// Logs what turning notifications on or off wrote into the used ring
    /// (the flags, or the avail event with EVENT_IDX).
    fn log_notification(&self) {
        if let Some(log) = &self.p.log {
            if self.p.event_idx {
                log.used(4 + 8 * u64::from(self.q.size()), 2);
            } else {
                log.used(0, 2);
            }
        }
    }

    fn bad_chain(&mut self, head: u16) {
        add(&self.p.stats.bad_chains, 1);
        ipc_proto::warn_limited!("queue {}: malformed descriptor chain refused", self.p.index);
        self.add_used(head, 0);
    }

    /// Drains the tx ring: (a chain was used and not signalled yet, more
    /// is waiting and the caller should come back without sleeping).
    fn tx_all(&mut self) -> (bool, bool) {
        let mut used = false;
        let mut rounds = 0usize;
        let mut segs = std::mem::take(&mut self.segs);
        loop {
            let mem = self.p.mem.clone();
            if self.q.disable_notification(&*mem).is_err() {
                break;
            }
            self.log_notification();
            let mut moved = 0usize;
            loop {
                segs.clear();
                let Some(c) = self.pop(false, &mut segs) else {
                    break;
                };
                used = true;
                moved += 1;
                self.tx_one(c, &segs);
            }
            if moved >= POLL_AFTER {
                // The used entries go to the driver before the watch.
                self.signal();
                used = false;
                if rounds >= MAX_ROUNDS {
                    // Busy for long: back to `run` (which checks its stop
                    // fd) and straight here again, kicks still off.
                    self.segs = segs;
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
            let more = self.q.enable_notification(&*mem);
            self.log_notification();
            match more {
                Ok(true) if rounds < MAX_ROUNDS => continue,
                // Still moving frames: come back at once.
                Ok(true) if moved > 0 => {
                    self.segs = segs;
                    return (used, true);
                }
                _ => break,
            }
        }
        self.segs = segs;
        (used, false)
    }

    fn tx_one(&mut self, c: Chain, segs: &[Seg]) {
        if !c.ok {
            return self.bad_chain(c.head);
        }
        let total: usize = segs.iter().map(|s| s.len).sum();
        if !(HDR_LEN..=MAX_FRAME).contains(&total) {
            return self.bad_chain(c.head);
        }
        let mut off = 0;
        for s in segs {
            let dst = &mut self.buf[off..off + s.len];
            if self.p.mem.read_slice(dst, GuestAddress(s.addr)).is_err() {
                return self.bad_chain(c.head);
            }
            off += s.len;
        }
        self.add_used(c.head, 0);
        let stats = &self.p.stats;
        if !self.p.link_up.load(Ordering::Relaxed) {
            add(&stats.tx_dropped, 1);
            return;
        }
        let frame = if self.p.port.vnet_hdr() {
            &self.buf[..total]
        } else {
            &self.buf[HDR_LEN..total]
        };
        match self.p.port.send(self.pair(), frame) {
            Ok(_) => {
                add(&stats.tx_packets, 1);
                add(&stats.tx_bytes, (total - HDR_LEN) as u64);
            }
            Err(e) => {
                add(&stats.tx_dropped, 1);
                ipc_proto::warn_limited!("queue {}: port send failed: {e}", self.p.index);
            }
        }
    }

    /// Reads up to [`BATCH`] frames from the port into the rx ring. True
    /// if any chain was used.
    fn rx_burst(&mut self) -> bool {
        let mut used = false;
        let port = self.p.port.clone();
        let off = if port.vnet_hdr() { 0 } else { HDR_LEN };
        for _ in 0..BATCH {
            let n = match port.recv(self.pair(), &mut self.buf[off..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    ipc_proto::warn_limited!("queue {}: port receive failed: {e}", self.p.index);
                    break;
                }
            };
            let len = n + off;
            if len < HDR_LEN {
                add(&self.p.stats.rx_dropped, 1);
                continue;
            }
            if off > 0 {
                self.buf[..HDR_LEN].fill(0);
            }
            if !self.p.link_up.load(Ordering::Relaxed) {
                add(&self.p.stats.rx_dropped, 1);
                continue;
            }
            used |= self.deliver(len);
        }
        used
    }

    /// Places the frame in `buf[..len]` (header included) into one chain,
    /// or several with MRG_RXBUF. True if any chain was used.
    fn deliver(&mut self, len: usize) -> bool {
        let start = self.q.next_avail();
        let mut segs = std::mem::take(&mut self.segs);
        let mut chains = std::mem::take(&mut self.chains);
        segs.clear();
        chains.clear();
        let used = self.fill_chains(len, start, &mut segs, &mut chains);
        self.segs = segs;
        self.chains = chains;
        used
    }

    fn fill_chains(
        &mut self,
        len: usize,
        start: u16,
        segs: &mut Vec<Seg>,
        chains: &mut Vec<(u16, usize)>,
    ) -> bool {
        let mut room = 0usize;
        while room < len {
            if !self.p.mrg_rxbuf && !chains.is_empty() {
                break;
            }
            let first = segs.len();
            let Some(c) = self.pop(true, segs) else { break };
            if !c.ok {
                // Give back what this frame took so far, then refuse
                // the bad chain: the frame is dropped.
                for &(head, _) in chains.iter() {
                    self.add_used(head, 0);
                }
                self.bad_chain(c.head);
                add(&self.p.stats.rx_dropped, 1);
                return true;
            }
            room += segs[first..].iter().map(|s| s.len).sum::<usize>();
            chains.push((c.head, segs.len()));
        }
        if room < len {
            // Not enough buffers: leave them in the ring for the next frame
            // (a small one may fit) and drop this one.
            self.q.set_next_avail(start);
            add(&self.p.stats.rx_dropped, 1);
            return false;
        }
        let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
        self.buf[NUM_BUFFERS_OFFSET..HDR_LEN].copy_from_slice(&count.to_le_bytes());
        let mut off = 0usize;
        let mut from = 0usize;
        for &(head, end) in chains.iter() {
            let mut written = 0usize;
            for s in &segs[from..end] {
                if off == len {
                    break;
                }
                let n = s.len.min(len - off);
                if self
                    .p
                    .mem
                    .write_slice(&self.buf[off..off + n], GuestAddress(s.addr))
                    .is_err()
                {
                    add(&self.p.stats.bad_chains, 1);
                    break;
                }
                if let Some(log) = &self.p.log {
                    log.data(s.addr, n as u64);
                }
                off += n;
                written += n;
            }
            from = end;
            self.add_used(head, u32::try_from(written).unwrap_or(0));
        }
        add(&self.p.stats.rx_packets, 1);
        add(&self.p.stats.rx_bytes, (len - HDR_LEN) as u64);
        true
    }
}
