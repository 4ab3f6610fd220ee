//! One virtqueue of a NIC as the device side sees it: chains popped from
//! `virtio-queue` with every descriptor checked (direction, bounds in
//! guest memory, a chain cut short by a bad `next` or a loop), used
//! elements written and dirty-logged, the driver notified — and the rx
//! side's delivery of one frame into the guest's buffers ([`Ring::deliver`],
//! several chains with MRG_RXBUF).
//!
//! A [`Ring`] is driven either by its queue's worker thread
//! ([`super::queue`]: tx ring → port, port → rx ring) or, for the rx
//! ring of a NIC on a switch port, by whichever thread forwards a frame
//! to it ([`crate::rocker::nic_port`]: ring to ring, no thread of its own).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::body::{Body, Chunk, Writer};
use super::memory::Mem;
use super::queue::{QueueError, QueueParams};
use super::stats::{add, Counters};
use crate::virtio_net::{HDR_LEN, MAX_QUEUE_SIZE, NUM_BUFFERS_OFFSET};
use vhost_backend_common::log::QueueLog;

/// A descriptor checked against guest memory, inside one memory region
/// (a descriptor across two regions becomes two segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
}

/// A popped chain: its head, and whether the segments [`Ring::pop`]
/// appended are usable (false: it was refused).
pub struct Chain {
    /// The head descriptor's index.
    pub head: u16,
    /// Every descriptor passed the checks.
    pub ok: bool,
}

/// A virtqueue with what serving it needs.
pub struct Ring {
    /// Virtqueue index (even: rx, odd: tx).
    pub index: u16,
    /// The queue (ring positions, EVENT_IDX).
    pub q: Queue,
    /// Guest memory.
    pub mem: Arc<Mem>,
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    pub event_idx: bool,
    /// `VIRTIO_NET_F_MRG_RXBUF` negotiated.
    pub mrg_rxbuf: bool,
    /// The NIC's counters.
    pub stats: Arc<Counters>,
    /// The NIC's link state.
    pub link_up: Arc<AtomicBool>,
    /// Call eventfd.
    pub call: Option<File>,
    /// The dirty log, while the frontend has logging on.
    pub log: Option<QueueLog>,
    /// Segments of the chains in hand (reused: no allocation per frame).
    pub segs: Vec<Seg>,
    /// Rx: the chains a frame takes, as (head, end of its segments).
    chains: Vec<(u16, usize)>,
}

impl Ring {
    /// Checks the ring geometry of `p` against guest memory.
    pub fn new(p: &QueueParams, call: Option<File>) -> Result<Ring, QueueError> {
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
        Ok(Ring {
            index: p.index,
            q,
            mem: p.mem.clone(),
            event_idx: p.event_idx,
            mrg_rxbuf: p.mrg_rxbuf,
            stats: p.stats.clone(),
            link_up: p.link_up.clone(),
            call,
            log: p.log.clone(),
            segs: Vec::new(),
            chains: Vec::new(),
        })
    }

    /// The next avail index to process (what GET_VRING_BASE returns).
    pub fn next_avail(&self) -> u16 {
        self.q.next_avail()
    }

    /// Notifies the driver of the used elements, if it wants it.
    pub fn signal(&mut self) {
        let needed = self.q.needs_notification(&*self.mem).unwrap_or(true);
        if let (true, Some(call)) = (needed, self.call.as_ref()) {
            let _ = (&*call).write(&1u64.to_ne_bytes());
        }
    }

    /// Pops the next chain, checking each descriptor's direction and
    /// bounds, and appends its segments to `segs`. None: the ring is empty
    /// (or its avail index is corrupt).
    pub fn pop(&mut self, writable: bool, segs: &mut Vec<Seg>) -> Option<Chain> {
        if !self.ring_sane() {
            return None;
        }
        let mem: &Mem = &self.mem;
        let chain = self.q.pop_descriptor_chain(mem)?;
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
            if !push_segs(mem, d.addr().0, len, segs) {
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
    pub fn has_avail(&self) -> bool {
        self.q
            .avail_idx(&*self.mem, Ordering::Acquire)
            .is_ok_and(|a| a.0 != self.q.next_avail())
    }

    /// False when the avail index claims more entries than the ring holds
    /// (checked here so a broken driver costs one rate-limited warning,
    /// not a log line per pop from `virtio-queue`).
    fn ring_sane(&mut self) -> bool {
        let Ok(avail) = self.q.avail_idx(&*self.mem, Ordering::Acquire) else {
            return false;
        };
        let pending = avail.0.wrapping_sub(self.q.next_avail());
        if pending > self.q.size() {
            add(&self.stats.bad_chains, 1);
            ipc_proto::warn_limited!(
                "queue {}: avail index {} is {pending} entries ahead of a ring of {}",
                self.index,
                avail.0,
                self.q.size()
            );
            return false;
        }
        true
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, head: u16, len: u32) {
        let slot = self.q.next_used() % self.q.size().max(1);
        match self.q.add_used(&*self.mem, head, len) {
            Ok(()) => {
                if let Some(log) = &self.log {
                    log.used(4 + 8 * u64::from(slot), 8);
                    log.used(2, 2);
                }
            }
            Err(e) => ipc_proto::warn_limited!("queue {}: add_used failed: {e}", self.index),
        }
    }

    /// Logs what turning notifications on or off wrote into the used ring
    /// (the flags, or the avail event with EVENT_IDX).
    pub fn log_notification(&self) {
        if let Some(log) = &self.log {
            if self.event_idx {
                log.used(4 + 8 * u64::from(self.q.size()), 2);
            } else {
                log.used(0, 2);
            }
        }
    }

    /// Refuses chain `head`: returned with length 0 and counted.
    pub fn bad_chain(&mut self, head: u16) {
        add(&self.stats.bad_chains, 1);
        ipc_proto::warn_limited!("queue {}: malformed descriptor chain refused", self.index);
        self.add_used(head, 0);
    }

    /// Places a frame into one chain, or several with MRG_RXBUF, and
    /// counts it: `hdr` is its vnet header (`num_buffers` is set here),
    /// `body` the frame, copied from where it lies (a buffer or another
    /// guest's tx chain) straight into the buffers. A frame that finds no
    /// (or not enough) buffers is dropped and counted. True if any chain
    /// was used (the caller signals once per batch).
    ///
    /// `done` is called once, after the body was read and before the
    /// used elements make the frame visible to this ring's driver: the
    /// sender's chain is completed there, so that a net-proc killed in
    /// between loses the frame (its buffers here are offered again) but
    /// never delivers it twice (a sender's chain completed after the
    /// delivery would be sent again by the successor).
    pub fn deliver(
        &mut self,
        hdr: &[u8; HDR_LEN],
        body: &Body<'_>,
        done: &mut dyn FnMut(),
    ) -> bool {
        let start = self.q.next_avail();
        let mut segs = std::mem::take(&mut self.segs);
        let mut chains = std::mem::take(&mut self.chains);
        segs.clear();
        chains.clear();
        let mut called = false;
        let mut once = || {
            if !std::mem::replace(&mut called, true) {
                done();
            }
        };
        let used = self.fill_chains(hdr, body, start, &mut segs, &mut chains, &mut once);
        once();
        self.segs = segs;
        self.chains = chains;
        used
    }

    fn fill_chains(
        &mut self,
        hdr: &[u8; HDR_LEN],
        body: &Body<'_>,
        start: u16,
        segs: &mut Vec<Seg>,
        chains: &mut Vec<(u16, usize)>,
        done: &mut dyn FnMut(),
    ) -> bool {
        let len = HDR_LEN + body.len();
        let mut room = 0usize;
        while room < len {
            if !self.mrg_rxbuf && !chains.is_empty() {
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
                add(&self.stats.rx_dropped, 1);
                return true;
            }
            room += segs[first..].iter().map(|s| s.len).sum::<usize>();
            chains.push((c.head, segs.len()));
        }
        if room < len {
            // Not enough buffers: leave them in the ring for the next frame
            // (a small one may fit) and drop this one.
            self.q.set_next_avail(start);
            add(&self.stats.rx_dropped, 1);
            return false;
        }
        let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
        let mut h = *hdr;
        h[NUM_BUFFERS_OFFSET..HDR_LEN].copy_from_slice(&count.to_le_bytes());
        let log = |addr: u64, n: u64| {
            if let Some(log) = &self.log {
                log.data(addr, n);
            }
        };
        let mut w = Writer::new(&self.mem, segs, &log);
        w.put(&Chunk::Bytes(&h));
        let mapped = body.chunks(|c| w.put(&c));
        if w.failed || !mapped {
            add(&self.stats.bad_chains, 1);
        }
        done();
        // Each chain holds what fits in it, in order.
        let mut left = len;
        let mut from = 0usize;
        for &(head, end) in chains.iter() {
            let cap: usize = segs[from..end].iter().map(|s| s.len).sum();
            let written = cap.min(left);
            left -= written;
            from = end;
            self.add_used(head, u32::try_from(written).unwrap_or(0));
        }
        add(&self.stats.rx_packets, 1);
        add(&self.stats.rx_bytes, body.len() as u64);
        true
    }

    /// The NIC's link is up.
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Relaxed)
    }
}

/// Appends `[addr, addr + len)` of `mem` to `segs`, one segment per
/// memory region it covers; false when part of it is outside guest
/// memory (nothing is appended then).
fn push_segs(mem: &Mem, addr: u64, len: usize, segs: &mut Vec<Seg>) -> bool {
    // Almost always within one region: one lookup.
    if mem.get_slice(GuestAddress(addr), len).is_ok() {
        segs.push(Seg { addr, len });
        return true;
    }
    let first = segs.len();
    let (mut at, mut left) = (addr, len);
    while left > 0 {
        let Some(r) = mem.find_region(GuestAddress(at)) else {
            segs.truncate(first);
            return false;
        };
        let in_region = r.last_addr().0 - at + 1;
        let n = usize::try_from(in_region).map_or(left, |n| n.min(left));
        segs.push(Seg { addr: at, len: n });
        at += n as u64;
        left -= n;
    }
    true
}
