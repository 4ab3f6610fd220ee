//! `x-colo-lost-heartbeat`: COLO (continuous checkpoints to a secondary
//! with failover) does not run in bulkhead, so the VM is never in COLO
//! mode and the command answers QEMU's error for that case.

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::Empty;

/// QEMU's message outside COLO.
pub const NOT_IN_COLO: &str = "VM is not in COLO mode";

/// `x-colo-lost-heartbeat`.
pub struct XColoLostHeartbeat;

impl Command for XColoLostHeartbeat {
    const NAME: &'static str = "x-colo-lost-heartbeat";
    const DOC: &'static str = "Tell COLO its heartbeat is lost: the VM is never in COLO mode \
        in bulkhead, so this answers QEMU's error.";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = Empty;

    fn run(_args: Empty, _ctx: &Ctx<'_>) -> Result<Empty> {
        Err(QmpError::generic(NOT_IN_COLO))
    }
}
