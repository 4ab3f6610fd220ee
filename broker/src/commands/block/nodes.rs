//! `blockdev-add`, `blockdev-del` and `x-blockdev-del`.

use serde::Deserialize;

use super::*;
use crate::machine::block_state;
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// `blockdev-add`.
pub struct BlockdevAdd;

impl Command for BlockdevAdd {
    const NAME: &'static str = "blockdev-add";
    const DOC: &'static str =
        "Create a block node (and its inline children) from BlockdevOptions; \
        the broker opens the files and block-proc serves the node.";
    type Args = BlockdevAddArgs;
    type Ret = Empty;

    fn run(args: BlockdevAddArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        blockdev_add(ctx.machine, args.0)?;
        Ok(Empty {})
    }
}

/// Arguments of `blockdev-del`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockdevDelArgs {
    /// The node to delete.
    pub node_name: String,
}

impl QapiType for BlockdevDelArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevDelArgs",
            members: vec![member::<String>("node-name")],
        }
    }
}

/// `blockdev-del`.
pub struct BlockdevDel;

impl Command for BlockdevDel {
    const NAME: &'static str = "blockdev-del";
    const DOC: &'static str = "Delete a node created by blockdev-add that nothing uses.";
    type Args = BlockdevDelArgs;
    type Ret = Empty;

    fn run(args: BlockdevDelArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        m.across_block_restarts(|| block_state::del_node(m, &args.node_name))?;
        Ok(Empty {})
    }
}

/// `x-blockdev-del`: the experimental name `blockdev-del` had before QEMU
/// 2.9 (QEMU 10 no longer has it); same semantics.
pub struct XBlockdevDel;

impl Command for XBlockdevDel {
    const NAME: &'static str = "x-blockdev-del";
    const DOC: &'static str = "Old name of blockdev-del, kept for old clients.";
    type Args = BlockdevDelArgs;
    type Ret = Empty;

    fn run(args: BlockdevDelArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        BlockdevDel::run(args, ctx)
    }
}
