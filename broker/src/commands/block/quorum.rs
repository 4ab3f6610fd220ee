//! `x-blockdev-change` and the quorum events (`QUORUM_REPORT_BAD`,
//! `QUORUM_FAILURE`). The checks and QEMU's messages are block-proc's
//! (`block/quorum/change.rs`); the broker keeps the result as desired
//! state ([`crate::machine::quorum_state`]).

use serde::Deserialize;

use crate::machine::quorum_state;
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx, Registry};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// Arguments of `x-blockdev-change`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XBlockdevChangeArgs {
    /// The parent node (a quorum).
    pub parent: String,
    /// The child to remove (`children.N`).
    #[serde(default)]
    pub child: Option<String>,
    /// The node to add as a new child.
    #[serde(default)]
    pub node: Option<String>,
}

impl QapiType for XBlockdevChangeArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "x-blockdev-change-arg",
            members: vec![
                member::<String>("parent"),
                optional::<String>("child"),
                optional::<String>("node"),
            ],
        }
    }
}

/// `x-blockdev-change`.
pub struct XBlockdevChange;

impl Command for XBlockdevChange {
    const NAME: &'static str = "x-blockdev-change";
    const DOC: &'static str = "Remove child 'child' of quorum node 'parent', or add node \
        'node' to it as a new child.";
    type Args = XBlockdevChangeArgs;
    type Ret = Empty;

    fn run(args: XBlockdevChangeArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        m.across_block_restarts(|| {
            quorum_state::change(m, &args.parent, args.child.as_deref(), args.node.as_deref())
        })?;
        Ok(Empty {})
    }
}

/// Data of `QUORUM_REPORT_BAD`.
pub struct QuorumReportBadData;

impl QapiType for QuorumReportBadData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "QUORUM_REPORT_BAD_arg",
            members: vec![
                member::<QuorumOpType>("type"),
                optional::<String>("error"),
                member::<String>("node-name"),
                member::<i64>("sector"),
                member::<i64>("sectors-count"),
            ],
        }
    }
}

/// QEMU's `QuorumOpType`.
pub struct QuorumOpType;

impl QapiType for QuorumOpType {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "QuorumOpType",
            values: vec!["read", "write", "flush"],
        }
    }
}

/// Data of `QUORUM_FAILURE`.
pub struct QuorumFailureData;

impl QapiType for QuorumFailureData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "QUORUM_FAILURE_arg",
            members: vec![
                member::<String>("reference"),
                member::<i64>("sector"),
                member::<i64>("sectors-count"),
            ],
        }
    }
}

/// Registers the command and the events.
pub fn register(r: &mut Registry) {
    r.register::<XBlockdevChange>();
    r.event::<QuorumReportBadData>(
        "QUORUM_REPORT_BAD",
        "A quorum child failed a request or was outvoted on a read.",
    );
    r.event::<QuorumFailureData>(
        "QUORUM_FAILURE",
        "A quorum request did not reach the vote threshold.",
    );
}
