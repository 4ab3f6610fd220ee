//! `block_resize`: change a node's size while the guest runs. The new size
//! lives in the image file itself (block-proc truncates the file it holds),
//! so a restarted block-proc reads it back; the exports show the new
//! capacity at once.

use ipc_proto::block::BlockRequest;
use serde::Deserialize;

use crate::machine::{block_limits, block_state, lock, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// Arguments of `block_resize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockResizeArgs {
    /// Block backend name (a `-drive` id).
    pub device: Option<String>,
    /// Node name.
    pub node_name: Option<String>,
    /// New size in bytes.
    pub size: i64,
}

impl QapiType for BlockResizeArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "q_obj_block_resize-arg",
            members: vec![
                optional::<String>("device"),
                optional::<String>("node-name"),
                member::<i64>("size"),
            ],
        }
    }
}

/// QEMU's `bdrv_lookup_bs(device, node-name)`: the backend named `device`
/// (a `-drive` id, which names its top node here), else the node named
/// `node-name`.
fn lookup(m: &Machine, device: Option<&str>, node_name: Option<&str>) -> Result<String> {
    if let Some(d) = device {
        if super::drive_ids(m).iter().any(|id| id == d) {
            return Ok(d.to_owned());
        }
    }
    if let Some(n) = node_name {
        let names = lock(&block_state::state(m)).node_names();
        if names.iter().any(|x| x == n) {
            return Ok(n.to_owned());
        }
    }
    Err(QmpError::generic(format!(
        "Cannot find device='{}' nor node-name='{}'",
        device.unwrap_or(""),
        node_name.unwrap_or("")
    )))
}

/// `block_resize`.
pub struct BlockResize;

impl Command for BlockResize {
    const NAME: &'static str = "block_resize";
    const DOC: &'static str = "Resize a block node (raw, file and qcow2 nodes; the image is \
        truncated or extended) and show the new capacity to the guest.";
    type Args = BlockResizeArgs;
    type Ret = Empty;

    fn run(args: BlockResizeArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let node = lookup(m, args.device.as_deref(), args.node_name.as_deref())?;
        let size = u64::try_from(args.size)
            .map_err(|_| QmpError::generic("Parameter 'size' expects a >0 size"))?;
        super::jobs::not_busy(m, &node)?;
        let drv = super::query_nodes(m)?
            .into_iter()
            .find(|n| n.node_name == node)
            .map(|n| n.drv);
        if drv.as_deref() == Some("qcow2") && !size.is_multiple_of(512) {
            return Err(QmpError::generic("The new size must be a multiple of 512"));
        }
        let req = BlockRequest::ResizeNode {
            node_name: node,
            size,
        };
        block_limits::send(m, req)?;
        Ok(Empty {})
    }
}
