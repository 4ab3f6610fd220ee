//! The VM as the broker sees it: its desired state, the live workers, and
//! the handle every QMP command uses to reach them ([`Machine`]).
//!
//! - [`vm_setup`]: opens what needs privilege (/dev/kvm, guest memory,
//!   kernel, serial) and builds vcpu-proc's `CreateVm` request.
//! - [`policy`]: what happens when a worker exits (restart with backoff, or
//!   guest crash).
//! - [`devices`]: the guest devices and their vhost-user backends.
//! - [`start_gate`]: whether start-up is over, for commands that arrive
//!   before the workers are up.

pub mod block_state;
pub mod devices;
pub mod event_names;
pub mod fdsets;
pub mod policy;
pub mod start_gate;
pub mod vm_setup;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

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
    /// The process (killed on drop).
    pub process: SpawnedWorker,
    /// The control channel.
    pub link: Arc<L>,
}

/// The VM: configuration, workers and the event bus.
pub struct Machine {
    config: Config,
    events: Arc<EventBus>,
    supervisor: Arc<Supervisor>,
    exit_tx: Mutex<Sender<ExitRequest>>,
    pub(crate) vcpu: Mutex<Option<Worker<VcpuLink>>>,
    pub(crate) block: Mutex<Option<Worker<BlockLink>>>,
    /// Set once vcpu-proc died unexpectedly: the guest crashed.
    vcpu_crashed: AtomicBool,
    /// Set when the broker is ending: worker exits are expected then.
    ending: AtomicBool,
    pub(crate) restart: Mutex<policy::Backoff>,
    /// The desired guest devices.
    pub(crate) devices: Mutex<devices::DeviceState>,
    /// Told a short state description on every run-state change (systemd's
    /// `STATUS=`).
    status_hook: std::sync::OnceLock<StatusHook>,
    worker_sandbox: crate::workers::spawn::WorkerSandbox,
    /// The block graph and exports the user asked for (replayed into a
    /// restarted block-proc).
    pub(crate) block_state: block_state::Shared,
    /// Open once the workers are up (QMP greets before that).
    start_gate: start_gate::StartGate,
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
        Arc::new(Machine {
            worker_sandbox,
            block_state: Default::default(),
            config,
            events,
            supervisor,
            exit_tx: Mutex::new(exit_tx),
            vcpu: Mutex::new(None),
            block: Mutex::new(None),
            vcpu_crashed: AtomicBool::new(false),
            ending: AtomicBool::new(false),
            restart: Mutex::new(policy::Backoff::default()),
            devices: Mutex::new(devices::DeviceState::default()),
            status_hook: std::sync::OnceLock::new(),
            start_gate: start_gate::StartGate::default(),
        })
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

    /// The number of vCPUs (`-smp`).
    pub fn cpu_count(&self) -> u32 {
        u32::from(self.config.cpus)
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

    /// Sends `req` to vcpu-proc and waits for its reply. The first `cont`
    /// of a `-S` machine first attaches the devices added in `prelaunch`.
    pub fn vcpu_request(&self, req: VcpuRequest) -> Result<VcpuReply, FlatError> {
        let cont = matches!(req, VcpuRequest::Cont);
        if cont {
            devices::attach_pending(self)?;
        }
        let reply = self.vcpu_request_with_fds(req, &[])?;
        if cont {
            devices::mark_launched(self);
        }
        Ok(reply)
    }

    /// Sends `req` to block-proc and waits for its reply.
    pub fn block_request(&self, req: BlockRequest) -> Result<BlockReply, FlatError> {
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

    /// Marks the broker as ending and stops every worker (closing their
    /// channels, then SIGKILL through the guards).
    pub fn stop_workers(&self) {
        self.ending.store(true, Ordering::SeqCst);
        let vcpu = lock(&self.vcpu).take();
        let block = lock(&self.block).take();
        if let Some(w) = &vcpu {
            w.link.close();
        }
        if let Some(w) = &block {
            w.link.close();
        }
        drop(vcpu);
        drop(block);
    }

    pub(crate) fn mark_vcpu_crashed(&self) {
        self.vcpu_crashed.store(true, Ordering::SeqCst);
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
        }
    }
}

/// The error for a reply of the wrong kind (a worker bug, not user input).
pub fn unexpected_reply<T: std::fmt::Debug>(reply: &T) -> FlatError {
    FlatError::generic(format!("internal error: unexpected worker reply {reply:?}"))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
