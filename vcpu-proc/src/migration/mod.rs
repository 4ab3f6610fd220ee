//! Device state and live migration: the broker's
//! [`MigrationRequest`]s. `devices_state.rs` saves and loads the VM-state
//! file (`xen-save-devices-state` / `xen-load-devices-state`); the
//! outgoing and incoming streams of a live migration are served here.

use std::sync::{Arc, Mutex};

use ipc_proto::migration::MigrationRequest;
use ipc_proto::vcpu::VcpuReply;
use ipc_proto::FlatError;

use crate::control::{Controller, EventSink};

pub mod devices_state;
pub mod xbzrle;

type Shared = Arc<Mutex<Controller>>;

/// The migrations of this process: at most one at a time.
#[derive(Debug, Default, Clone)]
pub struct Migrations {}

impl Migrations {
    /// Serves one request; `controller` is `None` before `CreateVm`.
    pub fn serve(
        &self,
        controller: Option<&Shared>,
        req: MigrationRequest,
        fds: Vec<std::os::fd::OwnedFd>,
        sink: Arc<dyn EventSink>,
    ) -> Result<VcpuReply, FlatError> {
        let _ = sink;
        if let MigrationRequest::SetParams(_) = req {
            // No migration runs in this vcpu-proc: the next `Start`
            // carries the parameters.
            return Ok(VcpuReply::Done);
        }
        let c = controller.ok_or_else(|| FlatError::generic("the VM has not been created"))?;
        match req {
            MigrationRequest::SaveDevicesState { fd } => devices_state::save(c, fds, fd),
            MigrationRequest::LoadDevicesState { fd } => devices_state::load(c, fds, fd),
            MigrationRequest::Start { .. }
            | MigrationRequest::SetParams(_)
            | MigrationRequest::Switchover
            | MigrationRequest::Cancel
            | MigrationRequest::Query
            | MigrationRequest::Incoming { .. } => Err(FlatError::generic(
                "live migration is not available in this vcpu-proc",
            )),
        }
    }
}
