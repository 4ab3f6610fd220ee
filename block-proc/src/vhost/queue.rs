//! One queue's worker thread: waits for kicks, takes requests from the
//! avail ring, runs them on the node, publishes used elements and signals
//! the call eventfd (with EVENT_IDX suppression), keeping the inflight
//! region up to date. After a reconnect it first resubmits the requests the
//! inflight region shows unfinished, oldest first.
//!
//! A guest that breaks the ring protocol (bad ring address, head or chain
//! index out of range, chain loops) gets its queue marked broken: the
//! thread stops touching the ring and only waits to be stopped. Other
//! queues and the process go on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use std::sync::mpsc::Sender;

use super::export::ExportEvent;
use crate::block::Node;
use crate::inflight::QueueInflight;
use crate::ratelimit::RateLimit;
use crate::virtio_blk::{self, BlkConfig};
use crate::vring::{Desc, Mem, Vring, VringConfig, VringError};
use crate::warn_ratelimited;

/// Everything a queue thread needs.
pub struct QueueParams {
    /// Queue index.
    pub index: u16,
    /// Ring addresses (guest physical) and size.
    pub ring: VringConfig,
    /// Avail index from SET_VRING_BASE.
    pub base: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Guest memory.
    pub mem: Arc<Mem>,
    /// The exported node.
    pub node: Arc<Node>,
    /// Device description.
    pub blk: Arc<BlkConfig>,
    /// Kick eventfd.
    pub kick: File,
    /// Call eventfd.
    pub call: Option<File>,
    /// Inflight tracker of this queue, if the frontend set one.
    pub inflight: Option<QueueInflight>,
    /// Where host I/O failures are reported (rate limited).
    pub events: Option<Sender<ExportEvent>>,
}

/// A running queue thread.
pub struct QueueWorker {
    stop: EventFd,
    handle: JoinHandle<u16>,
}

impl QueueWorker {
    /// Start the thread.
    pub fn start(p: QueueParams) -> io::Result<Self> {
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(io::Error::from)?;
        let stop2 = stop.as_fd().try_clone_to_owned()?;
        let handle = std::thread::Builder::new()
            .name(format!("blk-q{}", p.index))
            .spawn(move || run(p, File::from(stop2)))?;
        Ok(QueueWorker { stop, handle })
    }

    /// Stop the thread; returns the next avail index (GET_VRING_BASE).
    pub fn stop(self) -> u16 {
        let _ = self.stop.write(1);
        self.handle.join().unwrap_or(0)
    }
}

struct Ctx {
    ring: Vring,
    p: QueueParams,
    descs: Vec<Desc>,
    broken: bool,
    error_events: RateLimit,
}

fn signal(f: &Option<File>) {
    if let Some(mut f) = f.as_ref() {
        let _ = f.write(&1u64.to_ne_bytes());
    }
}

impl Ctx {
    fn fail(&mut self, e: VringError) {
        warn_ratelimited!(
            "virtio-blk queue {}: guest broke the ring protocol, queue stopped: {e}",
            self.p.index
        );
        self.broken = true;
    }

    fn handle(&mut self, head: u16, fresh: bool) -> Result<(), VringError> {
        if fresh {
            if let Some(inf) = self.p.inflight.as_mut() {
                inf.get(head);
            }
        }
        self.ring.chain(&self.p.mem, head, &mut self.descs)?;
        let c = virtio_blk::process(&self.p.node, &self.p.blk, &self.p.mem, &self.descs);
        if let (Some(f), Some(tx)) = (c.failure, self.p.events.as_ref()) {
            if self.error_events.allow() {
                let _ = tx.send(ExportEvent::IoError {
                    node_name: self.p.node.name.clone(),
                    operation: f.operation,
                    reason: f.reason,
                });
            }
        }
        if let Some(inf) = self.p.inflight.as_ref() {
            inf.pre_put(head);
        }
        self.ring.add_used(&self.p.mem, head, c.used_len)?;
        if let Some(inf) = self.p.inflight.as_ref() {
            inf.post_put(head, self.ring.next_used());
        }
        Ok(())
    }

    fn notify(&mut self) -> Result<(), VringError> {
        if self.ring.needs_notification(&self.p.mem)? {
            signal(&self.p.call);
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), VringError> {
        loop {
            let mut any = false;
            while let Some(head) = self.ring.pop(&self.p.mem)? {
                self.handle(head, true)?;
                any = true;
            }
            if any {
                self.notify()?;
            }
            if !self.ring.enable_notification(&self.p.mem)? {
                return Ok(());
            }
        }
    }

    fn start(&mut self) -> Result<(), VringError> {
        self.ring.validate(&self.p.mem)?;
        let used = self.ring.used_idx_in_memory(&self.p.mem)?;
        self.ring.set_next_used(used);
        let size = self.ring.size();
        let base = self.p.base;
        let Some(rec) = self
            .p
            .inflight
            .as_mut()
            .map(|i| i.recover(used, size, base))
        else {
            return Ok(());
        };
        self.ring.set_next_avail(rec.next_avail);
        if !rec.resubmit.is_empty() {
            tracing::info!(
                "queue {}: resubmitting {} inflight requests",
                self.p.index,
                rec.resubmit.len()
            );
            for head in rec.resubmit {
                self.handle(head, false)?;
            }
            self.notify()?;
        }
        Ok(())
    }
}

fn run(p: QueueParams, mut stop: File) -> u16 {
    let ring = Vring::new(p.ring, p.base, p.event_idx);
    let mut ctx = Ctx {
        ring,
        p,
        descs: Vec::with_capacity(64),
        broken: false,
        error_events: RateLimit::new(),
    };
    if let Err(e) = ctx.start() {
        ctx.fail(e);
    }
    // The call fd may have changed (or arrived after the kick, as QEMU
    // sends it): one spurious interrupt is harmless, a lost one stalls the
    // driver.
    signal(&ctx.p.call);
    // Requests may already be waiting (kick sent before we started).
    if !ctx.broken {
        if let Err(e) = ctx.drain() {
            ctx.fail(e);
        }
    }
    let mut buf = [0u8; 8];
    loop {
        let (kick_ready, stop_ready) = {
            let mut fds = [
                PollFd::new(ctx.p.kick.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => (
                    fds[0].revents().is_some_and(|r| !r.is_empty()),
                    fds[1].revents().is_some_and(|r| !r.is_empty()),
                ),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("queue {}: poll failed: {e}", ctx.p.index);
                    break;
                }
            }
        };
        if stop_ready {
            let _ = stop.read(&mut buf);
            break;
        }
        if kick_ready {
            if ctx.p.kick.read(&mut buf).is_err() {
                // Spurious wakeup or a bad fd: avoid spinning on a broken fd.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if !ctx.broken {
                if let Err(e) = ctx.drain() {
                    ctx.fail(e);
                }
            }
        }
    }
    ctx.ring.next_avail()
}
