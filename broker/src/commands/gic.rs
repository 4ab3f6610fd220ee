//! `query-gic-capabilities`: the GIC (Arm's interrupt controller) versions
//! the host can give a guest. Bulkhead is x86-only, where there is no GIC:
//! the answer is an empty list, as QEMU's x86 targets gave it (QEMU 2.8,
//! the reference; QEMU 10 builds the command for Arm targets only).

use serde::Serialize;

use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// QAPI `GICCapability`.
#[derive(Debug, Serialize)]
pub struct GicCapability {
    /// The GIC version.
    pub version: i64,
    /// Emulated by the VMM.
    pub emulated: bool,
    /// Provided by the kernel (KVM).
    pub kernel: bool,
}

impl QapiType for GicCapability {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "GICCapability",
            members: vec![
                member::<i64>("version"),
                member::<bool>("emulated"),
                member::<bool>("kernel"),
            ],
        }
    }
}

/// `query-gic-capabilities`.
pub struct QueryGicCapabilities;

impl Command for QueryGicCapabilities {
    const NAME: &'static str = "query-gic-capabilities";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Return the GIC versions the host supports: none on x86.";
    type Args = Empty;
    type Ret = Vec<GicCapability>;

    fn run(_: Empty, _: &Ctx<'_>) -> Result<Vec<GicCapability>> {
        // x86 has no GIC; bulkhead runs on x86 hosts only.
        Ok(Vec::new())
    }
}
