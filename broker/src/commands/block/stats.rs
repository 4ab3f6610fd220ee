//! `query-blockstats`.

use std::time::Instant;

use ipc_proto::block::{BlockReply, BlockRequest, NodeStats};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::*;
use crate::machine::{lock, unexpected_reply};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Member, QapiType, SchemaType};

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
    /// The guest device's id (device entries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
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
        qdev: None,
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
        let m = ctx.machine;
        let query_nodes = args.query_nodes.unwrap_or(false);
        // (backend name, device, node): the disks and the SCSI drives
        // (an empty drive has no node), in query-block's order.
        let mut devs: Vec<(String, String, Option<String>)> =
            crate::machine::devices::block_devices(m)
                .into_iter()
                .map(|(qdev, node)| (super::throttle::backend_name(m, &node), qdev, Some(node)))
                .collect();
        {
            let media = lock(&m.media);
            devs.extend(media.luns().iter().map(|l| {
                let c = &l.config;
                (
                    l.backend_name.clone(),
                    c.device_id.clone(),
                    c.node_name.clone(),
                )
            }));
            devs.sort_by_key(|(device, qdev, _)| (device.is_empty(), media.block_position(qdev)));
        }
        if !query_nodes && devs.is_empty() {
            return Ok(Vec::new());
        }
        // Counted across block-proc restarts: never backwards.
        // One deadline for both questions.
        let deadline = Instant::now() + m.worker_timeout();
        let mut stats = match m.block_query_until(BlockRequest::QueryStats, deadline)? {
            (generation, BlockReply::Stats(s)) => lock(&m.stats).apply(generation, s),
            (
                _,
                other @ (BlockReply::Done
                | BlockReply::NeedFiles { .. }
                | BlockReply::Nodes(_)
                | BlockReply::Trace(_)
                | BlockReply::Bitmap(_)
                | BlockReply::Snapshot(_)),
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
        // A node's statistics with its `file` child's as `parent`.
        let with_parent = |s: &NodeStats| {
            let mut out = node_stats(s, drv(&s.node_name));
            let child = nodes
                .iter()
                .find(|n| n.node_name == s.node_name)
                .and_then(|n| n.file_child.as_deref());
            out.parent = child
                .and_then(|c| stats.iter().find(|x| x.node_name == c))
                .map(|c| Box::new(node_stats(c, drv(&c.node_name))));
            out
        };
        if query_nodes {
            return Ok(stats.iter().map(with_parent).collect());
        }
        // One entry per device, as QEMU's per BlockBackend: the guest's
        // I/O, counted at the exported node, and that node's `file` child
        // as `parent`. QEMU's backends account invalid and failed requests.
        Ok(devs
            .iter()
            .filter_map(|(device, qdev, node)| {
                let mut out = match node {
                    Some(node) => with_parent(stats.iter().find(|s| &s.node_name == node)?),
                    // A drive without a medium: its backend's zero counters.
                    None => BlockStats {
                        device: None,
                        qdev: None,
                        node_name: None,
                        stats: BlockDeviceStats::from_node(&NodeStats {
                            node_name: String::new(),
                            wr_highest_offset: 0,
                            stats: Default::default(),
                        }),
                        parent: None,
                        driver_specific: None,
                    },
                };
                out.device = Some(device.clone());
                out.qdev = Some(qdev.clone());
                out.stats
                    .0
                    .insert("account_invalid".into(), Value::Bool(true));
                out.stats
                    .0
                    .insert("account_failed".into(), Value::Bool(true));
                Some(out)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
