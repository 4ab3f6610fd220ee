//! Device state and live migration: the broker's
//! [`MigrationRequest`]s. `devices_state.rs` saves and loads the VM-state
//! file (`xen-save-devices-state` / `xen-load-devices-state`); the
//! outgoing and incoming streams of a live migration are served here.
//!
//! - [`outgoing`]: the source's pre-copy thread (passes, convergence,
//!   switchover, acknowledgement).
//! - [`incoming`]: the target's thread (stream → RAM, device state).
//! - [`dirty`]: the dirty-page set, from KVM's and the vhost-user log.
//! - [`ram`]: runs of pages in and out of the stream
//!   (`ipc_proto::migstream`, `docs/migration-stream.md`).
//! - [`wire`]: the source's fd, fed from guest RAM without a copy.
//! - [`progress`]: statistics and status events of one migration.
//!
//! A migration is not state that outlives vcpu-proc: a vcpu-proc killed
//! mid-migration is a guest crash (the broker reports the migration
//! failed; the target never got the device state, so it never runs).

pub mod devices_state;
pub mod dirty;
pub mod incoming;
pub mod outgoing;
pub mod progress;
pub mod ram;
pub mod wire;
pub mod xbzrle;

use std::sync::{Arc, Mutex, MutexGuard};

use ipc_proto::migration::{MigrationRequest, MigrationStats, MigrationStatus};
use ipc_proto::vcpu::VcpuReply;
use ipc_proto::FlatError;

use crate::control::{Controller, EventSink};
use crate::vm::FdTable;
use progress::Progress;

type Shared = Arc<Mutex<Controller>>;

fn lock(c: &Shared) -> MutexGuard<'_, Controller> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// QEMU's error while a migration runs.
pub const IN_PROGRESS: &str = "There's a migration process in progress";

/// The current (or last) migration.
#[derive(Debug, Default)]
struct Current {
    progress: Option<Arc<Progress>>,
    outgoing: Option<Arc<outgoing::Control>>,
}

impl Current {
    fn running(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|p| !progress::is_final(p.status()))
    }

    /// The outgoing migration, while it runs.
    fn outgoing(&self) -> Option<&Arc<outgoing::Control>> {
        self.outgoing.as_ref().filter(|_| self.running())
    }
}

/// The migrations of this process: at most one at a time.
#[derive(Debug, Default, Clone)]
pub struct Migrations {
    current: Arc<Mutex<Current>>,
}

fn idle_stats() -> MigrationStats {
    MigrationStats {
        status: MigrationStatus::None,
        total_time_ms: 0,
        setup_time_ms: 0,
        downtime_ms: None,
        expected_downtime_ms: None,
        ram: Default::default(),
        xbzrle: None,
        error: None,
    }
}

impl Migrations {
    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one request; `controller` is `None` before `CreateVm`.
    pub fn serve(
        &self,
        controller: Option<&Shared>,
        req: MigrationRequest,
        fds: Vec<std::os::fd::OwnedFd>,
        sink: Arc<dyn EventSink>,
    ) -> Result<VcpuReply, FlatError> {
        let c = controller.ok_or_else(|| FlatError::generic("the VM has not been created"))?;
        let take = |fds, slot| {
            FdTable::new(fds)
                .take(slot)
                .map_err(|e| FlatError::generic(e.to_string()))
        };
        match req {
            MigrationRequest::SaveDevicesState { fd } => devices_state::save(c, fds, fd),
            MigrationRequest::LoadDevicesState { fd } => devices_state::load(c, fds, fd),
            MigrationRequest::Start { fd, log, params } => {
                let mut cur = self.current();
                if cur.running() {
                    return Err(FlatError::generic(IN_PROGRESS));
                }
                let mut table = FdTable::new(fds);
                let stream = table
                    .take(fd)
                    .map_err(|e| FlatError::generic(e.to_string()))?;
                let log = table
                    .take(log)
                    .map_err(|e| FlatError::generic(e.to_string()))?;
                let p = Arc::new(Progress::new(ram_total(c), dirty::PAGE, sink));
                let ctl = outgoing::start(c, stream, log, params, p.clone())?;
                cur.progress = Some(p);
                cur.outgoing = Some(ctl);
                Ok(VcpuReply::Done)
            }
            MigrationRequest::Incoming { fd } => {
                let mut cur = self.current();
                if cur.running() {
                    return Err(FlatError::generic(IN_PROGRESS));
                }
                let stream = take(fds, fd)?;
                let p = Arc::new(Progress::new(ram_total(c), dirty::PAGE, sink));
                incoming::start(c, stream, p.clone())?;
                cur.progress = Some(p);
                cur.outgoing = None;
                Ok(VcpuReply::Done)
            }
            MigrationRequest::SetParams(params) => {
                if let Some(o) = self.current().outgoing() {
                    o.set_params(params);
                }
                Ok(VcpuReply::Done)
            }
            MigrationRequest::Switchover => match self.current().outgoing() {
                Some(o) => o.switchover().map(|()| VcpuReply::Done),
                None => Err(FlatError::generic("no outgoing migration is running")),
            },
            MigrationRequest::Cancel => {
                // QEMU's migrate_cancel: nothing to do when none runs.
                if let Some(o) = self.current().outgoing() {
                    o.cancel();
                }
                Ok(VcpuReply::Done)
            }
            MigrationRequest::Query => Ok(VcpuReply::Migration(Box::new(
                self.current()
                    .progress
                    .as_ref()
                    .map_or_else(idle_stats, |p| p.snapshot()),
            ))),
        }
    }
}

fn ram_total(c: &Shared) -> u64 {
    dirty::layout(&lock(c).vm().mem).total()
}

#[cfg(test)]
mod tests;
