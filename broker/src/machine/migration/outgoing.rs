//! The source side of a live migration: `migrate` sets the status to
//! `setup` and a thread connects (QEMU connects asynchronously too: a
//! refused connection is a `failed` migration, not a `migrate` error),
//! then hands the stream and the vhost-user dirty log to vcpu-proc, whose
//! events drive the status. At [`MigrationEvent::ReadyForSwitchover`] a
//! thread flushes and releases the disks and sends `Switchover`; a
//! migration that fails or is cancelled after that takes them back.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use ipc_proto::migration::{dirty_log_size, MigrationEvent, MigrationRequest, MigrationStatus};
use ipc_proto::vcpu::{FdSlot, VcpuRequest};
use ipc_proto::FlatError;
use serde_json::json;

use super::uri::MigrationUri;
use super::{disks, emit_status, transport};
use crate::machine::{expect_vcpu_done, lock, Machine};

/// QEMU's message for a second `migrate`.
pub const IN_PROGRESS: &str = "There's a migration process in progress";

/// The outgoing migration's state.
#[derive(Debug)]
pub struct Outgoing {
    /// QEMU's status (`none` before the first `migrate`).
    pub status: MigrationStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Which `migrate` this is (a connection thread of an earlier one
    /// does nothing).
    pub id: u64,
    /// vcpu-proc was given the stream: it has the statistics.
    pub vcpu_has_it: bool,
    /// Set when the broker itself ends the migration after the
    /// switchover (a flush failed): the `cancelled` that follows is a
    /// failure with this reason.
    pub fail_reason: Option<String>,
    /// A copy of the stream's socket: `migrate_cancel` shuts it down, so
    /// a vcpu-proc blocked writing to a stalled peer notices at once
    /// (QEMU's `qemu_file_shutdown` in `migrate_fd_cancel`).
    pub stream: Option<OwnedFd>,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            status: MigrationStatus::None,
            error: None,
            id: 0,
            vcpu_has_it: false,
            fail_reason: None,
            stream: None,
        }
    }
}

/// Whether `s` is a migration in progress (QEMU's `migration_is_running`).
pub fn is_running(s: MigrationStatus) -> bool {
    match s {
        MigrationStatus::Setup
        | MigrationStatus::Active
        | MigrationStatus::Device
        | MigrationStatus::Cancelling => true,
        MigrationStatus::None
        | MigrationStatus::Cancelled
        | MigrationStatus::Completed
        | MigrationStatus::Failed => false,
    }
}

/// Where the stream goes: an address to connect to, or a connected fd.
pub enum Destination {
    /// `unix:` / `tcp:`.
    Connect(MigrationUri),
    /// `fd:NAME` with the session's `getfd` fd of that name, if any.
    Named(String, Option<OwnedFd>),
}

/// Sets the status and emits `MIGRATION` if it changed. Returns false if
/// the migration is no longer `id`.
fn set_status(m: &Machine, id: Option<u64>, status: MigrationStatus, error: Option<String>) {
    let changed = {
        let mut o = lock(&m.migration.out);
        if id.is_some_and(|id| id != o.id) {
            return;
        }
        if error.is_some() {
            o.error = error;
        }
        let changed = o.status != status;
        o.status = status;
        if !is_running(status) {
            o.stream = None;
        }
        changed
    };
    if changed {
        emit_status(m, status);
    }
}

/// `migrate`: starts migrating to `dest` (the caller checked the run
/// state). Errors only if a migration runs already.
pub fn start(m: &Machine, dest: Destination) -> Result<(), FlatError> {
    let id = {
        let mut o = lock(&m.migration.out);
        if is_running(o.status) {
            return Err(FlatError::generic(IN_PROGRESS));
        }
        o.id += 1;
        o.error = None;
        o.fail_reason = None;
        o.vcpu_has_it = false;
        o.status = MigrationStatus::Setup;
        o.id
    };
    emit_status(m, MigrationStatus::Setup);
    if let Destination::Named(name, None) = &dest {
        // QEMU looks the fd up after `setup`: the migration failed.
        let e = format!("File descriptor named '{name}' has not been found");
        set_status(m, Some(id), MigrationStatus::Failed, Some(e.clone()));
        return Err(FlatError::generic(e));
    }
    let me = m
        .arc()
        .ok_or_else(|| FlatError::generic("the VM is shutting down"))?;
    std::thread::Builder::new()
        .name("migrate-out".into())
        .spawn(move || connect_and_start(&me, id, dest))
        .map_err(|e| FlatError::generic(format!("cannot start the migration thread: {e}")))?;
    Ok(())
}

fn connect_and_start(m: &Arc<Machine>, id: u64, dest: Destination) {
    let fd = match dest {
        Destination::Named(_, Some(fd)) => fd,
        Destination::Named(_, None) => return,
        Destination::Connect(uri) => match transport::connect(&uri) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("migration: {e}");
                set_status(m, Some(id), MigrationStatus::Failed, Some(e.to_string()));
                return;
            }
        },
    };
    if let Err(e) = send_start(m, id, &fd) {
        tracing::warn!("migration: {}", e.desc);
        let mut o = lock(&m.migration.out);
        if o.id == id && o.status != MigrationStatus::Failed {
            o.vcpu_has_it = false;
            drop(o);
            set_status(m, Some(id), MigrationStatus::Failed, Some(e.desc));
        }
    }
}

fn send_start(m: &Machine, id: u64, fd: &OwnedFd) -> Result<(), FlatError> {
    let log = dirty_log(m.config().mem_size)?;
    let params = lock(&m.migration.settings).params();
    {
        let mut o = lock(&m.migration.out);
        if o.id != id || o.status != MigrationStatus::Setup {
            // Cancelled while connecting: the stream closes here.
            return Ok(());
        }
        o.vcpu_has_it = true;
        o.stream = fd.try_clone().ok();
    }
    let req = VcpuRequest::Migration(MigrationRequest::Start {
        fd: FdSlot(0),
        log: FdSlot(1),
        params,
    });
    m.vcpu_request_with_fds(req, &[fd.as_fd(), log.as_fd()])
        .and_then(expect_vcpu_done)
}

/// The vhost-user dirty log vcpu-proc hands its backends: a memfd of
/// [`dirty_log_size`] bytes (vcpu-proc cannot create one), zero-filled.
fn dirty_log(mem_size: u64) -> Result<OwnedFd, FlatError> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fail = |e: nix::Error| FlatError::generic(format!("cannot create the dirty log: {e}"));
    let fd = memfd_create(c"bulkhead-dirty-log", MFdFlags::MFD_CLOEXEC).map_err(fail)?;
    let len = i64::try_from(dirty_log_size(mem_size))
        .map_err(|_| FlatError::generic("guest RAM too large for a dirty log"))?;
    nix::unistd::ftruncate(&fd, len).map_err(fail)?;
    Ok(fd)
}

/// `migrate_cancel`: nothing to do unless a migration runs (QEMU).
pub fn cancel(m: &Machine) -> Result<(), FlatError> {
    let vcpu_has_it = {
        let mut o = lock(&m.migration.out);
        match o.status {
            MigrationStatus::Setup | MigrationStatus::Active | MigrationStatus::Device => {}
            MigrationStatus::None
            | MigrationStatus::Cancelling
            | MigrationStatus::Cancelled
            | MigrationStatus::Completed
            | MigrationStatus::Failed => return Ok(()),
        }
        o.status = MigrationStatus::Cancelling;
        o.vcpu_has_it
    };
    emit_status(m, MigrationStatus::Cancelling);
    if !vcpu_has_it {
        // Still connecting: the connection thread drops the stream.
        set_status(m, None, MigrationStatus::Cancelled, None);
        return Ok(());
    }
    // The guest may run again at once: its disks first.
    if let Err(e) = disks::activate(m) {
        tracing::warn!("migration cancelled: disks not activated: {}", e.desc);
    }
    if let Err(e) = m.vcpu_request(VcpuRequest::Migration(MigrationRequest::Cancel)) {
        // It ended meanwhile (its status event says how).
        tracing::info!("migrate_cancel: {}", e.desc);
    }
    if let Some(s) = lock(&m.migration.out).stream.take() {
        let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    Ok(())
}

/// vcpu-proc reported `ev` for the outgoing migration.
pub fn on_event(m: &Machine, ev: MigrationEvent) {
    let running = {
        let o = lock(&m.migration.out);
        o.vcpu_has_it && o.status != MigrationStatus::None
    };
    if !running {
        tracing::warn!("migration event without a migration: {ev:?}");
        return;
    }
    match ev {
        MigrationEvent::Status { status, error } => on_status(m, status, error),
        MigrationEvent::Pass { count } => {
            if m.migration.events_on() {
                m.events()
                    .emit("MIGRATION_PASS", Some(json!({"pass": count})));
            }
        }
        MigrationEvent::ReadyForSwitchover => {
            set_status(m, None, MigrationStatus::Device, None);
            let Some(me) = m.arc() else { return };
            // Not on the link's reader thread: it must read the replies.
            let spawned = std::thread::Builder::new()
                .name("migrate-switch".into())
                .spawn(move || switchover(&me));
            if let Err(e) = spawned {
                tracing::error!("migration: cannot start the switchover: {e}");
            }
        }
    }
}

fn on_status(m: &Machine, status: MigrationStatus, error: Option<String>) {
    tracing::debug!("migration: vcpu-proc reports {status:?}");
    let (status, error) = match status {
        MigrationStatus::Cancelled => match lock(&m.migration.out).fail_reason.take() {
            Some(why) => (MigrationStatus::Failed, Some(why)),
            None => (status, error),
        },
        MigrationStatus::None
        | MigrationStatus::Setup
        | MigrationStatus::Active
        | MigrationStatus::Device
        | MigrationStatus::Cancelling
        | MigrationStatus::Completed
        | MigrationStatus::Failed => (status, error),
    };
    if matches!(status, MigrationStatus::Failed | MigrationStatus::Cancelled) {
        if let Some(e) = &error {
            tracing::warn!("migration failed: {e}");
        }
        // The guest runs on here: it needs its disks back.
        let Some(me) = m.arc() else { return };
        let spawned = std::thread::Builder::new()
            .name("migrate-undo".into())
            .spawn(move || {
                if let Err(e) = disks::activate(&me) {
                    tracing::error!("migration ended: disks not activated: {}", e.desc);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("migration: cannot reactivate the disks: {e}");
        }
    }
    set_status(m, None, status, error);
}

/// The guest is stopped and RAM converged: flush and release the disks,
/// then let vcpu-proc send the rest; on a flush error, fail the migration.
fn switchover(m: &Arc<Machine>) {
    tracing::debug!("migration: switchover: disks");
    if lock(&m.migration.out).status != MigrationStatus::Device {
        // Cancelled meanwhile: `cancel` sent Cancel.
        return;
    }
    let req = match disks::inactivate(m) {
        Ok(()) => MigrationRequest::Switchover,
        Err(e) => {
            tracing::warn!("migration: switchover: {}", e.desc);
            lock(&m.migration.out).fail_reason = Some(e.desc);
            if let Err(e) = disks::activate(m) {
                tracing::error!("migration: disks not activated: {}", e.desc);
            }
            MigrationRequest::Cancel
        }
    };
    tracing::debug!("migration: switchover: {req:?}");
    if let Err(e) = m.vcpu_request(VcpuRequest::Migration(req)) {
        tracing::warn!("migration: switchover: {}", e.desc);
        fail_running(m, &e.desc);
    }
}

/// Ends a running outgoing migration as failed (vcpu-proc is gone or
/// refused), taking the disks back.
pub fn fail_running(m: &Machine, why: &str) {
    if !is_running(lock(&m.migration.out).status) {
        return;
    }
    on_status(m, MigrationStatus::Failed, Some(why.to_owned()));
}
