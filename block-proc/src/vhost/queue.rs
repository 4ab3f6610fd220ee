//! One queue's worker: a thread that waits for kicks, takes requests from
//! the avail ring and runs them on the node, publishing used elements and
//! signalling the call eventfd (with EVENT_IDX suppression), keeping the
//! inflight region up to date. After a reconnect it first resubmits, in
//! order, the requests the inflight region shows unfinished.
//!
//! Execution: a lone request is run on the queue thread itself, which
//! waits for it (lowest latency at queue depth 1; on the ring below,
//! except writes); when a kick brings several, they go to the queue's
//! pool of I/O threads (or its ring) and complete in any order, as virtio
//! allows, so a deep queue keeps several host I/Os in flight (that is what
//! matters with `O_DIRECT` on real disks). The ring and the inflight
//! region sit behind one mutex held only for ring bookkeeping, never
//! during I/O. Stopping (GET_VRING_BASE) waits for every started request.
//!
//! With an io_uring engine under the node (`aio=io_uring`, see
//! `block/aio/`), the queue has its own ring: each request of a kick that
//! the engine can run as it is goes to the kernel as soon as it is parsed
//! (so the disk works while the next ones are parsed), the queue thread
//! waits on the ring fd beside the kick, and reaps completions in batches
//! (one lock, at most one interrupt per batch); the rest still goes to
//! the pool. If the ring cannot be set up, the queue runs on the pool
//! alone. After completing several requests at once the queue thread
//! watches the avail ring for a few microseconds before it sleeps, so a
//! driver that answers at once is served without a kick and a wake-up.
//!
//! While the frontend has dirty logging on (`super::log`), a request's
//! writable buffers are logged when it completes, before its used
//! element; the used-ring writes are logged by the ring (`crate::vring`).
//!
//! A guest that breaks the ring protocol (bad ring address, head or chain
//! index out of range, chain loops) gets its queue marked broken: the queue
//! takes no new requests and only waits to be stopped, but the requests it
//! had already taken still complete and are published. Other queues and
//! the process go on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::trace_point;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::device::Pending;
use super::device::RequestHandler;
use super::export::ExportEvent;
use super::log::{log_written, Written};
use crate::block::aio::uring::Ring;
use crate::block::aio::Engine;
use crate::inflight::QueueInflight;
use crate::throttle::gate::{Cost, Gate};
use crate::trace;
use crate::virtio_blk::Completion;
use crate::vring::{Desc, Mem, Vring, VringConfig, VringError};
use ipc_proto::ratelimit::RateLimit;
use ipc_proto::warn_limited;
use vhost_backend_common::log::QueueLog;

/// Most I/O threads of one export, shared out evenly among its queues
/// (each queue starts its threads on demand, up to the number of its
/// requests in flight, and has at least one). Bounds block-proc's thread
/// count (and stack memory) per disk whatever the guest does; further
/// requests wait in the queue's pool.
pub const EXPORT_MAX_IO_THREADS: usize = 64;

/// How long the queue thread watches the avail ring after it completed
/// several requests at once, before it re-enables kicks and sleeps: a
/// driver keeping a deep queue answers completions with new requests
/// within microseconds, and catching them here saves this thread a sleep
/// and a wake-up per round trip (QEMU's IOThreads poll likewise, up to
/// `poll-max-ns`, 32 us by default). Measured on 4k random reads
/// (`scripts/bench-blk`): 5-10 % more at queue depth 32, but 5-15 % less
/// at depth 1 (the driver's answer to a lone completion came too late to
/// be caught, and the spin only delayed it), hence only after more than
/// one completion; an idle queue never spins. The thread yields while it
/// watches, so a driver woken onto this CPU runs at once.
const AVAIL_POLL: Duration = Duration::from_micros(32);

/// Completions at once after which the queue thread watches the avail
/// ring ([`AVAIL_POLL`]).
const POLL_AFTER: usize = 2;

/// I/O threads of each queue of an export with `num_queues` queues.
pub fn io_threads_per_queue(num_queues: u16) -> usize {
    (EXPORT_MAX_IO_THREADS / usize::from(num_queues.max(1))).max(1)
}

/// Everything a queue needs.
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
    /// The device's request logic.
    pub handler: Arc<dyn RequestHandler>,
    /// Kick eventfd.
    pub kick: File,
    /// Call eventfd.
    pub call: Option<File>,
    /// Inflight tracker of this queue, if the frontend set one.
    pub inflight: Option<QueueInflight>,
    /// Where host I/O failures are reported (rate limited).
    pub events: Option<Sender<ExportEvent>>,
    /// The dirty log, while the frontend has logging on (`super::log`).
    pub log: Option<QueueLog>,
}

/// A running queue.
pub struct QueueWorker {
    stop: Option<EventFd>,
    handle: Option<JoinHandle<u16>>,
    /// The avail index an idle queue gives back.
    idle_base: u16,
}

impl QueueWorker {
    /// Start the queue thread.
    pub fn start(p: QueueParams) -> io::Result<Self> {
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(io::Error::from)?;
        let stop2 = stop.as_fd().try_clone_to_owned()?;
        let handle = std::thread::Builder::new()
            .name(format!("vu-q{}", p.index))
            .spawn(move || run(p, File::from(stop2)))?;
        Ok(QueueWorker {
            stop: Some(stop),
            handle: Some(handle),
            idle_base: 0,
        })
    }

    /// A queue that takes no buffers ([`super::device::QueueRole::Idle`]):
    /// no thread; stopping it gives `base` back unchanged.
    pub fn idle(base: u16) -> Self {
        QueueWorker {
            stop: None,
            handle: None,
            idle_base: base,
        }
    }

    /// Stop the queue (after its started requests complete); returns the
    /// next avail index (GET_VRING_BASE).
    pub fn stop(self) -> u16 {
        if let Some(s) = &self.stop {
            let _ = s.write(1);
        }
        match self.handle {
            Some(h) => h.join().unwrap_or(0),
            None => self.idle_base,
        }
    }
}

/// Ring-side state, under the queue's mutex.
struct RingState {
    ring: Vring,
    inflight: Option<QueueInflight>,
    broken: bool,
    /// Requests taken from the ring and not completed yet. A driver
    /// following the protocol never has more than the ring size; a guest
    /// republishing heads could make it grow without end, so taking stops
    /// there until completions bring it down.
    taken: usize,
    /// Taking stopped at the limit; the next completion wakes the queue.
    stalled: bool,
}

/// State shared by the queue thread and its I/O threads.
struct Shared {
    index: u16,
    mem: Arc<Mem>,
    handler: Arc<dyn RequestHandler>,
    ring_cfg: VringConfig,
    call: Option<File>,
    events: Option<Sender<ExportEvent>>,
    error_events: RateLimit,
    state: Mutex<RingState>,
    /// Requests handed to the pool and not yet completed.
    busy: Mutex<usize>,
    idle: Condvar,
    /// Written when a completion ends a stall (taking may resume).
    resume: EventFd,
    /// The dirty log, while logging is on.
    log: Option<QueueLog>,
}

/// A request taken from the ring: only its head. The chain is read by
/// the thread that runs it, so requests waiting for a thread hold no
/// descriptor lists (whose total a hostile guest could make quadratic in
/// the ring size by sharing descriptors between chains).
struct Job {
    head: u16,
}

/// A queue's io_uring; each request carries its head and completion data.
type AioRing = Ring<(u16, Pending, Written)>;

/// Finished ring requests, before they are completed on the ring.
type Reaped = Vec<((u16, Pending, Written), io::Result<()>)>;

/// The queue's ring, when the node's engine is io_uring and the ring can
/// be set up here; else the queue runs on its pool.
fn open_ring(shared: &Shared) -> Option<AioRing> {
    let aio = shared.handler.aio()?;
    match aio.engine {
        Engine::Threads => None,
        Engine::IoUring => match Ring::new(aio.fd) {
            Ok(r) => Some(r),
            Err(e) => {
                warn_limited!(
                    "queue {}: cannot set up io_uring ({e}); using the thread pool",
                    shared.index
                );
                None
            }
        },
    }
}

fn signal(f: &Option<File>) {
    if let Some(mut f) = f.as_ref() {
        let _ = f.write(&1u64.to_ne_bytes());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, st: &mut RingState, e: VringError) {
        warn_limited!(
            "vhost-user queue {} of {}: guest broke the ring protocol, queue stopped: {e}",
            self.index,
            self.handler.name()
        );
        st.broken = true;
    }

    /// One taken request is finished (completed or dropped).
    fn untake(&self, st: &mut RingState) {
        st.taken = st.taken.saturating_sub(1);
        if st.stalled {
            st.stalled = false;
            let _ = self.resume.write(1);
        }
    }

    /// Read the chain of `head` into `descs` (scratch space). False when
    /// the guest's chain is bad: no status byte can be trusted, so the
    /// request is dropped and the queue stops.
    fn read_chain(&self, head: u16, descs: &mut Vec<Desc>) -> bool {
        if let Err(e) = self.ring_cfg.read_chain(&self.mem, head, descs) {
            let mut st = self.lock();
            self.fail(&mut st, e);
            self.untake(&mut st);
            return false;
        }
        true
    }

    /// Run one request and complete it; `descs` is scratch space.
    fn execute(&self, head: u16, descs: &mut Vec<Desc>) {
        if self.read_chain(head, descs) {
            self.process(head, descs);
        }
    }

    /// Run the request read into `descs` synchronously and complete it.
    fn process(&self, head: u16, descs: &[Desc]) {
        let c = self.handler.process(&self.mem, descs);
        if let Some(log) = &self.log {
            log_written(log, descs);
        }
        self.complete(head, c);
    }

    fn complete(&self, head: u16, c: Completion) {
        self.complete_all([(head, c)]);
    }

    /// Publish completions under one lock, with at most one interrupt.
    /// A broken queue still publishes the requests it took before the
    /// guest broke the ring: they ran, and a driver waiting on them (or
    /// its inflight record) must see them finish. Only taking new
    /// requests stops.
    fn complete_all(&self, done: impl IntoIterator<Item = (u16, Completion)>) {
        let mut st = self.lock();
        let mut any = false;
        let mut bad = false;
        for (head, c) in done {
            if let (Some(f), Some(tx)) = (c.failure, self.events.as_ref()) {
                if self.error_events.allow() {
                    let _ = tx.send(ExportEvent::IoError {
                        node_name: f
                            .node
                            .clone()
                            .unwrap_or_else(|| self.handler.name().to_string()),
                        operation: f.operation,
                        reason: f.reason,
                    });
                }
            }
            self.untake(&mut st);
            trace_point!(trace::virtio_blk_complete(
                self.handler.name(),
                self.index,
                head,
                c.status,
                c.used_len
            ));
            if let Some(inf) = st.inflight.as_ref() {
                inf.pre_put(head);
            }
            match st.ring.add_used(&self.mem, head, c.used_len) {
                Ok(()) => {
                    let used = st.ring.next_used();
                    if let Some(inf) = st.inflight.as_ref() {
                        inf.post_put(head, used);
                    }
                    any = true;
                }
                Err(e) => {
                    if !st.broken {
                        self.fail(&mut st, e);
                    }
                    bad = true;
                }
            }
        }
        let r = if bad {
            Ok(true)
        } else if any {
            st.ring.needs_notification(&self.mem)
        } else {
            Ok(false)
        };
        match r {
            Ok(true) => signal(&self.call),
            Ok(false) => {}
            Err(e) => {
                if !st.broken {
                    self.fail(&mut st, e);
                }
                // The element may be published; let the driver look.
                signal(&self.call);
            }
        }
    }

    /// Complete what the ring finished; how many.
    fn complete_reaped(&self, reaped: &mut Reaped) -> usize {
        let n = reaped.len();
        if n == 0 {
            return 0;
        }
        let done = reaped.drain(..).map(|((head, r, written), res)| {
            let c = self.handler.complete(&self.mem, &r, res);
            if let Some(log) = &self.log {
                written.log(log);
            }
            (head, c)
        });
        self.complete_all(done);
        n
    }

    /// Take every available request from the ring, up to the ring size in
    /// flight.
    fn pop_all(&self, out: &mut Vec<Job>) {
        let mut st = self.lock();
        if st.broken {
            return;
        }
        loop {
            if st.taken >= usize::from(st.ring.size()) {
                st.stalled = true;
                return;
            }
            let head = match st.ring.pop(&self.mem) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => return self.fail(&mut st, e),
            };
            st.taken += 1;
            if let Some(inf) = st.inflight.as_mut() {
                inf.get(head);
            }
            trace_point!(trace::virtio_blk_request(
                self.handler.name(),
                self.index,
                head
            ));
            out.push(Job { head });
        }
    }

    /// Whether the driver published requests that may be taken now.
    fn has_avail(&self) -> bool {
        let st = self.lock();
        !st.broken && !st.stalled && st.ring.has_avail(&self.mem).unwrap_or(false)
    }

    /// Watch the avail ring for up to `budget`; true when requests came.
    fn poll_avail(&self, budget: Duration) -> bool {
        let end = Instant::now() + budget;
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

    /// Re-enable notifications; true when new requests arrived meanwhile
    /// and may be taken now.
    fn rearm(&self) -> bool {
        let mut st = self.lock();
        if st.broken || st.stalled {
            return false;
        }
        match st.ring.enable_notification(&self.mem) {
            Ok(more) => more,
            Err(e) => {
                self.fail(&mut st, e);
                false
            }
        }
    }

    fn busy(&self) -> MutexGuard<'_, usize> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_done(&self) {
        let mut b = self.busy();
        *b = b.saturating_sub(1);
        if *b == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut b = self.busy();
        while *b > 0 {
            b = self.idle.wait(b).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Position the ring after a (re)connect and resubmit unfinished
    /// requests, oldest first, on this thread.
    fn recover(&self, base: u16) {
        let resubmit = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let r = st
                .ring
                .validate(&self.mem)
                .and_then(|()| st.ring.used_idx_in_memory(&self.mem));
            let used = match r {
                Ok(u) => u,
                Err(e) => return self.fail(st, e),
            };
            st.ring.set_next_used(used);
            let size = st.ring.size();
            let Some(rec) = st.inflight.as_mut().map(|i| i.recover(used, size, base)) else {
                return;
            };
            st.ring.set_next_avail(rec.next_avail);
            st.taken += rec.resubmit.len();
            rec.resubmit
        };
        if !resubmit.is_empty() {
            tracing::info!(
                "queue {}: resubmitting {} inflight requests",
                self.index,
                resubmit.len()
            );
        }
        let mut descs = Vec::new();
        for head in resubmit {
            self.execute(head, &mut descs);
        }
    }
}

/// The I/O threads of one queue.
struct Pool {
    tx: Option<Sender<Job>>,
    rx: Arc<Mutex<Receiver<Job>>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Chain scratch space of the queue thread.
    descs: Vec<Desc>,
}

impl Pool {
    fn new(shared: &Arc<Shared>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        Pool {
            tx: Some(tx),
            rx: Arc::new(Mutex::new(rx)),
            shared: shared.clone(),
            threads: Vec::new(),
            descs: Vec::new(),
        }
    }

    /// Make sure there is a thread for each request in flight.
    fn grow(&mut self, busy: usize) {
        let max = self.shared.handler.io_threads();
        while self.threads.len() < busy.min(max) {
            let s = self.shared.clone();
            let rx = self.rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("vu-q{}-io{}", s.index, self.threads.len()))
                .stack_size(256 << 10)
                .spawn(move || io_thread(&s, &rx));
            match t {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    warn_limited!("queue {}: cannot start I/O thread: {e}", self.shared.index);
                    return;
                }
            }
        }
    }

    /// Hand `job` to an I/O thread; when none can be started it is given
    /// back, counted busy, for the queue thread to run (then
    /// [`Shared::job_done`]).
    fn submit(&mut self, job: Job) -> Option<Job> {
        let busy = {
            let mut b = self.shared.busy();
            *b += 1;
            *b
        };
        self.grow(busy);
        match self.tx.as_ref() {
            Some(tx) if !self.threads.is_empty() => tx.send(job).err().map(|e| e.0),
            _ => Some(job),
        }
    }

    /// Run a request on the queue thread.
    fn run_here(&mut self, job: Job) {
        self.shared.execute(job.head, &mut self.descs);
    }

    fn shutdown(mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn io_thread(shared: &Shared, rx: &Mutex<Receiver<Job>>) {
    let mut descs = Vec::new();
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        shared.execute(job.head, &mut descs);
        shared.job_done();
    }
}

/// Where a queue's requests run.
struct Engines {
    pool: Pool,
    ring: Option<AioRing>,
    reaped: Reaped,
    /// Requests this thread completed since the last
    /// [`Engines::take_completed`] (the driver may answer them).
    completed: usize,
}

impl Engines {
    fn ring_busy(&self) -> usize {
        self.ring.as_ref().map_or(0, AioRing::in_flight)
    }

    /// How many requests this thread completed since the last call.
    fn take_completed(&mut self) -> usize {
        std::mem::take(&mut self.completed)
    }

    /// Hand `j` to the ring if the node's engine takes it as it is, else
    /// to the pool.
    /// The queue thread reads the chain to decide; a request left to the
    /// pool is read again by the I/O thread that runs it.
    fn submit(&mut self, shared: &Shared, j: Job) {
        if let Some(ring) = self.ring.as_mut() {
            let descs = &mut self.pool.descs;
            if !shared.read_chain(j.head, descs) {
                return;
            }
            let fd = ring.registered_fd();
            if let Some((r, target, iov)) = shared.handler.prepare(&shared.mem, descs, false, fd) {
                let written = Written::of(shared.log.as_ref(), descs);
                // SAFETY: the iovecs point into guest memory mapped by
                // `shared.mem`, which the queue thread holds until the
                // ring has returned every request (run() waits for them
                // before it returns; dropping the ring waits too).
                unsafe { ring.push(target, iov, (j.head, r, written)) };
                // Each request goes to the kernel at once rather than with
                // the rest of the kick: the disk starts on it while the
                // queue thread parses the next ones. One io_uring_enter
                // per kick kept the disk idle until the whole batch was
                // issued (the block layer plugs a multi-SQE submission);
                // at 4k random reads QD32 that was 11-13 % slower here
                // (fio submits one by one too).
                if let Err(e) = ring.submit() {
                    warn_limited!("queue {}: io_uring submit failed: {e}", shared.index);
                }
                return;
            }
        }
        if let Some(j) = self.pool.submit(j) {
            // No I/O thread: run it here, but only once the ring is empty.
            // Its requests may hold the range or `fd_mode` this one waits
            // for, and only this thread reaps them.
            if let Some(ring) = self.ring.as_mut() {
                ring.wait_all(&mut self.reaped);
                self.completed += shared.complete_reaped(&mut self.reaped);
            }
            self.pool.run_here(j);
            self.completed += 1;
            shared.job_done();
        }
    }

    /// Run a lone request on this thread, waiting for it (lowest latency
    /// at queue depth 1): on the ring if it takes it, else directly. A
    /// lone write runs directly: an asynchronous O_DIRECT write completes
    /// through the file system's workqueue, and at queue depth 1 that
    /// hop cost 10-25 % against `pwritev` (fio's io_uring against its
    /// psync shows the same on ext4). So does a large read (see
    /// [`virtio_blk::aio::LONE_RING_READ_MAX`]).
    fn run_alone(&mut self, shared: &Shared, j: Job) {
        self.completed += 1;
        let Some(ring) = self.ring.as_mut() else {
            return self.pool.run_here(j);
        };
        let descs = &mut self.pool.descs;
        if !shared.read_chain(j.head, descs) {
            return;
        }
        let fd = ring.registered_fd();
        let Some((r, target, iov)) = shared.handler.prepare(&shared.mem, descs, true, fd) else {
            return shared.process(j.head, descs);
        };
        let written = Written::of(shared.log.as_ref(), descs);
        // SAFETY: as in `submit`; and wait_all returns only once the
        // ring has given the request back.
        unsafe { ring.push(target, iov, (j.head, r, written)) };
        ring.wait_all(&mut self.reaped);
        shared.complete_reaped(&mut self.reaped);
    }

    /// Submit what was pushed and complete what is already finished.
    fn flush(&mut self, shared: &Shared) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        if let Err(e) = ring.submit() {
            warn_limited!("queue {}: io_uring submit failed: {e}", shared.index);
        }
        ring.reap(&mut self.reaped);
        self.completed += shared.complete_reaped(&mut self.reaped);
    }

    /// Wait for every request of the ring and the pool.
    fn wait_all(&mut self, shared: &Shared) {
        if let Some(ring) = self.ring.as_mut() {
            ring.wait_all(&mut self.reaped);
            shared.complete_reaped(&mut self.reaped);
        }
        shared.wait_idle();
    }
}

/// Take and run everything the ring offers until it is empty with
/// notifications re-enabled, or taking stalled at the in-flight limit
/// (then the completion that ends the stall writes `resume`).
///
/// Before re-enabling kicks, when it completed several requests, the
/// queue thread watches the avail ring for a moment ([`AVAIL_POLL`]): the
/// driver's answer is then taken without a kick.
fn drain(shared: &Shared, eng: &mut Engines, batch: &mut Vec<Job>, gate: &mut Gate<Job>) {
    loop {
        shared.pop_all(batch);
        gate.admit(shared.handler.throttle(), batch, |j| {
            throttle_cost(shared, j)
        });
        if batch.is_empty() {
            eng.flush(shared);
            if eng.take_completed() >= POLL_AFTER && shared.poll_avail(AVAIL_POLL) {
                continue;
            }
            if !shared.rearm() {
                eng.flush(shared);
                return;
            }
            continue;
        }
        if batch.len() == 1 && *shared.busy() == 0 && eng.ring_busy() == 0 {
            if let Some(j) = batch.pop() {
                eng.run_alone(shared, j);
            }
        } else {
            for j in batch.drain(..) {
                eng.submit(shared, j);
            }
        }
    }
}

/// What `j` costs the export's throttle group (its chain read once more
/// by the thread that runs it).
fn throttle_cost(shared: &Shared, j: &Job) -> Cost {
    let mut descs = Vec::new();
    match shared.ring_cfg.read_chain(&shared.mem, j.head, &mut descs) {
        Ok(()) => shared.handler.cost(&shared.mem, &descs),
        Err(_) => Cost::Free,
    }
}

/// Run the throttled requests whose turn came (all of them when `all`).
fn release_throttled(shared: &Shared, eng: &mut Engines, gate: &mut Gate<Job>, all: bool) {
    let mut batch = Vec::new();
    if all {
        gate.release_all(&mut batch);
    } else {
        gate.release(shared.handler.throttle(), &mut batch);
    }
    for j in batch {
        eng.submit(shared, j);
    }
    eng.flush(shared);
}

fn run(p: QueueParams, mut stop: File) -> u16 {
    let kick = p.kick;
    let base = p.base;
    let resume = match EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("queue {}: cannot create an eventfd: {e}", p.index);
            return base;
        }
    };
    let shared = Arc::new(Shared {
        index: p.index,
        mem: p.mem,
        handler: p.handler,
        ring_cfg: p.ring,
        call: p.call,
        events: p.events,
        error_events: RateLimit::new(),
        state: Mutex::new(RingState {
            ring: Vring::new(p.ring, p.base, p.event_idx).with_log(p.log.clone()),
            inflight: p.inflight,
            broken: false,
            taken: 0,
            stalled: false,
        }),
        busy: Mutex::new(0),
        idle: Condvar::new(),
        resume,
        log: p.log,
    });
    shared.recover(base);
    // The call fd may have changed (or arrived after the kick, as QEMU
    // sends it): one spurious interrupt is harmless, a lost one stalls the
    // driver.
    signal(&shared.call);
    let mut eng = Engines {
        pool: Pool::new(&shared),
        ring: open_ring(&shared),
        reaped: Vec::new(),
        completed: 0,
    };
    let mut batch = Vec::new();
    let mut gate = Gate::default();
    // Requests may already be waiting (kicked before we started).
    drain(&shared, &mut eng, &mut batch, &mut gate);
    let mut buf = [0u8; 8];
    loop {
        let ring_fd = eng.ring.as_ref().map(AsRawFd::as_raw_fd);
        let (kick_ready, stop_ready, resume_ready, ring_ready) = {
            // SAFETY: the ring fd stays open while `eng.ring` lives, which
            // outlasts this poll.
            let ring_fd = ring_fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
            let mut fds = vec![
                PollFd::new(kick.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(shared.resume.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(fd) = ring_fd.filter(|_| eng.ring_busy() > 0) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            let ready =
                |f: Option<&PollFd<'_>>| f.and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
            let timeout = gate.timeout().map_or(PollTimeout::NONE, |t| {
                // Rounded up: waking early only polls again.
                let ms = t.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            });
            match poll(&mut fds, timeout) {
                Ok(_) => (
                    ready(fds.first()),
                    ready(fds.get(1)),
                    ready(fds.get(2)),
                    ready(fds.get(3)),
                ),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("queue {}: poll failed: {e}", shared.index);
                    break;
                }
            }
        };
        if stop_ready {
            let _ = stop.read(&mut buf);
            break;
        }
        let mut more = false;
        if ring_ready {
            eng.flush(&shared);
            more = eng.take_completed() >= POLL_AFTER && shared.poll_avail(AVAIL_POLL);
        }
        if resume_ready {
            let _ = shared.resume.read();
        }
        if kick_ready && (&kick).read(&mut buf).is_err() {
            // Spurious wakeup or a bad fd: avoid spinning on a broken fd.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if gate.due() {
            release_throttled(&shared, &mut eng, &mut gate, false);
        }
        if kick_ready || resume_ready || more {
            drain(&shared, &mut eng, &mut batch, &mut gate);
        }
    }
    release_throttled(&shared, &mut eng, &mut gate, true);
    eng.wait_all(&shared);
    eng.pool.shutdown();
    let next = shared.lock().ring.next_avail();
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::null::NullDriver;
    use crate::block::Node;
    use crate::virtio_blk::BlkConfig;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn shared(mem: &Arc<Mem>, size: u16) -> Shared {
        let node = Arc::new(Node::new(
            "n".into(),
            Box::new(NullDriver::new(1 << 20)),
            false,
        ));
        let blk = BlkConfig::new(&node, 1, true, "s", 512);
        let handler: Arc<dyn RequestHandler> =
            Arc::new(crate::virtio_blk::BlkHandler::new(node, Arc::new(blk)));
        let ring = VringConfig {
            size,
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
        };
        Shared {
            index: 0,
            mem: mem.clone(),
            handler,
            ring_cfg: ring,
            call: None,
            events: None,
            error_events: RateLimit::new(),
            state: Mutex::new(RingState {
                ring: Vring::new(ring, 0, false),
                inflight: None,
                broken: false,
                taken: 0,
                stalled: false,
            }),
            busy: Mutex::new(0),
            idle: Condvar::new(),
            resume: EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap(),
            log: None,
        }
    }

    /// The guest offers head 0 `n` more times (avail index now `idx`).
    fn offer(m: &Mem, idx: &mut u16, n: u16, size: u16) {
        for _ in 0..n {
            let slot = u64::from(*idx % size);
            m.write_obj(0u16, GuestAddress(0x2000 + 4 + 2 * slot))
                .unwrap();
            *idx = idx.wrapping_add(1);
        }
        m.write_obj(*idx, GuestAddress(0x2002)).unwrap();
    }

    #[test]
    fn a_guest_republishing_heads_gets_no_more_than_the_ring_size_taken() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let s = shared(&mem, 8);
        let mut idx = 0u16;
        let mut jobs = Vec::new();
        offer(&mem, &mut idx, 8, 8);
        s.pop_all(&mut jobs);
        assert_eq!(jobs.len(), 8);
        // The same head again, although none completed: not taken.
        offer(&mem, &mut idx, 8, 8);
        s.pop_all(&mut jobs);
        assert_eq!(jobs.len(), 8);
        assert!(!s.rearm(), "a stalled queue must wait for a completion");
        assert!(s.resume.read().is_err(), "woken before any completion");
        // One completes: the queue is woken and takes exactly one more.
        s.complete(
            0,
            Completion {
                used_len: 0,
                status: None,
                failure: None,
            },
        );
        assert_eq!(s.resume.read().unwrap(), 1);
        s.pop_all(&mut jobs);
        assert_eq!(jobs.len(), 9);
    }

    #[test]
    fn io_threads_are_shared_out_among_queues_within_the_export_limit() {
        assert_eq!(io_threads_per_queue(1), EXPORT_MAX_IO_THREADS);
        assert_eq!(io_threads_per_queue(16), EXPORT_MAX_IO_THREADS / 16);
        assert_eq!(io_threads_per_queue(0), EXPORT_MAX_IO_THREADS);
        assert_eq!(io_threads_per_queue(u16::MAX), 1);
        for n in 1..=256u16 {
            assert!(
                io_threads_per_queue(n) * usize::from(n)
                    <= EXPORT_MAX_IO_THREADS.max(usize::from(n))
            );
        }
    }
}
