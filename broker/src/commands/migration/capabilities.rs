//! `migrate-set-capabilities`: bulkhead cannot migrate, so no capability
//! ever has anything to act on. Turning a capability off, or turning on
//! `events` (MIGRATION events: none is ever sent, as no migration ever
//! runs), is true as asked, and is what libvirt does when it starts a
//! domain; turning on any capability that changes how a migration runs is
//! refused. QEMU's capability names are checked with QEMU's message.

use serde::Deserialize;

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// QEMU 10's `MigrationCapability` values.
const CAPABILITIES: [&str; 22] = [
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
    "switchover-ack",
    "dirty-limit",
    "mapped-ram",
];

/// One capability and its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityStatus {
    /// The capability.
    pub capability: String,
    /// On or off.
    pub state: bool,
}

impl QapiType for CapabilityStatus {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrationCapabilityStatus",
            members: vec![
                crate::qmp::schema::Member {
                    name: "capability",
                    ty: SchemaType::Enum {
                        name: "MigrationCapability",
                        values: CAPABILITIES.to_vec(),
                    },
                    optional: false,
                },
                member::<bool>("state"),
            ],
        }
    }
}

/// Arguments of `migrate-set-capabilities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCapabilitiesArgs {
    /// The capabilities to set.
    pub capabilities: Vec<CapabilityStatus>,
}

impl QapiType for SetCapabilitiesArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrateSetCapabilitiesArgs",
            members: vec![member::<Vec<CapabilityStatus>>("capabilities")],
        }
    }
}

/// `migrate-set-capabilities`.
pub struct MigrateSetCapabilities;

impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    const DOC: &'static str = "Set migration capabilities: bulkhead cannot migrate, so only \
        turning capabilities off and turning 'events' on (no migration event ever comes) \
        are accepted.";
    const BROKER_ONLY: bool = true;
    type Args = SetCapabilitiesArgs;
    type Ret = Empty;

    fn run(args: SetCapabilitiesArgs, _ctx: &Ctx<'_>) -> Result<Empty> {
        for c in &args.capabilities {
            if c.state && c.capability != "events" {
                return Err(QmpError::generic(format!(
                    "Capability '{}' is not supported: bulkhead cannot migrate",
                    c.capability
                )));
            }
        }
        Ok(Empty {})
    }
}
