//! `block-set-write-threshold` and its `BLOCK_WRITE_THRESHOLD` event.

use ipc_proto::block::BlockRequest;
use serde::Deserialize;

use crate::machine::{block_limits, block_state, lock};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// Arguments of `block-set-write-threshold`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockSetWriteThresholdArgs {
    /// The node.
    pub node_name: String,
    /// Offset in bytes; 0 disables. QAPI `uint64`: a negative number is
    /// taken modulo 2^64, as QEMU does.
    pub write_threshold: i128,
}

impl QapiType for BlockSetWriteThresholdArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockSetWriteThresholdArgs",
            members: vec![
                member::<String>("node-name"),
                member::<u64>("write-threshold"),
            ],
        }
    }
}

/// Data of `BLOCK_WRITE_THRESHOLD`.
pub struct WriteThresholdData;

impl QapiType for WriteThresholdData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BLOCK_WRITE_THRESHOLD_arg",
            members: vec![
                member::<String>("node-name"),
                member::<u64>("amount-exceeded"),
                member::<u64>("write-threshold"),
            ],
        }
    }
}

/// `block-set-write-threshold`.
pub struct BlockSetWriteThreshold;

impl Command for BlockSetWriteThreshold {
    const NAME: &'static str = "block-set-write-threshold";
    const DOC: &'static str = "Set a node's one-shot write threshold (0: none); \
        BLOCK_WRITE_THRESHOLD reports the first write past it.";
    type Args = BlockSetWriteThresholdArgs;
    type Ret = Empty;

    fn run(args: BlockSetWriteThresholdArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let threshold = args.write_threshold as u64;
        let nodes = super::query_nodes(m)?;
        if !nodes.iter().any(|n| n.node_name == args.node_name) {
            return Err(QmpError::generic(format!(
                "Device '{}' not found",
                args.node_name
            )));
        }
        let shared = block_state::state(m);
        let old = {
            let mut st = lock(&shared);
            let old = st.limits.threshold(&args.node_name);
            st.limits.set_threshold(&args.node_name, threshold);
            old
        };
        let req = BlockRequest::SetWriteThreshold {
            node_name: args.node_name.clone(),
            threshold,
        };
        if let Err(e) = block_limits::send(m, req) {
            lock(&shared).limits.set_threshold(&args.node_name, old);
            return Err(e.into());
        }
        Ok(Empty {})
    }
}
