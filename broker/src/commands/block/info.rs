//! `query-named-block-nodes` and the node/image info types it shares with
//! `query-block`.

use std::time::Instant;

use ipc_proto::block::{BlockReply, BlockRequest, NodeInfo};
use serde::{Deserialize, Serialize};

use super::*;
use crate::machine::{block_state, lock, unexpected_reply, Machine};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Member, QapiType, SchemaType};

/// QEMU's `BlockdevCacheInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevCacheInfo {
    /// Always true (no writethrough mode).
    pub writeback: bool,
    /// O_DIRECT.
    pub direct: bool,
    /// Flushes ignored.
    #[serde(rename = "no-flush")]
    pub no_flush: bool,
}

impl QapiType for BlockdevCacheInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevCacheInfo",
            members: vec![
                member::<bool>("writeback"),
                member::<bool>("direct"),
                member::<bool>("no-flush"),
            ],
        }
    }
}

/// QEMU's `ImageInfo` (the members bulkhead knows).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// File name.
    pub filename: String,
    /// Format (driver) name.
    pub format: String,
    /// Whether the image was not cleanly closed (absent for null-co).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    /// Bytes allocated on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<u64>,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// qcow2 cluster size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Backing file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// The backing image (absent with `flat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_image: Option<Box<ImageInfo>>,
}

impl QapiType for ImageInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "ImageInfo",
            members: vec![
                member::<String>("filename"),
                member::<String>("format"),
                optional::<bool>("dirty-flag"),
                optional::<i64>("actual-size"),
                member::<i64>("virtual-size"),
                optional::<i64>("cluster-size"),
                optional::<String>("backing-filename"),
                // Recursive: a stub with the same name makes introspection
                // refer to this very type.
                Member {
                    name: "backing-image",
                    ty: SchemaType::Object {
                        name: "ImageInfo",
                        members: Vec::new(),
                    },
                    optional: true,
                },
            ],
        }
    }
}

impl ImageInfo {
    fn from_proto(i: &ipc_proto::block::ImageInfo, flat: bool) -> Self {
        ImageInfo {
            filename: i.filename.clone(),
            format: i.format.clone(),
            dirty_flag: (i.format != "null-co").then_some(false),
            actual_size: i.actual_size,
            virtual_size: i.virtual_size,
            cluster_size: i.cluster_size,
            backing_filename: i.backing_filename.clone(),
            backing_image: if flat {
                None
            } else {
                i.backing_image
                    .as_ref()
                    .map(|b| Box::new(Self::from_proto(b, false)))
            },
        }
    }
}

/// QEMU's `BlockDeviceInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockDeviceInfo {
    /// File name of the node.
    pub file: String,
    /// Node name.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// Read-only.
    pub ro: bool,
    /// Driver.
    pub drv: String,
    /// Backing file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Length of the backing chain.
    pub backing_file_depth: i64,
    /// Whether the node is active (not inactivated for migration).
    pub active: bool,
    /// Always false.
    pub encrypted: bool,
    /// Zero detection mode.
    pub detect_zeroes: String,
    /// Throttle limits (all 0: none set).
    pub bps: i64,
    /// Read bytes limit.
    pub bps_rd: i64,
    /// Write bytes limit.
    pub bps_wr: i64,
    /// I/O operations limit.
    pub iops: i64,
    /// Read operations limit.
    pub iops_rd: i64,
    /// Write operations limit.
    pub iops_wr: i64,
    /// Image description.
    pub image: ImageInfo,
    /// Cache mode.
    pub cache: BlockdevCacheInfo,
    /// Write threshold (0: none).
    pub write_threshold: i64,
    /// Dirty bitmaps of the node (absent when it has none).
    #[serde(rename = "dirty-bitmaps", skip_serializing_if = "Option::is_none")]
    pub dirty_bitmaps: Option<Vec<BlockDirtyInfo>>,
}

impl QapiType for BlockDeviceInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockDeviceInfo",
            members: vec![
                member::<String>("file"),
                member::<String>("node-name"),
                member::<bool>("ro"),
                member::<String>("drv"),
                optional::<String>("backing_file"),
                member::<i64>("backing_file_depth"),
                member::<bool>("active"),
                member::<bool>("encrypted"),
                member::<BlockdevDetectZeroesOptions>("detect_zeroes"),
                member::<i64>("bps"),
                member::<i64>("bps_rd"),
                member::<i64>("bps_wr"),
                member::<i64>("iops"),
                member::<i64>("iops_rd"),
                member::<i64>("iops_wr"),
                member::<ImageInfo>("image"),
                member::<BlockdevCacheInfo>("cache"),
                member::<i64>("write_threshold"),
                optional::<Vec<BlockDirtyInfo>>("dirty-bitmaps"),
            ],
        }
    }
}

impl BlockDeviceInfo {
    /// The QMP form of block-proc's node description.
    pub fn from_node(n: &NodeInfo, flat: bool) -> Self {
        BlockDeviceInfo {
            file: n.file.clone(),
            node_name: n.node_name.clone(),
            ro: n.ro,
            drv: n.drv.clone(),
            backing_file: n.backing_file.clone(),
            backing_file_depth: i64::from(n.backing_file_depth),
            active: true,
            encrypted: false,
            detect_zeroes: n.detect_zeroes.clone(),
            bps: 0,
            bps_rd: 0,
            bps_wr: 0,
            iops: 0,
            iops_rd: 0,
            iops_wr: 0,
            image: ImageInfo::from_proto(&n.image, flat),
            cache: BlockdevCacheInfo {
                writeback: true,
                direct: n.cache_direct,
                no_flush: n.cache_no_flush,
            },
            write_threshold: 0,
            dirty_bitmaps: None,
        }
    }
}

pub(super) fn query_nodes(m: &Machine) -> Result<Vec<NodeInfo>> {
    query_nodes_until(m, Instant::now() + m.worker_timeout())
}

/// The nodes, asked of block-proc by `deadline` (waiting for a restart).
pub(super) fn query_nodes_until(m: &Machine, deadline: Instant) -> Result<Vec<NodeInfo>> {
    match m.block_query_until(BlockRequest::QueryNodes, deadline)?.1 {
        BlockReply::Nodes(n) => Ok(n),
        other @ (BlockReply::Done
        | BlockReply::NeedFiles { .. }
        | BlockReply::Stats(_)
        | BlockReply::Bitmap(_)) => Err(unexpected_reply(&other).into()),
    }
}

/// Sorts `items` in node creation order (QEMU's order). Nodes the broker
/// did not name (auto-named inline children, backing files) count as the
/// oldest, in block-proc's order.
pub(super) fn creation_order<T>(m: &Machine, items: &mut [T], name: impl Fn(&T) -> &str) {
    let order = lock(&block_state::state(m)).node_names();
    items.sort_by_key(|i| order.iter().position(|n| n == name(i)).map_or(0, |p| p + 1));
}

/// Arguments of `query-named-block-nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryNamedBlockNodesArgs {
    /// Omit the backing chain's image descriptions.
    #[serde(default)]
    pub flat: Option<bool>,
}

impl QapiType for QueryNamedBlockNodesArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "QueryNamedBlockNodesArgs",
            members: vec![optional::<bool>("flat")],
        }
    }
}

/// `query-named-block-nodes`.
pub struct QueryNamedBlockNodes;

impl Command for QueryNamedBlockNodes {
    const NAME: &'static str = "query-named-block-nodes";
    const DOC: &'static str = "List every block node, newest first (BlockDeviceInfo).";
    type Args = QueryNamedBlockNodesArgs;
    type Ret = Vec<BlockDeviceInfo>;

    fn run(args: QueryNamedBlockNodesArgs, ctx: &Ctx<'_>) -> Result<Vec<BlockDeviceInfo>> {
        let mut nodes = query_nodes(ctx.machine)?;
        creation_order(ctx.machine, &mut nodes, |n| &n.node_name);
        nodes.reverse();
        let flat = args.flat.unwrap_or(false);
        let mut infos: Vec<BlockDeviceInfo> = nodes
            .iter()
            .map(|n| BlockDeviceInfo::from_node(n, flat))
            .collect();
        fill_dirty_bitmaps(ctx.machine, &mut infos)?;
        Ok(infos)
    }
}
