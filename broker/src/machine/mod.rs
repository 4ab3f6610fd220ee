//! The VM as the broker sees it: its desired state, the live workers, and
//! the handle every QMP command uses to reach them ([`Machine`]).
//!
//! - [`vm_setup`]: opens what needs privilege (/dev/kvm, guest memory,
//!   kernel, serial) and builds vcpu-proc's `CreateVm` request.
//! - [`policy`]: what happens when a worker exits (restart with backoff, or
//!   guest crash).
//! - [`devices`]: the guest devices and their vhost-user backends.
//! - [`media`]: the SCSI drives' media, trays and guest locks.
//! - [`netdevs`]: netdevs, net-proc's NICs and net-proc's life.
//! - [`liveness`]: the ping that finds hung workers.
//! - [`no_vm`]: the run state of `-machine none` (no guest, no vcpu-proc).
//! - [`host_memory`]: whether the host can provide `-m`.
//! - [`host_tids`]: host thread ids of a worker's threads.
//! - [`stats_carry`]: block statistics carried across block-proc lifetimes.
//! - [`start_gate`]: whether start-up is over, for commands that arrive
//!   before the workers are up.
//! - [`trace_state`]: the trace points wanted on (desired state, replayed
//!   into restarted workers) and the `trace-event-*` rules.

pub mod announce;
pub mod bitmaps;
pub mod block_limits;
pub mod block_state;
pub mod cpu_slots;
pub mod devices;
pub mod dump;
pub mod event_names;
pub mod fdsets;
pub mod host_memory;
pub mod host_tids;
pub mod images;
pub mod jobs;
pub mod liveness;
pub mod media;
pub mod migration;
pub mod netdevs;
pub mod no_vm;
pub mod policy;
pub mod quorum_state;
pub mod rocker;
pub mod serial_pty;
pub mod start_gate;
pub mod stats_carry;
pub mod trace_state;
pub mod vm_setup;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest};
use ipc_proto::vcpu::{RunState, StatusInfo, VcpuEvent, VcpuReply, VcpuRequest};
use ipc_proto::FlatError;
use serde_json::json;

use crate::cli::Config;
use crate::qmp::events::EventBus;
use crate::workers::link::WorkerLink;
use crate::workers::spawn::SpawnedWorker;
use crate::workers::supervisor::Supervisor;

/// The link to vcpu-proc.
pub type VcpuLink = WorkerLink<VcpuRequest, VcpuReply, VcpuEvent>;
/// The link to block-proc.
pub type BlockLink = WorkerLink<BlockRequest, BlockReply, BlockEvent>;
/// The link to net-proc.
pub type NetLink =
    WorkerLink<ipc_proto::net::NetRequest, ipc_proto::net::NetReply, ipc_proto::net::NetEvent>;

/// Why the broker should end, and with which exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitRequest {
    /// `quit` over QMP: status 0.
    Quit,
    /// The guest shut down (without `-no-shutdown`): status 0.
    GuestShutdown,
    /// The guest wrote to the debug-exit port: status `(code << 1) | 1`.
    DebugExit(u32),
    /// SIGTERM, SIGINT or SIGHUP: status 0.
    Signal(i32),
    /// The VM could not be started: status 1.
    StartFailed,
}

impl ExitRequest {
    /// The broker's exit status for this request.
    pub fn exit_status(self) -> u8 {
        match self {
            ExitRequest::Quit | ExitRequest::GuestShutdown | ExitRequest::Signal(_) => 0,
            ExitRequest::DebugExit(code) => (((code << 1) | 1) & 0xff) as u8,
            ExitRequest::StartFailed => 1,
        }
    }
}

/// A running worker: the process guard and its link.
pub struct Worker<L> {
    /// The process (killed and reaped on drop).
    pub process: SpawnedWorker,
    /// The control channel.
    pub link: Arc<L>,
    /// Which publication this is: exits of any other are not this slot's.
    pub generation: u64,
}

/// How long an ending broker lets its workers exit by themselves (their
/// control channels closed) before it SIGKILLs them.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The VM: configuration, workers and the event bus.
pub struct Machine {
    config: Config,
    events: Arc<EventBus>,
    supervisor: Arc<Supervisor>,
    exit_tx: Mutex<Sender<ExitRequest>>,
    pub(crate) vcpu: Mutex<Option<Worker<VcpuLink>>>,
    pub(crate) block: Mutex<Option<Worker<BlockLink>>>,
    /// net-proc, once a TAP netdev asked for it.
    pub(crate) net: Mutex<Option<Worker<NetLink>>>,
    /// The desired netdevs and NICs (replayed into a restarted net-proc).
    pub(crate) netdevs: Mutex<netdevs::NetState>,
    /// Held while net-proc is started or restarted: one at a time.
    pub(crate) net_start: Mutex<()>,
    /// This machine, for what must start a worker from a `&Machine`.
    me: std::sync::OnceLock<std::sync::Weak<Machine>>,
    /// Set once vcpu-proc died unexpectedly: the guest crashed.
    vcpu_crashed: AtomicBool,
    /// Set when the broker is ending: worker exits are expected then.
    ending: AtomicBool,
    pub(crate) restart: Mutex<policy::Backoff>,
    /// The desired guest devices.
    pub(crate) devices: Mutex<devices::DeviceState>,
    /// The SCSI drives' media, trays and locks (desired state).
    pub(crate) media: Mutex<media::MediaState>,
    /// Told a short state description on every run-state change (systemd's
    /// `STATUS=`).
    status_hook: std::sync::OnceLock<StatusHook>,
    worker_sandbox: crate::workers::spawn::WorkerSandbox,
    /// The block graph and exports the user asked for (replayed into a
    /// restarted block-proc).
    pub(crate) block_state: block_state::Shared,
    /// Block jobs (their desired state, replayed with the block state).
    pub(crate) jobs: jobs::JobTable,
    /// Signalled (with `block`'s mutex) when a block worker is published
    /// or the broker starts ending.
    block_ready: Condvar,
    /// Held by the exit handler that restarts block-proc: one at a time.
    pub(crate) restart_owner: Mutex<()>,
    next_generation: AtomicU64,
    /// Pids the liveness check killed as hung (for their exit event).
    hung: Mutex<Vec<u32>>,
    /// Block statistics carried across block-proc lifetimes.
    pub(crate) stats: Mutex<stats_carry::StatsCarry>,
    /// `-machine none`: the run state, in place of vcpu-proc.
    no_vm: Option<no_vm::NoVm>,
    /// Which possible-CPU slots hold a CPU (CPU hotplug).
    pub(crate) cpu_slots: Mutex<cpu_slots::CpuSlots>,
    /// Open once the workers are up (QMP greets before that).
    start_gate: start_gate::StartGate,
    /// The trace points wanted on, in every process.
    trace: trace_state::TraceState,
    /// `dump-guest-memory`'s state (`query-dump`).
    pub(crate) dump: dump::DumpTracker,
    /// Migration parameters, capabilities and the running migration.
    pub(crate) migration: migration::MigrationState,
    /// The NICs' announcement timers (after a migration, `announce-self`).
    pub(crate) announce: announce::Announcer,
    /// QEMU's rate limit of chatty events (the QUORUM_* events).
    pub(crate) throttled_events: Arc<crate::qmp::event_throttle::EventThrottle>,
}

/// Receives a short description of the VM's state when it changes.
pub type StatusHook = Box<dyn Fn(&str) + Send + Sync>;

impl Machine {
    /// Creates the machine; [`Machine::start_workers`] brings it up.
    pub fn new(
        config: Config,
        worker_sandbox: crate::workers::spawn::WorkerSandbox,
        events: Arc<EventBus>,
        supervisor: Arc<Supervisor>,
        exit_tx: Sender<ExitRequest>,
    ) -> Arc<Self> {
        let no_vm = (config.machine == crate::cli::MachineType::None)
            .then(|| no_vm::NoVm::new(config.start_paused));
        let trace = trace_state::TraceState::new(&config.trace);
        let migration =
            migration::MigrationState::new(config.incoming.is_some(), !config.start_paused);
        let throttled_events = crate::qmp::event_throttle::EventThrottle::new(
            events.clone(),
            crate::qmp::event_throttle::PERIOD,
        );
        let m = Arc::new(Machine {
            trace,
            no_vm,
            cpu_slots: Mutex::new(cpu_slots::CpuSlots::boot(u32::from(config.cpus))),
            worker_sandbox,
            block_state: Default::default(),
            jobs: Default::default(),
            config,
            events,
            supervisor,
            exit_tx: Mutex::new(exit_tx),
            vcpu: Mutex::new(None),
            block: Mutex::new(None),
            net: Mutex::new(None),
            netdevs: Mutex::new(netdevs::NetState::default()),
            net_start: Mutex::new(()),
            me: std::sync::OnceLock::new(),
            vcpu_crashed: AtomicBool::new(false),
            ending: AtomicBool::new(false),
            restart: Mutex::new(policy::Backoff::default()),
            devices: Mutex::new(devices::DeviceState::default()),
            media: Mutex::new(media::MediaState::default()),
            status_hook: std::sync::OnceLock::new(),
            block_ready: Condvar::new(),
            restart_owner: Mutex::new(()),
            next_generation: AtomicU64::new(1),
            hung: Mutex::new(Vec::new()),
            stats: Mutex::new(stats_carry::StatsCarry::default()),
            start_gate: start_gate::StartGate::default(),
            dump: dump::DumpTracker::default(),
            migration,
            announce: Default::default(),
            throttled_events,
        });
        let _ = m.me.set(Arc::downgrade(&m));
        liveness::start(&m);
        m
    }

    /// This machine as an `Arc` (None while it is being dropped).
    pub(crate) fn arc(&self) -> Option<Arc<Machine>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }

    /// How long a worker may take to answer a request or a ping
    /// (`-__org.bulkhead-worker-timeout`).
    pub fn worker_timeout(&self) -> Duration {
        self.config.worker_timeout
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::SeqCst)
    }

    /// Wakes the callers waiting for a block worker.
    pub(crate) fn worker_published(&self) {
        let _guard = lock(&self.block);
        self.block_ready.notify_all();
    }

    /// Records that `pid` is being killed because it hung.
    pub(crate) fn mark_hung(&self, pid: u32) {
        lock(&self.hung).push(pid);
    }

    /// True (once) if `pid` was killed as hung.
    pub(crate) fn take_hung(&self, pid: u32) -> bool {
        let mut hung = lock(&self.hung);
        let before = hung.len();
        hung.retain(|p| *p != pid);
        hung.len() != before
    }

    /// Waits until a block worker is published and serving, at most until
    /// `deadline`; returns its generation and link.
    fn block_worker_until(&self, deadline: Instant) -> Result<(u64, Arc<BlockLink>), FlatError> {
        let mut slot = lock(&self.block);
        loop {
            if let Some(w) = slot.as_ref().filter(|w| !w.link.is_broken()) {
                return Ok((w.generation, w.link.clone()));
            }
            if self.is_ending() {
                return Err(FlatError::generic("the VM is shutting down"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FlatError::generic(format!(
                    "the block worker is restarting and did not come back within {:?}",
                    self.worker_timeout()
                )));
            }
            // A broken link is replaced without a notification to us:
            // look again at least every 20 ms.
            slot = self
                .block_ready
                .wait_timeout(slot, left.min(Duration::from_millis(20)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs `op`, a state-changing block operation, on a live block-proc:
    /// a restart in progress is waited for, and if the worker died or was
    /// replaced while `op` ran, `op` runs again on its successor, all
    /// within one worker timeout. Running it again never duplicates it:
    /// the desired block state changes only when `op` succeeds, and a
    /// restarted worker is rebuilt from that state. `op` must take the
    /// block state itself (the restart's replay needs it between attempts).
    pub fn across_block_restarts<T>(
        &self,
        op: impl Fn() -> Result<T, FlatError>,
    ) -> Result<T, FlatError> {
        let deadline = Instant::now() + self.worker_timeout();
        loop {
            let (generation, link) = self.block_worker_until(deadline)?;
            let err = match op() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let replaced = lock(&self.block)
                .as_ref()
                .is_none_or(|w| w.generation != generation);
            if !(replaced || link.is_broken()) || Instant::now() >= deadline {
                return Err(err);
            }
            tracing::info!("block worker restarted during a command; running it again");
        }
    }

    /// Sends a query (a request without side effects) to block-proc and
    /// returns the reply with the generation of the worker that gave it. A
    /// restart in progress is waited for, and a worker that dies before it
    /// answers is asked again once restarted, all within one worker
    /// timeout: clients polling during restarts see no error.
    pub fn block_query(&self, req: BlockRequest) -> Result<(u64, BlockReply), FlatError> {
        self.block_query_until(req, Instant::now() + self.worker_timeout())
    }

    /// [`Machine::block_query`] within `deadline` (a command that asks
    /// several questions shares one deadline among them).
    pub fn block_query_until(
        &self,
        req: BlockRequest,
        deadline: Instant,
    ) -> Result<(u64, BlockReply), FlatError> {
        loop {
            let (generation, link) = self.block_worker_until(deadline)?;
            match link.call(req.clone(), &[], deadline) {
                Ok(reply) => return reply.map(|r| (generation, r)),
                Err(crate::workers::link::LinkError::Gone(_)) => {
                    // Its reader may not have seen the end yet: no spinning.
                    if !link.is_broken() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The configuration the broker was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How this VM's workers are sandboxed (and as whom).
    pub fn worker_sandbox(&self) -> crate::workers::spawn::WorkerSandbox {
        self.worker_sandbox
    }

    /// The VM's name (`-name`).
    pub fn name(&self) -> Option<&str> {
        self.config.name.as_deref()
    }

    /// The number of vCPUs present at start (`-smp`).
    pub fn cpu_count(&self) -> u32 {
        u32::from(self.config.cpus)
    }

    /// Whether CPU `index` (`cpu-index`) is plugged now.
    pub fn cpu_present(&self, index: u32) -> bool {
        cpu_slots::lock(self).is_plugged(index)
    }

    /// The event bus QMP sessions subscribe to.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// Whether start-up is over; commands that need the VM wait on it.
    pub fn start_gate(&self) -> &start_gate::StartGate {
        &self.start_gate
    }

    /// The supervisor watching the workers.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// The host pid of the current vcpu-proc, if one runs.
    pub fn vcpu_pid(&self) -> Option<u32> {
        lock(&self.vcpu).as_ref().map(|w| w.process.pid)
    }

    /// Sends `req` to vcpu-proc and waits for its reply. The first `cont`
    /// of a `-S` machine first attaches the devices added in `prelaunch`.
    pub fn vcpu_request(&self, req: VcpuRequest) -> Result<VcpuReply, FlatError> {
        if let Some(vm) = &self.no_vm {
            return vm.request(req, |e| self.on_no_vm_event(e));
        }
        let cont = matches!(req, VcpuRequest::Cont);
        if cont {
            // Not while a `migrate` is starting (it attaches them itself).
            let _gate = self.migration.device_set.hotplug();
            devices::attach_pending(self)?;
        }
        let reply = self.vcpu_request_with_fds(req, &[])?;
        if cont {
            devices::mark_launched(self);
        }
        Ok(reply)
    }

    /// Sends `req` to block-proc and waits for its reply. Queries go
    /// through [`Machine::block_query`] (they wait for a restarting worker);
    /// other requests fail at once while the worker is down.
    pub fn block_request(&self, req: BlockRequest) -> Result<BlockReply, FlatError> {
        match req {
            BlockRequest::QueryNodes
            | BlockRequest::QueryStats
            | BlockRequest::Ping
            | BlockRequest::Trace(_) => return self.block_query(req).map(|(_, r)| r),
            BlockRequest::AddNode { .. }
            | BlockRequest::DelNode { .. }
            | BlockRequest::AddExport { .. }
            | BlockRequest::DelExport { .. }
            | BlockRequest::AttachExportConnection { .. }
            | BlockRequest::SetThrottle { .. }
            | BlockRequest::SetWriteThreshold { .. }
            | BlockRequest::ResizeNode { .. }
            | BlockRequest::Bitmap(_)
            | BlockRequest::Snapshot(_)
            | BlockRequest::FlushAll
            | BlockRequest::AddScsiExport(_)
            | BlockRequest::ScsiMedium { .. }
            | BlockRequest::ChangeChild { .. }
            | BlockRequest::SetChildNames { .. }
            | BlockRequest::StartJob(_)
            | BlockRequest::JobControl { .. } => {}
            #[cfg(feature = "test-hooks")]
            BlockRequest::TestEscape(_) => {}
        }
        let link = lock(&self.block).as_ref().map(|w| w.link.clone());
        match link {
            Some(l) => l.request(req, &[]),
            None => Err(FlatError::generic(
                "the block worker is restarting; try again",
            )),
        }
    }

    /// The run status (`query-status`): asked of vcpu-proc; `internal-error`
    /// once vcpu-proc has died.
    pub fn query_status(&self) -> Result<StatusInfo, FlatError> {
        if self.vcpu_crashed.load(Ordering::SeqCst) {
            return Ok(StatusInfo {
                running: false,
                singlestep: false,
                source_state: false,
                status: RunState::InternalError,
            });
        }
        match self.vcpu_request(VcpuRequest::QueryStatus)? {
            VcpuReply::Status(s) => Ok(s),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Asks the broker to end (`quit`): emits SHUTDOWN (reason
    /// `host-qmp-quit`) and wakes the main thread, which tears down once
    /// pending replies are flushed.
    pub fn request_quit(&self) {
        self.events.emit(
            "SHUTDOWN",
            Some(json!({"guest": false, "reason": "host-qmp-quit"})),
        );
        self.request_exit(ExitRequest::Quit);
    }

    /// Wakes the main thread to end the broker with `req`.
    pub fn request_exit(&self, req: ExitRequest) {
        self.ending.store(true, Ordering::SeqCst);
        // The main thread may be gone already; then we are ending anyway.
        let _ = lock(&self.exit_tx).send(req);
    }

    /// True once the broker is ending.
    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::SeqCst)
    }

    /// Marks the broker as ending and stops every worker: their channels
    /// are closed, each gets [`STOP_GRACE`] in all to exit by itself, then
    /// SIGKILL; every one is reaped before this returns, so no former
    /// worker pid exists once the broker's exit status is available.
    pub fn stop_workers(&self) {
        self.ending.store(true, Ordering::SeqCst);
        // A restart in progress sees `ending` and publishes nothing more;
        // wait for it, so its worker is stopped here too.
        let owner = lock(&self.restart_owner);
        let net_owner = lock(&self.net_start);
        let vcpu = lock(&self.vcpu).take();
        let block = lock(&self.block).take();
        let net = lock(&self.net).take();
        self.worker_published();
        if let Some(w) = &vcpu {
            w.link.close();
        }
        if let Some(w) = &block {
            w.link.close();
        }
        if let Some(w) = &net {
            w.link.close();
        }
        let deadline = Instant::now() + STOP_GRACE;
        let processes = [
            vcpu.map(|w| w.process),
            block.map(|w| w.process),
            net.map(|w| w.process),
        ];
        drop(net_owner);
        for process in processes.into_iter().flatten() {
            process.stop(deadline.saturating_duration_since(Instant::now()));
        }
        drop(owner);
    }

    pub(crate) fn mark_vcpu_crashed(&self) {
        self.vcpu_crashed.store(true, Ordering::SeqCst);
        migration::on_vcpu_died(self);
        self.report_status("guest crashed (vCPU worker died)");
    }

    /// Sets the hook told about state changes (once; later calls are ignored).
    pub fn set_status_hook(&self, hook: StatusHook) {
        let _ = self.status_hook.set(hook);
    }

    fn report_status(&self, text: &str) {
        if let Some(h) = self.status_hook.get() {
            h(text);
        }
    }

    /// True when the broker's shared state is not wedged: its locks can be
    /// taken within a second (the systemd watchdog's health check).
    pub fn is_responsive(&self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let free = self.vcpu.try_lock().is_ok() && self.block.try_lock().is_ok();
            if free {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Turns a vcpu-proc event into QMP events and exit requests.
    pub(crate) fn on_vcpu_event(self: &Arc<Self>, ev: VcpuEvent) {
        match ev {
            VcpuEvent::Stopped => {
                self.events.emit("STOP", None);
                self.report_status("paused");
            }
            VcpuEvent::Resumed => {
                migration::on_resumed(self);
                self.events.emit("RESUME", None);
                self.report_status("running");
            }
            VcpuEvent::Reset { reason } => self.events.emit(
                "RESET",
                Some(json!({"guest": reason.is_guest(), "reason": reason.as_str()})),
            ),
            VcpuEvent::Shutdown { reason } => {
                self.events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": reason.is_guest(), "reason": reason.as_str()})),
                );
                self.report_status("guest shut down");
                if !self.config.no_shutdown {
                    self.request_exit(ExitRequest::GuestShutdown);
                }
            }
            VcpuEvent::Powerdown => self.events.emit("POWERDOWN", None),
            VcpuEvent::GuestCrashed { detail } => {
                tracing::error!("guest crashed: {detail}");
                self.report_status("guest crashed");
                self.events
                    .emit(event_names::GUEST_CRASHED, Some(json!({"detail": detail})));
            }
            VcpuEvent::DebugExit { code } => self.request_exit(ExitRequest::DebugExit(code)),
            VcpuEvent::VhostUserDisconnected { id } => devices::on_disconnected(self, &id),
            VcpuEvent::VhostUserReconnected { id } => devices::on_reconnected(self, &id),
            VcpuEvent::DumpCompleted {
                completed,
                total,
                error,
            } => self.dump.finish(&self.events, completed, total, error),
            VcpuEvent::CpuEjected { slot } => cpu_slots::on_ejected(self, slot),
            VcpuEvent::CpuOst {
                slot,
                source,
                status,
            } => cpu_slots::on_ost(self, slot, source, status),
            VcpuEvent::Migration(ev) => migration::on_event(self, ev),
        }
    }

    /// Events of `-machine none`'s run state.
    fn on_no_vm_event(&self, ev: VcpuEvent) {
        match ev {
            VcpuEvent::Stopped => self.events.emit("STOP", None),
            VcpuEvent::Resumed => self.events.emit("RESUME", None),
            VcpuEvent::Reset { reason } => self.events.emit(
                "RESET",
                Some(json!({"guest": reason.is_guest(), "reason": reason.as_str()})),
            ),
            VcpuEvent::Powerdown => self.events.emit("POWERDOWN", None),
            VcpuEvent::Shutdown { .. }
            | VcpuEvent::GuestCrashed { .. }
            | VcpuEvent::DebugExit { .. }
            | VcpuEvent::VhostUserDisconnected { .. }
            | VcpuEvent::VhostUserReconnected { .. }
            | VcpuEvent::DumpCompleted { .. }
            | VcpuEvent::CpuEjected { .. }
            | VcpuEvent::CpuOst { .. }
            | VcpuEvent::Migration(_) => {
                tracing::warn!("machine 'none': unexpected event {ev:?}")
            }
        }
    }

    pub(crate) fn on_block_event(&self, ev: BlockEvent) {
        match ev {
            BlockEvent::ExportConnected { id } => {
                tracing::info!("vhost-user export {id}: frontend connected");
            }
            BlockEvent::ExportDisconnected { id } => {
                tracing::info!("vhost-user export {id}: frontend disconnected");
            }
            BlockEvent::IoError {
                node_name,
                operation,
                reason,
            } => self.events.emit(
                "BLOCK_IO_ERROR",
                Some(json!({
                    "device": "",
                    "node-name": node_name,
                    "operation": operation,
                    "action": "report",
                    "nospace": false,
                    "reason": reason,
                })),
            ),
            BlockEvent::WriteThreshold {
                node_name,
                amount_exceeded,
                write_threshold,
            } => {
                block_limits::threshold_crossed(self, &node_name);
                self.events.emit(
                    "BLOCK_WRITE_THRESHOLD",
                    Some(json!({
                        "node-name": node_name,
                        "amount-exceeded": amount_exceeded,
                        "write-threshold": write_threshold,
                    })),
                )
            }
            BlockEvent::Job(e) => self.jobs.push(e),
            BlockEvent::Scsi(e) => media::on_event(self, e),
            BlockEvent::QuorumReportBad(r) => {
                let mut data = json!({
                    "type": r.op,
                    "node-name": r.node_name,
                    "sector": r.sector,
                    "sectors-count": r.sectors_count,
                });
                if let Some(e) = r.error {
                    data["error"] = json!(e);
                }
                // Rate limited per node, as QEMU does.
                self.throttled_events
                    .emit("QUORUM_REPORT_BAD", &r.node_name, data)
            }
            BlockEvent::QuorumFailure {
                reference,
                sector,
                sectors_count,
            } => self.throttled_events.emit(
                "QUORUM_FAILURE",
                "",
                json!({
                    "reference": reference,
                    "sector": sector,
                    "sectors-count": sectors_count,
                }),
            ),
        }
    }
}

/// `Ok(())` for block-proc's [`BlockReply::Done`], else the
/// unexpected-reply error (for requests that return nothing).
pub fn expect_done(reply: BlockReply) -> Result<(), FlatError> {
    match reply {
        BlockReply::Done => Ok(()),
        other @ (BlockReply::NeedFiles { .. }
        | BlockReply::Nodes(_)
        | BlockReply::Stats(_)
        | BlockReply::Trace(_)
        | BlockReply::Bitmap(_)
        | BlockReply::Snapshot(_)) => Err(unexpected_reply(&other)),
    }
}

/// `Ok(())` for vcpu-proc's [`VcpuReply::Done`], else the
/// unexpected-reply error (for requests that return nothing).
pub fn expect_vcpu_done(reply: VcpuReply) -> Result<(), FlatError> {
    match reply {
        VcpuReply::Done => Ok(()),
        other @ (VcpuReply::Status(_)
        | VcpuReply::Cpus(_)
        | VcpuReply::Trace(_)
        | VcpuReply::DumpStarted { .. }
        | VcpuReply::DumpProgress { .. }
        | VcpuReply::Migration(_)) => Err(unexpected_reply(&other)),
    }
}

/// The error for a reply of the wrong kind (a worker bug, not user input).
pub fn unexpected_reply<T: std::fmt::Debug>(reply: &T) -> FlatError {
    FlatError::generic(format!("internal error: unexpected worker reply {reply:?}"))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
