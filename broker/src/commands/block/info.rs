//! `query-named-block-nodes` and the node/image info types it shares with
//! `query-block`.

use std::time::Instant;

use ipc_proto::block::{BlockReply, BlockRequest, FormatSpecific, NodeInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::*;
use crate::machine::block_limits::Throttle;
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
    /// QEMU's `ImageInfoSpecific` (`{"type": ..., "data": {...}}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<Value>,
    /// Internal snapshots (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<super::snapshots_internal::SnapshotInfo>>,
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
                optional::<Value>("format-specific"),
                optional::<Vec<super::snapshots_internal::SnapshotInfo>>("snapshots"),
            ],
        }
    }
}

impl ImageInfo {
    fn from_proto(i: &ipc_proto::block::ImageInfo, flat: bool) -> Self {
        ImageInfo {
            filename: i.filename.clone(),
            format: i.format.clone(),
            // QEMU's drivers without bdrv_get_info have no dirty flag.
            dirty_flag: (!matches!(i.format.as_str(), "null-co" | "quorum")).then_some(false),
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
            format_specific: i.format_specific.as_ref().map(format_specific),
            snapshots: None,
        }
    }
}

/// QEMU's `ImageInfoSpecific` for block-proc's description.
fn format_specific(f: &FormatSpecific) -> Value {
    match f {
        FormatSpecific::File => json!({"type": "file", "data": {}}),
        FormatSpecific::Qcow2(q) => {
            let mut data = Map::new();
            data.insert("compat".into(), json!(q.compat));
            if let Some(v) = q.lazy_refcounts {
                data.insert("lazy-refcounts".into(), json!(v));
            }
            if let Some(v) = q.corrupt {
                data.insert("corrupt".into(), json!(v));
            }
            if let Some(v) = q.extended_l2 {
                data.insert("extended-l2".into(), json!(v));
            }
            data.insert("refcount-bits".into(), json!(q.refcount_bits));
            data.insert("compression-type".into(), json!(q.compression_type));
            json!({"type": "qcow2", "data": data})
        }
    }
}

/// The optional throttle members of QEMU's `BlockDeviceInfo`, present
/// only for a throttled device's `inserted` (as QEMU shows them).
#[derive(Debug, Clone, Default, Serialize)]
#[allow(missing_docs)]
pub struct ThrottleExtra {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_rd_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_wr_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_rd_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_wr_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_rd_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_wr_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_rd_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_wr_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The names of [`ThrottleExtra`]'s members, for the schema (also the
/// optional integers of `block_set_io_throttle`).
pub(super) const THROTTLE_EXTRA: [&str; 13] = [
    "bps_max",
    "bps_rd_max",
    "bps_wr_max",
    "iops_max",
    "iops_rd_max",
    "iops_wr_max",
    "bps_max_length",
    "bps_rd_max_length",
    "bps_wr_max_length",
    "iops_max_length",
    "iops_rd_max_length",
    "iops_wr_max_length",
    "iops_size",
];

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
    /// Burst limits and group of a throttled device.
    #[serde(flatten)]
    pub throttle: ThrottleExtra,
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
            ]
            .into_iter()
            .chain(THROTTLE_EXTRA.iter().map(|m| optional::<i64>(m)))
            .chain([optional::<String>("group")])
            .collect(),
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
            image: ImageInfo {
                snapshots: super::snapshots_internal::image_snapshots(&n.snapshots),
                ..ImageInfo::from_proto(&n.image, flat)
            },
            cache: BlockdevCacheInfo {
                writeback: true,
                direct: n.cache_direct,
                no_flush: n.cache_no_flush,
            },
            write_threshold: 0,
            throttle: ThrottleExtra::default(),
            dirty_bitmaps: None,
        }
    }

    /// With the node's write threshold from the broker's desired state.
    pub fn with_threshold(mut self, m: &Machine) -> Self {
        let t = lock(&block_state::state(m))
            .limits
            .threshold(&self.node_name);
        self.write_threshold = i64::try_from(t).unwrap_or(i64::MAX);
        self
    }

    /// With a throttled device's limits, as QEMU's `inserted` shows them.
    pub fn with_throttle(mut self, t: Option<&Throttle>) -> Self {
        let Some(t) = t else { return self };
        let b = &t.config.buckets;
        let v = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        self.bps = v(b[0].avg);
        self.bps_rd = v(b[1].avg);
        self.bps_wr = v(b[2].avg);
        self.iops = v(b[3].avg);
        self.iops_rd = v(b[4].avg);
        self.iops_wr = v(b[5].avg);
        let max = |i: usize| (b[i].max != 0).then_some(b[i].max);
        let len = |i: usize| (b[i].max != 0).then_some(b[i].burst_length);
        self.throttle = ThrottleExtra {
            bps_max: max(0),
            bps_rd_max: max(1),
            bps_wr_max: max(2),
            iops_max: max(3),
            iops_rd_max: max(4),
            iops_wr_max: max(5),
            bps_max_length: len(0),
            bps_rd_max_length: len(1),
            bps_wr_max_length: len(2),
            iops_max_length: len(3),
            iops_rd_max_length: len(4),
            iops_wr_max_length: len(5),
            iops_size: (t.config.op_size != 0).then_some(t.config.op_size),
            group: Some(t.group.clone()),
        };
        self
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
        | BlockReply::Trace(_)
        | BlockReply::Bitmap(_)
        | BlockReply::Snapshot(_)) => Err(unexpected_reply(&other).into()),
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
            .map(|n| BlockDeviceInfo::from_node(n, flat).with_threshold(ctx.machine))
            .collect();
        fill_dirty_bitmaps(ctx.machine, &mut infos)?;
        Ok(infos)
    }
}
