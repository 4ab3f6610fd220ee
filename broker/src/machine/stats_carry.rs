//! Block statistics that outlive block-proc: a restarted worker counts
//! from zero, so the broker keeps, per node, what earlier worker
//! generations had counted and adds it to what the current one reports.
//! `query-blockstats` therefore never goes backwards across restarts (the
//! I/O a killed worker did after the last query is lost with it; it is
//! never subtracted).

use std::collections::HashMap;

use ipc_proto::block::{IoStats, NodeStats};

/// The counters of one node.
#[derive(Debug, Clone, Default)]
struct Carried {
    /// The worker generation `last` came from.
    generation: u64,
    /// The highest counters seen from that generation.
    last: IoStats,
    /// The sum of the last counters of every earlier generation.
    base: IoStats,
    /// The highest `wr_highest_offset` ever reported.
    highest: u64,
}

/// Per-node statistics across worker generations.
#[derive(Debug, Default)]
pub struct StatsCarry {
    nodes: HashMap<String, Carried>,
}

/// Applies `f` to every counter of `a` and `b`.
fn zip(a: &IoStats, b: &IoStats, f: impl Fn(u64, u64) -> u64) -> IoStats {
    IoStats {
        rd_bytes: f(a.rd_bytes, b.rd_bytes),
        wr_bytes: f(a.wr_bytes, b.wr_bytes),
        unmap_bytes: f(a.unmap_bytes, b.unmap_bytes),
        rd_operations: f(a.rd_operations, b.rd_operations),
        wr_operations: f(a.wr_operations, b.wr_operations),
        flush_operations: f(a.flush_operations, b.flush_operations),
        unmap_operations: f(a.unmap_operations, b.unmap_operations),
        rd_total_time_ns: f(a.rd_total_time_ns, b.rd_total_time_ns),
        wr_total_time_ns: f(a.wr_total_time_ns, b.wr_total_time_ns),
        flush_total_time_ns: f(a.flush_total_time_ns, b.flush_total_time_ns),
        unmap_total_time_ns: f(a.unmap_total_time_ns, b.unmap_total_time_ns),
        failed_rd_operations: f(a.failed_rd_operations, b.failed_rd_operations),
        failed_wr_operations: f(a.failed_wr_operations, b.failed_wr_operations),
        failed_flush_operations: f(a.failed_flush_operations, b.failed_flush_operations),
        failed_unmap_operations: f(a.failed_unmap_operations, b.failed_unmap_operations),
        invalid_rd_operations: f(a.invalid_rd_operations, b.invalid_rd_operations),
        invalid_wr_operations: f(a.invalid_wr_operations, b.invalid_wr_operations),
    }
}

impl StatsCarry {
    /// Takes the statistics worker `generation` reported and returns them
    /// with the earlier generations' counts added. Nodes missing from a
    /// current reply were deleted: their history is dropped (a node created
    /// again under the same name starts from zero, as in QEMU).
    pub fn apply(&mut self, generation: u64, fresh: Vec<NodeStats>) -> Vec<NodeStats> {
        let newest = self.nodes.values().map(|c| c.generation).max().unwrap_or(0);
        if generation >= newest {
            self.nodes
                .retain(|name, _| fresh.iter().any(|n| &n.node_name == name));
        }
        fresh
            .into_iter()
            .map(|n| {
                let c = self.nodes.entry(n.node_name.clone()).or_default();
                if generation > c.generation {
                    c.base = zip(&c.base, &c.last, u64::saturating_add);
                    c.generation = generation;
                    c.last = IoStats::default();
                }
                // A reply of an older generation, overtaken by a newer one,
                // adds nothing: its counts were folded into `base`.
                if generation == c.generation {
                    c.last = zip(&c.last, &n.stats, u64::max);
                }
                c.highest = c.highest.max(n.wr_highest_offset);
                NodeStats {
                    node_name: n.node_name,
                    wr_highest_offset: c.highest,
                    stats: zip(&c.base, &c.last, u64::saturating_add),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, wr: u64, off: u64) -> NodeStats {
        NodeStats {
            node_name: name.into(),
            wr_highest_offset: off,
            stats: IoStats {
                wr_operations: wr,
                ..Default::default()
            },
        }
    }

    fn wr(out: &[NodeStats]) -> (u64, u64) {
        (out[0].stats.wr_operations, out[0].wr_highest_offset)
    }

    #[test]
    fn counts_carry_across_generations_and_never_decrease() {
        let mut c = StatsCarry::default();
        assert_eq!(wr(&c.apply(1, vec![node("d0", 100, 4096)])), (100, 4096));
        assert_eq!(wr(&c.apply(1, vec![node("d0", 150, 8192)])), (150, 8192));
        // Restarted: the new worker counts from zero.
        assert_eq!(wr(&c.apply(2, vec![node("d0", 3, 512)])), (153, 8192));
        assert_eq!(wr(&c.apply(2, vec![node("d0", 10, 512)])), (160, 8192));
        // Twice more without a query in between on generation 3.
        assert_eq!(wr(&c.apply(4, vec![node("d0", 1, 512)])), (161, 8192));
    }

    #[test]
    fn late_reply_of_an_old_generation_does_not_go_backwards() {
        let mut c = StatsCarry::default();
        c.apply(1, vec![node("d0", 100, 0)]);
        assert_eq!(wr(&c.apply(2, vec![node("d0", 5, 0)])), (105, 0));
        assert_eq!(wr(&c.apply(1, vec![node("d0", 120, 0)])), (105, 0));
        // A reply of the same generation that overtook a fresher one.
        assert_eq!(wr(&c.apply(2, vec![node("d0", 9, 0)])), (109, 0));
        assert_eq!(wr(&c.apply(2, vec![node("d0", 7, 0)])), (109, 0));
    }

    #[test]
    fn deleted_node_forgets_its_history() {
        let mut c = StatsCarry::default();
        c.apply(1, vec![node("d0", 100, 0), node("d1", 7, 0)]);
        c.apply(1, vec![node("d1", 8, 0)]);
        assert_eq!(wr(&c.apply(2, vec![node("d0", 1, 0)])), (1, 0));
    }
}
