//! The source of a live migration: pre-copy on a thread of its own.
//!
//! Setup turns dirty logging on (KVM on every RAM slot, the vhost-user log
//! in the devices) and writes the stream header; pass 1 sends all RAM
//! (zero pages as zero records), each later pass the pages dirtied during
//! the previous one, within `max-bandwidth`. Once the dirty RAM left fits
//! `downtime-limit` at the measured bandwidth, the VM stops
//! (`finish-migrate`), the status goes to `device` and the broker is told
//! ([`MigrationEvent::ReadyForSwitchover`]); on its
//! [`MigrationRequest::Switchover`](ipc_proto::migration::MigrationRequest)
//! the last dirty pages, the device state and the end go out, and the
//! target's one-byte acknowledgement (on a socket) completes it: the VM
//! stays stopped (`postmigrate`). A cancel or an error turns logging off
//! and resumes a VM the migration stopped.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipc_proto::envelope::error_chain;
use ipc_proto::migration::{dirty_log_size, MigrationEvent, MigrationParams, MigrationStatus};
use ipc_proto::migstream::{Header, StreamWriter, ACK, FLAG_ACK, MAX_RUN};
use ipc_proto::vcpu::RunState;
use ipc_proto::FlatError;

use super::dirty::{self, DirtyLog, DirtyPages, PAGE};
use super::progress::{ms, Progress};
use super::ram::{self, RunSent};
use super::wire::{self, WireOut};
use super::{lock, Shared};
use crate::memory::GuestMemoryMmap;
use crate::runstate::Input;
use crate::state::StateError;
use crate::virtio::dirty_log::VhostLog;
use crate::virtio::suspend::SuspendError;

/// QEMU's rate-limit window (the throughput, `mbps` and
/// `pages-per-second`, is measured over it too).
const WINDOW: Duration = Duration::from_millis(100);
/// Bytes the stream's small records are buffered in (runs of pages go
/// from guest RAM to the fd).
const BUFFER: usize = 256 << 10;
/// How long the switchover waits for a device's backend to come back.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);
/// Bytes sent between two updates of the statistics (and of the
/// parameters the thread reads).
const UPDATE_EVERY: u64 = 1 << 20;

/// Where the migration is, as the dispatcher steers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Copying,
    AwaitingSwitchover,
    SwitchingOver,
}

/// The running outgoing migration, shared with the dispatcher.
#[derive(Debug)]
pub struct Control {
    /// Its statistics.
    pub progress: Arc<Progress>,
    params: Mutex<MigrationParams>,
    cancel: AtomicBool,
    phase: Mutex<Phase>,
    wake: Condvar,
    /// A dup of the stream, shut down on cancel so blocked writes return.
    stream: OwnedFd,
}

impl Control {
    /// New parameters (`migrate-set-parameters` while it runs).
    pub fn set_params(&self, p: MigrationParams) {
        *self.params.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    fn params(&self) -> MigrationParams {
        *self.params.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker released the disks: send the rest.
    pub fn switchover(&self) -> Result<(), FlatError> {
        let mut p = self.phase();
        if *p != Phase::AwaitingSwitchover {
            return Err(FlatError::generic(
                "the migration is not waiting for the switchover",
            ));
        }
        *p = Phase::SwitchingOver;
        self.wake.notify_all();
        Ok(())
    }

    /// `migrate_cancel`: the thread stops at its next check; a write
    /// blocked on the stream returns (the socket is shut down).
    pub fn cancel(&self) {
        if self.cancel.swap(true, Ordering::SeqCst) {
            return;
        }
        self.progress.set_status(MigrationStatus::Cancelling, None);
        // ENOTSOCK for a pipe or file: the thread sees the flag after its
        // current write.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            nix::sys::socket::Shutdown::Both,
        );
        let _p = self.phase();
        self.wake.notify_all();
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`; true when cancelled meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let p = self.phase();
        if self.cancelled() {
            return true;
        }
        drop(
            self.wake
                .wait_timeout(p, d)
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.cancelled()
    }

    /// From now on a switchover is accepted (before the broker is told).
    fn accept_switchover(&self) {
        *self.phase() = Phase::AwaitingSwitchover;
    }

    /// Waits for the switchover; false when cancelled.
    fn await_switchover(&self) -> bool {
        let mut p = self.phase();
        while *p == Phase::AwaitingSwitchover && !self.cancelled() {
            p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        !self.cancelled()
    }
}

/// Why the thread stopped early.
enum Stop {
    Cancelled,
    Failed(String),
}

fn fail(e: &dyn std::error::Error) -> Stop {
    Stop::Failed(error_chain(e))
}

fn is_socket(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .unwrap_or(false)
}

/// Sets TCP_NODELAY when `fd` is a TCP socket (the stream's last small
/// write must not wait for a delayed ACK); other fds refuse it, harmlessly.
fn no_delay(fd: &OwnedFd) {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on an fd this function borrows, with a
    // pointer to a c_int that outlives the call and its exact size.
    let _ = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Starts migrating the VM out over `stream`, with the vhost-user dirty
/// log in the memfd `log`. The thread hands the log to the devices (that
/// may wait for their backends), so a device that cannot log its writes
/// fails the migration in `setup`.
pub fn start(
    controller: &Shared,
    stream: OwnedFd,
    log: OwnedFd,
    params: MigrationParams,
    progress: Arc<Progress>,
) -> Result<Arc<Control>, FlatError> {
    let c = lock(controller);
    let vm = c.vm();
    let layout = dirty::layout(&vm.mem);
    let encoder = ram::PageEncoder::new(&params, layout.total())
        .map_err(|e| FlatError::generic(format!("migration: {}", error_chain(&e))))?;
    let vhost = VhostLog::map(log, dirty_log_size(layout.total()))
        .map(Arc::new)
        .map_err(|e| FlatError::generic(format!("migration: {}", error_chain(&e))))?;
    let dup = stream.try_clone().map_err(|e| {
        FlatError::generic(format!("migration: cannot duplicate the stream fd: {e}"))
    })?;
    no_delay(&stream);
    wire::large_send_buffer(&stream);
    let ctl = Arc::new(Control {
        progress,
        params: Mutex::new(params),
        cancel: AtomicBool::new(false),
        phase: Mutex::new(Phase::Copying),
        wake: Condvar::new(),
        stream: dup,
    });
    let ack = is_socket(&stream);
    let file = File::from(stream);
    let back = if ack {
        Some(file.try_clone().map_err(|e| {
            FlatError::generic(format!("migration: cannot duplicate the stream fd: {e}"))
        })?)
    } else {
        None
    };
    let source = Source {
        ctl: ctl.clone(),
        controller: controller.clone(),
        vm: vm.fd.clone(),
        mem: vm.mem.clone(),
        sync: vm.sync.clone(),
        vhost,
        out: Some(file),
        back,
        counts: Counts::default(),
        encoder,
        stopped_at: None,
    };
    ctl.progress.set_status(MigrationStatus::Setup, None);
    let spawned = std::thread::Builder::new()
        .name("migration-out".into())
        .spawn(move || source.run());
    if let Err(e) = spawned {
        let e = format!("migration: cannot start its thread: {e}");
        ctl.progress
            .set_status(MigrationStatus::Failed, Some(e.clone()));
        return Err(FlatError::generic(e));
    }
    Ok(ctl)
}

/// Pages sent so far.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    duplicate: u64,
    normal: u64,
    /// XBZRLE deltas.
    delta: u64,
}

impl Counts {
    fn add(&mut self, r: RunSent) {
        self.duplicate += r.zero;
        self.normal += r.whole;
        self.delta += r.delta;
    }

    /// Pages that went out in some form (QEMU's
    /// `ram_get_total_transferred_pages`).
    fn transferred(&self) -> u64 {
        self.duplicate + self.normal + self.delta
    }
}

/// The migration thread's own state.
struct Source {
    ctl: Arc<Control>,
    controller: Shared,
    vm: Arc<kvm_ioctls::VmFd>,
    mem: GuestMemoryMmap,
    sync: Arc<crate::vcpu::VcpuSync>,
    vhost: Arc<VhostLog>,
    out: Option<File>,
    back: Option<File>,
    counts: Counts,
    encoder: ram::PageEncoder,
    /// Bytes written when the guest stopped for the switchover.
    stopped_at: Option<u64>,
}

type Writer = StreamWriter<WireOut>;

/// Throughput over one window.
#[derive(Debug, Clone, Copy)]
struct Rates {
    bytes_per_s: f64,
    pages_per_s: f64,
}

/// The rate limit and the throughput, over QEMU's 100 ms windows: a
/// window may send `limit / 10` bytes; once they are spent, the rest of
/// the window is slept off. Runs are cut to what the window has left (but
/// not below [`MIN_RUN`] pages, so a tiny limit still moves a run per
/// window, as QEMU moves a page), and what a run sends beyond it is taken
/// from the next window (up to a whole one), so `max-bandwidth` holds on
/// average.
struct Meter {
    window: Instant,
    window_bytes: u64,
    window_pages: u64,
    /// Bytes the last window sent beyond its budget.
    debt: u64,
}

/// The fewest pages a run is cut to by the rate limit.
const MIN_RUN: u32 = 64;

impl Meter {
    fn new(written: u64, pages: u64) -> Self {
        Meter {
            window: Instant::now(),
            window_bytes: written,
            window_pages: pages,
            debt: 0,
        }
    }

    /// Bytes the window has spent against its budget.
    fn spent(&self, written: u64) -> u64 {
        written - self.window_bytes + self.debt
    }

    /// The longest run to send now under `limit` (bytes per second, 0
    /// for none).
    fn max_run(&self, written: u64, limit: u64) -> u32 {
        if limit == 0 {
            return MAX_RUN;
        }
        let left = (limit / 10).saturating_sub(self.spent(written));
        let pages = u32::try_from(left.div_ceil(PAGE)).unwrap_or(u32::MAX);
        pages.clamp(MIN_RUN, MAX_RUN)
    }

    /// Ends the window when it is over, or when its budget is spent (the
    /// rest of it slept off); returns the window's rates.
    fn tick(
        &mut self,
        written: u64,
        pages: u64,
        limit: u64,
        ctl: &Control,
    ) -> Result<Option<Rates>, Stop> {
        let budget = limit / 10;
        let spent = self.spent(written);
        let mut elapsed = self.window.elapsed();
        if elapsed < WINDOW && (limit == 0 || spent < budget) {
            return Ok(None);
        }
        if elapsed < WINDOW {
            if ctl.sleep(WINDOW - elapsed) {
                return Err(Stop::Cancelled);
            }
            elapsed = self.window.elapsed();
        }
        let secs = elapsed.as_secs_f64();
        let rates = Rates {
            bytes_per_s: (written - self.window_bytes) as f64 / secs,
            pages_per_s: (pages - self.window_pages) as f64 / secs,
        };
        *self = Meter::new(written, pages);
        if limit > 0 {
            self.debt = spent.saturating_sub(budget).min(budget);
        }
        Ok(Some(rates))
    }
}

impl Source {
    fn run(mut self) {
        let result = self.migrate();
        self.finish(result);
    }

    fn check(&self) -> Result<(), Stop> {
        if self.ctl.cancelled() {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }

    /// An error, unless it came from a cancel.
    fn err(&self, e: &dyn std::error::Error) -> Stop {
        if self.ctl.cancelled() {
            Stop::Cancelled
        } else {
            fail(e)
        }
    }

    fn migrate(&mut self) -> Result<(), Stop> {
        let p = self.ctl.progress.clone();
        let layout = dirty::layout(&self.mem);
        lock(&self.controller)
            .vm()
            .devices
            .start_dirty_log(&self.vhost)
            .map_err(|e| fail(&e))?;
        let mut log = DirtyLog::start(self.vm.clone(), self.mem.clone(), self.vhost.clone())
            .map_err(|e| fail(&e))?;
        let mut epoch = self.sync.epoch();
        let header = Header {
            flags: if self.back.is_some() { FLAG_ACK } else { 0 },
            layout: layout.clone(),
        };
        let file = self
            .out
            .take()
            .ok_or_else(|| Stop::Failed("the stream is gone".into()))?;
        let mut w =
            StreamWriter::start(WireOut::new(file, BUFFER), &header).map_err(|e| self.err(&e))?;
        let setup_ms = p.elapsed_ms();
        p.update(|s| s.setup_time_ms = setup_ms);
        p.set_status(MigrationStatus::Active, None);

        // Pass 1: everything.
        let mut dirty = DirtyPages::all(&layout);
        let mut passes = 1u64;
        self.pass(&mut w, passes)?;
        let mut meter = Meter::new(w.written(), 0);
        let mut bandwidth: Option<f64> = None;
        let mut last_sync = Instant::now();
        let (mut prev_remaining, mut extra_passes) = (u64::MAX, 0u32);
        loop {
            let (t0, b0) = (Instant::now(), w.written());
            self.send(&mut w, &mut dirty, &mut meter, true)?;
            let new = self.sync_dirty(&log, &mut dirty, &mut epoch)?;
            let now = Instant::now();
            let pass_secs = now.duration_since(t0).as_secs_f64();
            if w.written() > b0 && pass_secs > 0.0 {
                bandwidth = Some((w.written() - b0) as f64 / pass_secs);
            }
            let rate = new as f64 / now.duration_since(last_sync).as_secs_f64().max(1e-6);
            last_sync = now;
            let remaining = dirty.count() * PAGE;
            let limit_ms = self.ctl.params().downtime_limit_ms;
            let expected_ms = bandwidth.map(|bw| (remaining as f64 * 1000.0 / bw) as u64);
            // QEMU's test: nothing left, or less than the bandwidth moves
            // within the downtime limit (strictly: a limit of 0 waits for
            // a clean pass).
            let fits =
                bandwidth.is_some_and(|bw| (remaining as f64) < bw * limit_ms as f64 / 1000.0);
            p.update(|s| {
                s.ram.remaining = remaining;
                s.ram.dirty_pages_rate = rate as u64;
                s.expected_downtime_ms = expected_ms;
            });
            self.check()?;
            if remaining == 0
                || (fits && !worth_another_pass(remaining, prev_remaining, extra_passes))
            {
                break;
            }
            if fits {
                extra_passes += 1;
            }
            prev_remaining = remaining;
            passes += 1;
            self.pass(&mut w, passes)?;
        }

        // Converged: stop the guest and wait for the broker's disks.
        let stopped = Instant::now();
        let precopy = w.written();
        self.stopped_at = Some(precopy);
        p.update(|s| s.ram.precopy_bytes = precopy);
        {
            let mut c = lock(&self.controller);
            c.handle(Input::MigrateBegin).map_err(|e| fail(&e))?;
            // A vCPU that did not park crashes the VM instead.
            let state = c.status().status;
            if state != RunState::FinishMigrate {
                return Err(Stop::Failed(format!(
                    "the VM did not stop for the switchover (it is {})",
                    state.as_str()
                )));
            }
        }
        p.set_status(MigrationStatus::Device, None);
        self.ctl.accept_switchover();
        p.emit(MigrationEvent::ReadyForSwitchover);
        if !self.ctl.await_switchover() {
            return Err(Stop::Cancelled);
        }
        // The device state first: capturing it stops the devices' rings,
        // so every backend write to RAM is in the log before the last
        // sync takes it.
        let state = self.save_state()?;
        self.sync_dirty(&log, &mut dirty, &mut epoch)?;
        log.stop().map_err(|e| fail(&e))?;
        self.encoder.last_stage();
        self.send(&mut w, &mut dirty, &mut meter, false)?;
        w.end_of_ram().map_err(|e| self.err(&e))?;
        self.update(&w, &dirty, None);
        w.device_state(&state).map_err(|e| self.err(&e))?;
        w.end().map_err(|e| self.err(&e))?;
        let transferred = w.written();
        p.update(|s| s.ram.transferred = transferred);
        self.wait_ack()?;
        let downtime = ms(stopped.elapsed());
        let total_ms = p.elapsed_ms();
        p.update(|s| {
            s.downtime_ms = Some(downtime);
            s.ram.remaining = 0;
            // QEMU's figure at completion: all bytes over the time after
            // setup.
            let transfer_ms = total_ms.saturating_sub(s.setup_time_ms).max(1);
            s.ram.mbps = s.ram.transferred as f64 * 8.0 / transfer_ms as f64 / 1000.0;
        });
        Ok(())
    }

    /// The device state; a device whose backend is being reconnected (a
    /// block-proc or net-proc killed just before) is waited for, up to
    /// [`RECONNECT_WAIT`].
    fn save_state(&self) -> Result<Vec<u8>, Stop> {
        let deadline = Instant::now() + RECONNECT_WAIT;
        loop {
            match crate::state::save(lock(&self.controller).vm()) {
                Ok(state) => return Ok(state),
                Err(StateError::Virtio(SuspendError::Disconnected(_)))
                    if Instant::now() < deadline =>
                {
                    if self.ctl.sleep(Duration::from_millis(20)) {
                        return Err(Stop::Cancelled);
                    }
                }
                Err(e) => return Err(fail(&e)),
            }
        }
    }

    /// Adds the pages written since the last sync to `dirty`; all RAM
    /// after a machine reset (the kernel reloaded by the host is not in
    /// KVM's log). Returns how many pages were new.
    fn sync_dirty(
        &self,
        log: &DirtyLog,
        dirty: &mut DirtyPages,
        epoch: &mut u64,
    ) -> Result<u64, Stop> {
        let before = dirty.count();
        log.sync(dirty).map_err(|e| fail(&e))?;
        let now = self.sync.epoch();
        if now != *epoch {
            *epoch = now;
            dirty.merge(&DirtyPages::all(&dirty::layout(&self.mem)));
        }
        Ok(dirty.count() - before)
    }

    /// Marks the start of pass `n` in the stream and in the statistics.
    fn pass(&mut self, w: &mut Writer, n: u64) -> Result<(), Stop> {
        w.pass(n).map_err(|e| self.err(&e))?;
        self.encoder.begin_pass(n);
        self.ctl.progress.update(|s| s.ram.dirty_sync_count = n);
        self.ctl.progress.emit(MigrationEvent::Pass { count: n });
        Ok(())
    }

    /// Sends every page of `dirty`, rate-limited by `meter` when
    /// `limited`, in runs of consecutive pages.
    fn send(
        &mut self,
        w: &mut Writer,
        dirty: &mut DirtyPages,
        meter: &mut Meter,
        limited: bool,
    ) -> Result<(), Stop> {
        let mut params = self.ctl.params();
        self.encoder
            .resize(params.xbzrle_cache_size)
            .map_err(|e| fail(&e))?;
        let mut next_update = w.written() + UPDATE_EVERY;
        let mut rates = None;
        let mut limit = if limited { params.max_bandwidth } else { 0 };
        while let Some((gpa, count)) = dirty.take_run(meter.max_run(w.written(), limit)) {
            self.check()?;
            let sent = self
                .encoder
                .encode_run(w, &self.mem, gpa, count)
                .map_err(|e| self.err(&e))?;
            self.counts.add(sent);
            if let Some(r) = meter.tick(w.written(), self.counts.transferred(), limit, &self.ctl)? {
                rates = Some(r);
            }
            if w.written() >= next_update || rates.is_some() {
                next_update = w.written() + UPDATE_EVERY;
                // New `max-bandwidth` or `xbzrle-cache-size`
                // (`migrate-set-parameters`).
                params = self.ctl.params();
                limit = if limited { params.max_bandwidth } else { 0 };
                self.encoder
                    .resize(params.xbzrle_cache_size)
                    .map_err(|e| fail(&e))?;
                self.update(w, dirty, rates.take());
            }
        }
        self.update(w, dirty, rates);
        // The pass leaves the buffer (and the target sees progress).
        w.flush().map_err(|e| self.err(&e))
    }

    /// Publishes the counters (and the rates of a window that ended).
    fn update(&self, w: &Writer, dirty: &DirtyPages, rates: Option<Rates>) {
        let (c, written, remaining) = (self.counts, w.written(), dirty.count() * PAGE);
        let xbzrle = self.encoder.xbzrle_stats();
        let stopped_at = self.stopped_at;
        self.ctl.progress.update(|s| {
            s.xbzrle = xbzrle;
            s.ram.transferred = written;
            s.ram.remaining = remaining;
            s.ram.duplicate = c.duplicate;
            s.ram.normal = c.normal;
            s.ram.normal_bytes = c.normal * PAGE;
            match stopped_at {
                None => s.ram.precopy_bytes = written,
                Some(at) => s.ram.downtime_bytes = written - at,
            }
            if let Some(r) = rates {
                s.ram.mbps = r.bytes_per_s * 8.0 / 1e6;
                s.ram.pages_per_second = r.pages_per_s as u64;
            }
        });
    }

    /// Waits for the target's acknowledgement (sockets only).
    fn wait_ack(&mut self) -> Result<(), Stop> {
        let Some(back) = self.back.as_mut() else {
            return Ok(());
        };
        let mut b = [0u8; 1];
        match back.read(&mut b) {
            Ok(1) if b[0] == ACK => Ok(()),
            Ok(1) => Err(Stop::Failed(format!(
                "the target answered {:#04x} instead of its acknowledgement",
                b[0]
            ))),
            Ok(_) => Err(if self.ctl.cancelled() {
                Stop::Cancelled
            } else {
                Stop::Failed("the target closed the connection before loading the VM".into())
            }),
            Err(e) => Err(self.err(&e)),
        }
    }

    /// Dirty logging off, the status, the run state.
    fn finish(self, result: Result<(), Stop>) {
        let p = &self.ctl.progress;
        let mut c = lock(&self.controller);
        if let Err(e) = c.vm().devices.stop_dirty_log() {
            tracing::warn!("cannot stop the devices' dirty log: {}", error_chain(&e));
        }
        let completed = match result {
            Ok(()) => {
                p.set_status(MigrationStatus::Completed, None);
                true
            }
            Err(Stop::Cancelled) => {
                p.set_status(MigrationStatus::Cancelled, None);
                false
            }
            Err(Stop::Failed(e)) => {
                tracing::warn!("outgoing migration failed: {e}");
                p.set_status(MigrationStatus::Failed, Some(e));
                false
            }
        };
        if let Err(e) = c.handle(Input::MigrateEnd { completed }) {
            tracing::warn!("cannot end the migration's run state: {e}");
        }
    }
}

/// Dirty RAM below which one more pass is not worth its time.
const SMALL_REMAINDER: u64 = 256 * PAGE;
/// Passes after the remainder first fit the downtime limit, at most.
const MAX_EXTRA_PASSES: u32 = 8;

/// Beyond QEMU's test: once the remainder fits the downtime limit, one
/// more pass while the guest runs is worth it as long as the dirty set
/// still at least halves per pass (the guest dirties less than half of
/// what a pass sends) and is not already small: the guest is stopped for
/// the last, smaller remainder. Bounded, so a guest whose dirty set stops
/// shrinking switches over at once.
fn worth_another_pass(remaining: u64, prev_remaining: u64, extra_passes: u32) -> bool {
    remaining > SMALL_REMAINDER
        && remaining.saturating_mul(2) < prev_remaining
        && extra_passes < MAX_EXTRA_PASSES
}

#[cfg(test)]
mod convergence_tests {
    use super::*;

    #[test]
    fn a_shrinking_large_remainder_gets_another_pass_within_the_bound() {
        assert!(worth_another_pass(100 << 20, u64::MAX, 0));
        assert!(worth_another_pass(10 << 20, 30 << 20, 3));
        assert!(!worth_another_pass(10 << 20, 30 << 20, MAX_EXTRA_PASSES));
    }

    #[test]
    fn a_small_or_stalled_remainder_switches_over() {
        assert!(!worth_another_pass(SMALL_REMAINDER, u64::MAX, 0));
        assert!(!worth_another_pass(20 << 20, 30 << 20, 0));
    }
}
