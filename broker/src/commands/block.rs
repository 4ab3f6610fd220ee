//! Block-graph commands: `blockdev-add`, `blockdev-del` (and its old name
//! `x-blockdev-del`), `query-named-block-nodes`, `query-blockstats` and
//! `query-block`, with QEMU's semantics and messages. The nodes live in
//! block-proc; the broker validates, opens the files and keeps the desired
//! state ([`crate::machine::block_state`]).
//!
//! `blockdev-add`'s arguments are QEMU's `BlockdevOptions`, a flat union on
//! `driver`. The schema module has no unions, so the registry sees one
//! object holding the common members plus every driver's members (all
//! optional; `file`/`backing`, which are alternates, as `any`), which gives
//! `query-qmp-schema` every member name and QEMU's messages for a missing
//! or unknown `driver` and unknown members. The driver-specific checks
//! (required members, members of another driver, nested definitions with
//! their `file.` prefix) are done here by [`validate_options`], with the
//! same schema functions and QEMU's messages; then the arguments are
//! deserialised into ipc-proto's [`BlockdevOptions`].

use std::time::Instant;

use ipc_proto::block::{
    BlockReply, BlockRequest, BlockdevOptions, BlockdevRef, NodeInfo, NodeStats,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::machine::{block_state, lock, unexpected_reply, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, validate_args, Empty, Member, QapiType, SchemaType};

/// QEMU's `BlockdevDriver`, restricted to the drivers bulkhead has.
pub struct BlockdevDriver;

impl QapiType for BlockdevDriver {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevDriver",
            values: vec!["file", "null-co", "qcow2", "raw"],
        }
    }
}

/// QEMU's `BlockdevDiscardOptions`.
pub struct BlockdevDiscardOptions;

impl QapiType for BlockdevDiscardOptions {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevDiscardOptions",
            values: vec!["ignore", "unmap"],
        }
    }
}

/// QEMU's `BlockdevDetectZeroesOptions`.
pub struct BlockdevDetectZeroesOptions;

impl QapiType for BlockdevDetectZeroesOptions {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevDetectZeroesOptions",
            values: vec!["off", "on", "unmap"],
        }
    }
}

/// QEMU's `BlockdevCacheOptions`.
pub struct BlockdevCacheOptions;

impl QapiType for BlockdevCacheOptions {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevCacheOptions",
            members: vec![optional::<bool>("direct"), optional::<bool>("no-flush")],
        }
    }
}

/// QEMU's `OnOffAuto` (the `file` driver's `locking`).
pub struct OnOffAuto;

impl QapiType for OnOffAuto {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "OnOffAuto",
            values: vec!["auto", "on", "off"],
        }
    }
}

/// QEMU's `BlockdevAioOptions`.
pub struct BlockdevAioOptions;

impl QapiType for BlockdevAioOptions {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevAioOptions",
            values: vec!["threads", "native", "io_uring"],
        }
    }
}

/// A `BlockdevRef` or `BlockdevRefOrNull` alternate, checked by hand.
fn alternate(name: &'static str, required: bool) -> Member {
    Member {
        name,
        ty: Value::schema(),
        optional: !required,
    }
}

/// The members every driver has (QEMU `BlockdevOptionsBase`).
fn base_members() -> Vec<Member> {
    vec![
        member::<BlockdevDriver>("driver"),
        optional::<String>("node-name"),
        optional::<BlockdevDiscardOptions>("discard"),
        optional::<BlockdevCacheOptions>("cache"),
        optional::<bool>("read-only"),
        optional::<bool>("auto-read-only"),
        optional::<bool>("force-share"),
        optional::<BlockdevDetectZeroesOptions>("detect-zeroes"),
    ]
}

/// The members of one driver's variant.
fn variant_members(driver: &str) -> Vec<Member> {
    match driver {
        "file" => vec![
            member::<String>("filename"),
            optional::<OnOffAuto>("locking"),
            optional::<BlockdevAioOptions>("aio"),
        ],
        "raw" => vec![
            alternate("file", true),
            optional::<u64>("offset"),
            optional::<u64>("size"),
        ],
        "qcow2" => vec![
            alternate("file", true),
            alternate("backing", false),
            optional::<bool>("lazy-refcounts"),
            optional::<bool>("pass-discard-request"),
            optional::<u64>("cache-size"),
        ],
        "null-co" => vec![
            optional::<u64>("size"),
            optional::<u64>("latency-ns"),
            optional::<bool>("read-zeroes"),
        ],
        _ => Vec::new(),
    }
}

/// `blockdev-add`'s arguments: the `BlockdevOptions` object itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockdevAddArgs(pub Map<String, Value>);

impl QapiType for BlockdevAddArgs {
    fn schema() -> SchemaType {
        let mut members = base_members();
        for d in ["file", "null-co", "qcow2", "raw"] {
            for mut m in variant_members(d) {
                if !members.iter().any(|x| x.name == m.name) {
                    m.optional = true;
                    members.push(m);
                }
            }
        }
        SchemaType::Object {
            name: "BlockdevOptions",
            members,
        }
    }
}

/// Puts `prefix` in front of the member path of a schema message (QEMU
/// prints nested paths as `file.filename`; enum messages keep the bare
/// member name).
fn with_prefix(msg: String, prefix: &str) -> String {
    if prefix.is_empty() || msg.contains("' does not accept value '") {
        return msg;
    }
    for head in ["Parameter '", "Invalid parameter type for '"] {
        if let Some(rest) = msg.strip_prefix(head) {
            return format!("{head}{prefix}{rest}");
        }
    }
    msg
}

/// Checks a `BlockdevOptions` object (and its inline children) against
/// its driver's members, with QEMU's messages. `prefix` is the path of the
/// object (`""`, `"file."`, ...).
pub fn validate_options(map: &Map<String, Value>, prefix: &str) -> std::result::Result<(), String> {
    let union = BlockdevAddArgs::schema();
    validate_args(map, &union).map_err(|e| with_prefix(e, prefix))?;
    let driver = map
        .get("driver")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut members = base_members();
    members.extend(variant_members(driver));
    let variant = SchemaType::Object {
        name: "BlockdevOptions",
        members,
    };
    validate_args(map, &variant).map_err(|e| with_prefix(e, prefix))?;
    for (name, nullable) in [("file", false), ("backing", true)] {
        match map.get(name) {
            None | Some(Value::String(_)) => {}
            Some(Value::Null) if nullable => {}
            Some(Value::Object(child)) => validate_options(child, &format!("{prefix}{name}."))?,
            Some(_) => {
                let ty = if nullable {
                    "BlockdevRefOrNull"
                } else {
                    "BlockdevRef"
                };
                return Err(format!(
                    "Invalid parameter type for '{prefix}{name}', expected: {ty}"
                ));
            }
        }
    }
    Ok(())
}

/// Marks `"backing": null` as "no backing file" (serde reads a JSON null
/// in an `Option<Option<_>>` as the outer `None`).
fn fix_null_backing(o: &mut BlockdevOptions, map: &Map<String, Value>) {
    let child = |r: Option<&mut BlockdevRef>, key: &str| {
        if let (Some(BlockdevRef::Definition(d)), Some(Value::Object(m))) = (r, map.get(key)) {
            fix_null_backing(d, m);
        }
    };
    match o {
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) => {}
        BlockdevOptions::Raw(r) => child(r.file.as_mut(), "file"),
        BlockdevOptions::Qcow2(q) => {
            if map.get("backing") == Some(&Value::Null) {
                q.backing = Some(None);
            }
            child(q.file.as_mut(), "file");
            child(q.backing.as_mut().and_then(Option::as_mut), "backing");
        }
    }
}

/// Validates `blockdev-add` arguments into ipc-proto's options.
pub fn parse_options(map: Map<String, Value>) -> Result<BlockdevOptions> {
    validate_options(&map, "").map_err(QmpError::generic)?;
    if !map.contains_key("node-name") {
        return Err(QmpError::generic(
            "'node-name' must be specified for the root node",
        ));
    }
    let mut o: BlockdevOptions = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| QmpError::generic(format!("Invalid parameter: {e}")))?;
    fix_null_backing(&mut o, &map);
    Ok(o)
}

/// `blockdev-add` with the arguments as a JSON object: the path both the
/// command and the command line (`-blockdev`, `-drive`) take.
pub fn blockdev_add(m: &Machine, map: Map<String, Value>) -> Result<()> {
    blockdev_add_hinted(m, map).map_err(|(e, _)| e)
}

/// [`blockdev_add`], keeping QEMU's hint line for the command line.
fn blockdev_add_hinted(
    m: &Machine,
    map: Map<String, Value>,
) -> std::result::Result<(), (QmpError, Option<String>)> {
    let o = parse_options(map).map_err(|e| (e, None))?;
    // The hint of the last attempt (a restart of block-proc runs it again).
    let hint = std::cell::RefCell::new(None);
    m.across_block_restarts(|| {
        block_state::add_node(m, o.clone()).map_err(|e| {
            *hint.borrow_mut() = e.hint;
            e.error
        })
    })
    .map_err(|e| (e.into(), hint.take()))
}

/// Applies the command line's `-blockdev` and `-drive` options, in order.
/// The error is QEMU's `OPTION VALUE: message`, and its hint on the next
/// line when QEMU prints one.
pub fn apply_config(m: &Machine) -> std::result::Result<(), QmpError> {
    for spec in &m.config().blockdevs {
        blockdev_add_hinted(m, spec.options.clone()).map_err(|(e, hint)| QmpError {
            class: e.class,
            desc: match hint {
                Some(h) => format!("{} {}: {}\n{h}", spec.option, spec.text, e.desc),
                None => format!("{} {}: {}", spec.option, spec.text, e.desc),
            },
        })?;
    }
    Ok(())
}

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

// ---- query-named-block-nodes ----------------------------------------------

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
        }
    }
}

fn query_nodes(m: &Machine) -> Result<Vec<NodeInfo>> {
    query_nodes_until(m, Instant::now() + m.worker_timeout())
}

/// The nodes, asked of block-proc by `deadline` (waiting for a restart).
fn query_nodes_until(m: &Machine, deadline: Instant) -> Result<Vec<NodeInfo>> {
    match m.block_query_until(BlockRequest::QueryNodes, deadline)?.1 {
        BlockReply::Nodes(n) => Ok(n),
        other @ (BlockReply::Done | BlockReply::NeedFiles { .. } | BlockReply::Stats(_)) => {
            Err(unexpected_reply(&other).into())
        }
    }
}

/// Sorts `items` in node creation order (QEMU's order). Nodes the broker
/// did not name (auto-named inline children, backing files) count as the
/// oldest, in block-proc's order.
fn creation_order<T>(m: &Machine, items: &mut [T], name: impl Fn(&T) -> &str) {
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
        Ok(nodes
            .iter()
            .map(|n| BlockDeviceInfo::from_node(n, flat))
            .collect())
    }
}

// ---- query-blockstats -----------------------------------------------------

/// The integer members of QEMU's `BlockDeviceStats`, in QAPI order.
const STAT_COUNTERS: [&str; 30] = [
    "rd_bytes",
    "wr_bytes",
    "zone_append_bytes",
    "unmap_bytes",
    "rd_operations",
    "wr_operations",
    "zone_append_operations",
    "flush_operations",
    "unmap_operations",
    "rd_total_time_ns",
    "wr_total_time_ns",
    "zone_append_total_time_ns",
    "flush_total_time_ns",
    "unmap_total_time_ns",
    "wr_highest_offset",
    "rd_merged",
    "wr_merged",
    "zone_append_merged",
    "unmap_merged",
    "failed_rd_operations",
    "failed_wr_operations",
    "failed_zone_append_operations",
    "failed_flush_operations",
    "failed_unmap_operations",
    "invalid_rd_operations",
    "invalid_wr_operations",
    "invalid_zone_append_operations",
    "invalid_flush_operations",
    "invalid_unmap_operations",
    "idle_time_ns",
];

/// QEMU's `BlockDeviceTimedStats` (bulkhead keeps no timed intervals, so
/// the list is always empty).
pub struct BlockDeviceTimedStats;

impl QapiType for BlockDeviceTimedStats {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockDeviceTimedStats",
            members: vec![
                member::<i64>("interval_length"),
                member::<i64>("min_rd_latency_ns"),
                member::<i64>("max_rd_latency_ns"),
                member::<i64>("avg_rd_latency_ns"),
                member::<i64>("min_wr_latency_ns"),
                member::<i64>("max_wr_latency_ns"),
                member::<i64>("avg_wr_latency_ns"),
                member::<i64>("min_flush_latency_ns"),
                member::<i64>("max_flush_latency_ns"),
                member::<i64>("avg_flush_latency_ns"),
                member::<f64>("avg_rd_queue_depth"),
                member::<f64>("avg_wr_queue_depth"),
            ],
        }
    }
}

/// QEMU's `BlockDeviceStats`, built from [`STAT_COUNTERS`].
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct BlockDeviceStats(pub Map<String, Value>);

impl QapiType for BlockDeviceStats {
    fn schema() -> SchemaType {
        let mut members: Vec<Member> = STAT_COUNTERS
            .iter()
            .map(|n| {
                if *n == "idle_time_ns" {
                    optional::<i64>(n)
                } else {
                    member::<i64>(n)
                }
            })
            .collect();
        members.push(member::<Vec<BlockDeviceTimedStats>>("timed_stats"));
        members.push(member::<bool>("account_invalid"));
        members.push(member::<bool>("account_failed"));
        SchemaType::Object {
            name: "BlockDeviceStats",
            members,
        }
    }
}

impl BlockDeviceStats {
    /// The QMP form of block-proc's counters.
    pub fn from_node(n: &NodeStats) -> Self {
        let s = &n.stats;
        let known = [
            ("rd_bytes", s.rd_bytes),
            ("wr_bytes", s.wr_bytes),
            ("unmap_bytes", s.unmap_bytes),
            ("rd_operations", s.rd_operations),
            ("wr_operations", s.wr_operations),
            ("flush_operations", s.flush_operations),
            ("unmap_operations", s.unmap_operations),
            ("rd_total_time_ns", s.rd_total_time_ns),
            ("wr_total_time_ns", s.wr_total_time_ns),
            ("flush_total_time_ns", s.flush_total_time_ns),
            ("unmap_total_time_ns", s.unmap_total_time_ns),
            ("wr_highest_offset", n.wr_highest_offset),
            ("failed_rd_operations", s.failed_rd_operations),
            ("failed_wr_operations", s.failed_wr_operations),
            ("failed_flush_operations", s.failed_flush_operations),
            ("failed_unmap_operations", s.failed_unmap_operations),
            ("invalid_rd_operations", s.invalid_rd_operations),
            ("invalid_wr_operations", s.invalid_wr_operations),
        ];
        let mut map = Map::new();
        for name in STAT_COUNTERS {
            if name == "idle_time_ns" {
                continue;
            }
            let v = known
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(0, |(_, v)| *v);
            map.insert(name.into(), Value::from(v));
        }
        map.insert("timed_stats".into(), Value::Array(Vec::new()));
        map.insert("account_invalid".into(), Value::Bool(false));
        map.insert("account_failed".into(), Value::Bool(false));
        BlockDeviceStats(map)
    }
}

/// QEMU's `BlockStats`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockStats {
    /// Device name (absent for nodes without a device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Node name.
    #[serde(rename = "node-name", skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Counters.
    pub stats: BlockDeviceStats,
    /// The statistics of the node's `file` child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<BlockStats>>,
    /// Driver-specific counters (the `file` driver's discard counts).
    #[serde(rename = "driver-specific", skip_serializing_if = "Option::is_none")]
    pub driver_specific: Option<Value>,
}

impl QapiType for BlockStats {
    fn schema() -> SchemaType {
        let stub = SchemaType::Object {
            name: "BlockStats",
            members: Vec::new(),
        };
        SchemaType::Object {
            name: "BlockStats",
            members: vec![
                optional::<String>("device"),
                optional::<String>("qdev"),
                optional::<String>("node-name"),
                member::<BlockDeviceStats>("stats"),
                Member {
                    name: "parent",
                    ty: stub.clone(),
                    optional: true,
                },
                Member {
                    name: "backing",
                    ty: stub,
                    optional: true,
                },
                optional::<Value>("driver-specific"),
            ],
        }
    }
}

/// Arguments of `query-blockstats`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QueryBlockstatsArgs {
    /// List every named node instead of every device.
    #[serde(default)]
    pub query_nodes: Option<bool>,
}

impl QapiType for QueryBlockstatsArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "QueryBlockstatsArgs",
            members: vec![optional::<bool>("query-nodes")],
        }
    }
}

fn node_stats(n: &NodeStats, drv: Option<&str>) -> BlockStats {
    let driver_specific = (drv == Some("file")).then(|| {
        serde_json::json!({
            "driver": "file",
            "discard-nb-ok": n.stats.unmap_operations,
            "discard-nb-failed": n.stats.failed_unmap_operations,
            "discard-bytes-ok": n.stats.unmap_bytes,
        })
    });
    BlockStats {
        device: None,
        node_name: Some(n.node_name.clone()),
        stats: BlockDeviceStats::from_node(n),
        parent: None,
        driver_specific,
    }
}

/// `query-blockstats`.
pub struct QueryBlockstats;

impl Command for QueryBlockstats {
    const NAME: &'static str = "query-blockstats";
    const DOC: &'static str = "I/O statistics per device, or per named node with query-nodes.";
    type Args = QueryBlockstatsArgs;
    type Ret = Vec<BlockStats>;

    fn run(args: QueryBlockstatsArgs, ctx: &Ctx<'_>) -> Result<Vec<BlockStats>> {
        if !args.query_nodes.unwrap_or(false) {
            // One entry per device; devices come with device_add.
            return Ok(Vec::new());
        }
        let m = ctx.machine;
        // Counted across block-proc restarts: never backwards.
        // One deadline for both questions.
        let deadline = Instant::now() + m.worker_timeout();
        let mut stats = match m.block_query_until(BlockRequest::QueryStats, deadline)? {
            (generation, BlockReply::Stats(s)) => lock(&m.stats).apply(generation, s),
            (
                _,
                other @ (BlockReply::Done | BlockReply::NeedFiles { .. } | BlockReply::Nodes(_)),
            ) => return Err(unexpected_reply(&other).into()),
        };
        let nodes = query_nodes_until(m, deadline)?;
        let drv = |name: &str| {
            nodes
                .iter()
                .find(|n| n.node_name == name)
                .map(|n| n.drv.as_str())
        };
        creation_order(m, &mut stats, |s| &s.node_name);
        let st = block_state::state(m);
        let st = lock(&st);
        Ok(stats
            .iter()
            .map(|s| {
                let mut out = node_stats(s, drv(&s.node_name));
                let child = st.find(&s.node_name).and_then(block_state::file_child_name);
                out.parent = child
                    .and_then(|c| stats.iter().find(|x| x.node_name == c))
                    .map(|c| Box::new(node_stats(c, drv(&c.node_name))));
                out
            })
            .collect())
    }
}

// ---- query-block ----------------------------------------------------------

/// QEMU's `BlockDeviceIoStatus`.
pub struct BlockDeviceIoStatus;

impl QapiType for BlockDeviceIoStatus {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockDeviceIoStatus",
            values: vec!["ok", "failed", "nospace"],
        }
    }
}

/// QEMU's `BlockInfo`: one block device (BlockBackend) and its medium.
#[derive(Debug, Clone, Serialize)]
pub struct BlockInfo {
    /// Device id.
    pub device: String,
    /// The guest device's QOM path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    /// Always `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Removable medium.
    pub removable: bool,
    /// Medium locked by the guest.
    pub locked: bool,
    /// The medium's root node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    /// Tray open (removable only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tray_open: Option<bool>,
    /// I/O status (when error handling stops the guest).
    #[serde(rename = "io-status", skip_serializing_if = "Option::is_none")]
    pub io_status: Option<String>,
}

impl QapiType for BlockInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockInfo",
            members: vec![
                member::<String>("device"),
                optional::<String>("qdev"),
                member::<String>("type"),
                member::<bool>("removable"),
                member::<bool>("locked"),
                optional::<BlockDeviceInfo>("inserted"),
                optional::<bool>("tray_open"),
                optional::<BlockDeviceIoStatus>("io-status"),
            ],
        }
    }
}

/// `query-block`.
pub struct QueryBlock;

impl Command for QueryBlock {
    const NAME: &'static str = "query-block";
    const DOC: &'static str =
        "List the block devices (BlockInfo): every virtio-blk-device and its node.";
    type Args = Empty;
    type Ret = Vec<BlockInfo>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<BlockInfo>> {
        let devs = crate::machine::devices::block_devices(ctx.machine);
        if devs.is_empty() {
            return Ok(Vec::new());
        }
        let nodes = query_nodes(ctx.machine)?;
        Ok(devs
            .into_iter()
            .map(|(id, node)| BlockInfo {
                device: String::new(),
                qdev: Some(format!("/machine/peripheral/{id}")),
                kind: "unknown".into(),
                removable: false,
                locked: false,
                inserted: nodes
                    .iter()
                    .find(|n| n.node_name == node)
                    .map(|n| BlockDeviceInfo::from_node(n, false)),
                tray_open: None,
                io_status: Some("ok".into()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> std::result::Result<BlockdevOptions, String> {
        let map = v.as_object().unwrap().clone();
        validate_args(&map, &BlockdevAddArgs::schema())?;
        parse_options(map).map_err(|e| e.desc)
    }

    #[test]
    fn driver_errors_use_qemu_wording() {
        assert_eq!(
            check(json!({"node-name": "x"})).unwrap_err(),
            "Parameter 'driver' is missing"
        );
        assert_eq!(
            check(json!({"driver": "foo", "node-name": "x"})).unwrap_err(),
            "Parameter 'driver' does not accept value 'foo'"
        );
    }

    #[test]
    fn root_node_needs_a_node_name() {
        assert_eq!(
            check(json!({"driver": "file", "filename": "/nope"})).unwrap_err(),
            "'node-name' must be specified for the root node"
        );
    }

    #[test]
    fn variant_members_are_checked_per_driver() {
        assert_eq!(
            check(json!({"driver": "file", "node-name": "f", "filename": "/x", "bogus": 1}))
                .unwrap_err(),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            check(json!({"driver": "raw", "node-name": "r"})).unwrap_err(),
            "Parameter 'file' is missing"
        );
        assert_eq!(
            check(json!({"driver": "raw", "node-name": "r", "file": 5})).unwrap_err(),
            "Invalid parameter type for 'file', expected: BlockdevRef"
        );
        assert_eq!(
            check(json!({"driver": "null-co", "node-name": "n", "filename": "/x"})).unwrap_err(),
            "Parameter 'filename' is unexpected"
        );
    }

    #[test]
    fn nested_definitions_report_their_path() {
        let raw = |file: Value| json!({"driver": "raw", "node-name": "r", "file": file});
        assert_eq!(
            check(raw(json!({"driver": "file", "filename": "/x", "bogus": 1}))).unwrap_err(),
            "Parameter 'file.bogus' is unexpected"
        );
        assert_eq!(
            check(raw(json!({"driver": "file", "filename": 5}))).unwrap_err(),
            "Invalid parameter type for 'file.filename', expected: string"
        );
        assert_eq!(
            check(raw(json!({"driver": "file"}))).unwrap_err(),
            "Parameter 'file.filename' is missing"
        );
        assert_eq!(
            check(raw(json!({"filename": "x"}))).unwrap_err(),
            "Parameter 'file.driver' is missing"
        );
        assert_eq!(
            check(raw(json!({"driver": "foo"}))).unwrap_err(),
            "Parameter 'driver' does not accept value 'foo'"
        );
        assert_eq!(
            check(raw(
                json!({"driver": "file", "filename": "/x", "detect-zeroes": "bad"})
            ))
            .unwrap_err(),
            "Parameter 'detect-zeroes' does not accept value 'bad'"
        );
    }

    #[test]
    fn valid_trees_become_ipc_options() {
        let o = check(
            json!({"driver": "qcow2", "node-name": "d0", "backing": null,
            "file": {"driver": "file", "filename": "/x.qcow2", "read-only": true}}),
        )
        .unwrap();
        match o {
            BlockdevOptions::Qcow2(q) => {
                assert_eq!(q.backing, Some(None));
                assert!(matches!(q.file, Some(BlockdevRef::Definition(_))));
            }
            other => panic!("wrong driver {other:?}"),
        }
        let o = check(json!({"driver": "raw", "node-name": "r", "file": "f0"})).unwrap();
        assert_eq!(block_state::file_child_name(&o), Some("f0"));
    }

    #[test]
    fn stats_carry_every_mandatory_member() {
        let s = BlockDeviceStats::from_node(&NodeStats {
            node_name: "n".into(),
            wr_highest_offset: 7,
            stats: ipc_proto::block::IoStats {
                rd_bytes: 5,
                ..Default::default()
            },
        });
        let SchemaType::Object { members, .. } = BlockDeviceStats::schema() else {
            panic!()
        };
        for m in members.iter().filter(|m| !m.optional) {
            assert!(s.0.contains_key(m.name), "{} missing", m.name);
        }
        assert_eq!(s.0["rd_bytes"], 5);
        assert_eq!(s.0["wr_highest_offset"], 7);
    }
}
