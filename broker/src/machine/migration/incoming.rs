//! The target side of a live migration: `-incoming URI` at start-up or
//! `migrate-incoming` after `-incoming defer` listen (status `setup`), a
//! thread accepts the one connection and hands it to vcpu-proc, whose
//! events drive the status. At `completed` the disks are activated (the
//! image locks taken), the NICs announced (`announce-*` parameters,
//! [`crate::machine::announce`]) and the guest runs unless `-S` (QEMU's autostart;
//! `cont`/`stop` while the migration runs set or clear it) — unless the
//! source did not run: the target then keeps the source's run state,
//! which the VM state carries (QEMU's global state); a failed
//! incoming migration ends the broker with status 1 unless
//! `exit-on-error` is false, as QEMU.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc_proto::migration::{MigrationEvent, MigrationRequest, MigrationStatus};
use ipc_proto::vcpu::{FdSlot, RunState, VcpuRequest};
use ipc_proto::FlatError;
use serde_json::Value;

use super::transport::Listening;
use super::{disks, emit_status};
use crate::machine::announce::TimerName;
use crate::machine::{expect_vcpu_done, lock, ExitRequest, Machine};

/// The incoming migration's state.
#[derive(Debug)]
pub struct Incoming {
    /// QEMU's status (`none` until it listens).
    pub status: MigrationStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Where it listens (`query-migrate`'s `socket-address`).
    pub socket_address: Vec<Value>,
    /// End the broker when the incoming migration fails.
    pub exit_on_error: bool,
    /// `migrate-incoming` succeeded once (or `-incoming URI` listened).
    pub started: bool,
    /// QEMU's autostart: run the guest once it is loaded (no `-S`; `cont`
    /// and `stop` while the migration runs set and clear it).
    pub autostart: bool,
    /// The VM no longer waits for its state: the incoming migration
    /// completed, or `cont` started it after a device-state load.
    pub done: bool,
}

impl Incoming {
    /// The state before any incoming migration.
    pub fn new(autostart: bool) -> Self {
        Incoming {
            status: MigrationStatus::None,
            error: None,
            socket_address: Vec::new(),
            autostart,
            exit_on_error: true,
            started: false,
            done: false,
        }
    }

    /// Listening, receiving or loading.
    pub fn is_running(&self) -> bool {
        super::outgoing::is_running(self.status)
    }
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming::new(true)
    }
}

/// Where the stream comes from.
pub enum Source {
    /// A socket to accept one connection on.
    Listen(Listening),
    /// A connected socket (`fd:`).
    Connected(OwnedFd),
}

fn set_status(m: &Machine, status: MigrationStatus, error: Option<String>) {
    let changed = {
        let mut i = lock(&m.migration.inc);
        if error.is_some() {
            i.error = error;
        }
        let changed = i.status != status;
        i.status = status;
        changed
    };
    if changed {
        emit_status(m, status);
    }
}

/// Moves the status to `setup` before the transport is set up, as QEMU
/// (a transport that then fails leaves it there). Errors with QEMU's
/// message if an incoming migration was set up before.
pub fn prepare(m: &Machine, exit_on_error: bool) -> Result<(), FlatError> {
    {
        let mut i = lock(&m.migration.inc);
        if i.status != MigrationStatus::None {
            return Err(FlatError::generic(format!(
                "Illegal migration incoming state: {}",
                i.status.as_str()
            )));
        }
        i.exit_on_error = exit_on_error;
    }
    set_status(m, MigrationStatus::Setup, None);
    Ok(())
}

/// Waits for the stream from `source` on a thread and hands it to
/// vcpu-proc ([`prepare`] came first).
pub fn start(m: &Machine, source: Source) -> Result<(), FlatError> {
    {
        let mut i = lock(&m.migration.inc);
        i.started = true;
        if let Source::Listen(l) = &source {
            i.socket_address = l.socket_address();
        }
    }
    let me = m
        .arc()
        .ok_or_else(|| FlatError::generic("the VM is shutting down"))?;
    std::thread::Builder::new()
        .name("migrate-in".into())
        .spawn(move || receive(&me, source))
        .map_err(|e| FlatError::generic(format!("cannot start the migration thread: {e}")))?;
    Ok(())
}

fn receive(m: &Arc<Machine>, source: Source) {
    let fd = match source {
        Source::Connected(fd) => fd,
        Source::Listen(l) => {
            let r = l.accept();
            l.remove_path();
            match r {
                Ok(fd) => fd,
                Err(e) => {
                    fail(m, format!("cannot accept the migration connection: {e}"));
                    return;
                }
            }
        }
    };
    let req = VcpuRequest::Migration(MigrationRequest::Incoming { fd: FdSlot(0) });
    if let Err(e) = m
        .vcpu_request_with_fds(req, &[fd.as_fd()])
        .and_then(expect_vcpu_done)
    {
        fail(m, e.desc);
    }
}

/// The incoming migration failed: QEMU's `exit-on-error` ends the process.
fn fail(m: &Machine, why: String) {
    tracing::error!("load of migration failed: {why}");
    set_status(m, MigrationStatus::Failed, Some(why));
    if lock(&m.migration.inc).exit_on_error {
        m.request_exit(ExitRequest::StartFailed);
    }
}

/// Ends a running incoming migration as failed.
pub fn fail_running(m: &Machine, why: &str) {
    if lock(&m.migration.inc).is_running() {
        fail(m, why.to_owned());
    }
}

/// Whether the VM still waits for an incoming migration (QEMU's
/// `inmigrate`): started with `-incoming` and not yet loaded and started.
pub fn awaiting(m: &Machine) -> bool {
    m.config().incoming.is_some() && !lock(&m.migration.inc).done
}

/// The VM was started (`cont`) or its incoming migration completed: it
/// waits no more.
pub fn mark_done(m: &Machine) {
    lock(&m.migration.inc).done = true;
}

/// `cont` (`run`) or `stop` while an incoming migration runs: QEMU only
/// sets or clears autostart (the reply is at once; the guest starts, or
/// not, when the migration completes). False if none runs: then the
/// command is an ordinary one.
pub fn set_autostart_while_running(m: &Machine, run: bool) -> bool {
    let mut i = lock(&m.migration.inc);
    if i.started && i.is_running() {
        i.autostart = run;
        return true;
    }
    false
}

/// vcpu-proc reported `ev` for the incoming migration.
pub fn on_event(m: &Machine, ev: MigrationEvent) {
    match ev {
        MigrationEvent::Status {
            status: MigrationStatus::Completed,
            ..
        } => {
            set_status(m, MigrationStatus::Completed, None);
            let Some(me) = m.arc() else { return };
            // Not on the link's reader thread: Stop needs its reply.
            if let Err(e) = std::thread::Builder::new()
                .name("migrate-in-end".into())
                .spawn(move || take_over(&me))
            {
                tracing::error!("migration: cannot start the guest: {e}");
            }
        }
        MigrationEvent::Status {
            status: MigrationStatus::Failed | MigrationStatus::Cancelled,
            error,
        } => fail(
            m,
            error.unwrap_or_else(|| "the migration stream ended early".into()),
        ),
        MigrationEvent::Status {
            status:
                status @ (MigrationStatus::None
                | MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::Device
                | MigrationStatus::Cancelling),
            error,
        } => set_status(m, status, error),
        MigrationEvent::Pass { .. } | MigrationEvent::ReadyForSwitchover => {
            tracing::warn!("incoming migration: unexpected event {ev:?}");
        }
    }
}

/// RAM and state are loaded and vcpu-proc has left `inmigrate`: take the
/// disks (QEMU's `process_incoming_migration_bh`), then bring the run
/// state to what autostart says (vcpu-proc leaves the VM paused, or runs
/// it by its own autostart; `cont`/`stop` during the migration were the
/// broker's) — unless the source did not run: vcpu-proc then left the VM
/// in the source's run state (`paused`, `prelaunch`, ...), which stays. If an image lock cannot be taken the guest stays paused, as
/// QEMU leaves it.
fn take_over(m: &Arc<Machine>) {
    let autostart = {
        let mut i = lock(&m.migration.inc);
        i.socket_address.clear();
        i.done = true;
        i.autostart
    };
    let run = match disks::activate(m) {
        Ok(()) => autostart,
        Err(e) => {
            tracing::error!("migration: cannot activate the disks: {}", e.desc);
            false
        }
    };
    // QEMU announces the NICs here, whether the guest starts or not.
    let announce = lock(&m.migration.settings).announce.params();
    if let Err(e) = crate::machine::announce::start(m, TimerName::Migration, announce) {
        tracing::warn!("migration: the NICs are not announced: {}", e.desc);
    }
    let (state, source_state) = match m.query_status() {
        Ok(s) => (s.status, s.source_state),
        Err(e) => {
            tracing::error!("migration: no run state after loading: {}", e.desc);
            return;
        }
    };
    let req = match (run, state) {
        // A source that did not run leaves the target in its run state
        // (QEMU's global state): no autostart then.
        (true, RunState::Paused) if !source_state => VcpuRequest::Cont,
        (false, RunState::Running) => VcpuRequest::Stop,
        _ => return,
    };
    if let Err(e) = m.vcpu_request(req) {
        tracing::error!(
            "migration: the guest's run state stays {state:?}: {}",
            e.desc
        );
    }
}
