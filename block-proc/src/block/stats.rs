//! Per-node I/O accounting for `query-blockstats`, lock-free so every queue
//! thread can count without contention.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ipc_proto::block::IoStats;

/// Counters of one node.
#[derive(Default)]
pub struct Stats {
    rd_bytes: AtomicU64,
    wr_bytes: AtomicU64,
    unmap_bytes: AtomicU64,
    rd_ops: AtomicU64,
    wr_ops: AtomicU64,
    flush_ops: AtomicU64,
    unmap_ops: AtomicU64,
    rd_ns: AtomicU64,
    wr_ns: AtomicU64,
    flush_ns: AtomicU64,
    unmap_ns: AtomicU64,
    rd_failed: AtomicU64,
    wr_failed: AtomicU64,
    flush_failed: AtomicU64,
    unmap_failed: AtomicU64,
    rd_invalid: AtomicU64,
    wr_invalid: AtomicU64,
    wr_highest: AtomicU64,
}

fn ns_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

impl Stats {
    /// Count a read.
    pub fn account_read(&self, len: u64, t: Instant, ok: bool) {
        if ok {
            add(&self.rd_ops, 1);
            add(&self.rd_bytes, len);
        } else {
            add(&self.rd_failed, 1);
        }
        add(&self.rd_ns, ns_since(t));
    }

    /// Count a write.
    pub fn account_write(&self, offset: u64, len: u64, t: Instant, ok: bool) {
        if ok {
            add(&self.wr_ops, 1);
            add(&self.wr_bytes, len);
            self.wr_highest
                .fetch_max(offset.saturating_add(len), Ordering::Relaxed);
        } else {
            add(&self.wr_failed, 1);
        }
        add(&self.wr_ns, ns_since(t));
    }

    /// Count a flush.
    pub fn account_flush(&self, t: Instant, ok: bool) {
        add(
            if ok {
                &self.flush_ops
            } else {
                &self.flush_failed
            },
            1,
        );
        add(&self.flush_ns, ns_since(t));
    }

    /// Count a discard.
    pub fn account_discard(&self, len: u64, t: Instant, ok: bool) {
        if ok {
            add(&self.unmap_ops, 1);
            add(&self.unmap_bytes, len);
        } else {
            add(&self.unmap_failed, 1);
        }
        add(&self.unmap_ns, ns_since(t));
    }

    /// Count a request rejected before it reached the driver.
    pub fn account_invalid(&self, write: bool) {
        add(
            if write {
                &self.wr_invalid
            } else {
                &self.rd_invalid
            },
            1,
        );
    }

    /// Highest written offset + 1.
    pub fn wr_highest_offset(&self) -> u64 {
        self.wr_highest.load(Ordering::Relaxed)
    }

    /// Snapshot of the counters.
    pub fn snapshot(&self) -> IoStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IoStats {
            rd_bytes: l(&self.rd_bytes),
            wr_bytes: l(&self.wr_bytes),
            unmap_bytes: l(&self.unmap_bytes),
            rd_operations: l(&self.rd_ops),
            wr_operations: l(&self.wr_ops),
            flush_operations: l(&self.flush_ops),
            unmap_operations: l(&self.unmap_ops),
            rd_total_time_ns: l(&self.rd_ns),
            wr_total_time_ns: l(&self.wr_ns),
            flush_total_time_ns: l(&self.flush_ns),
            unmap_total_time_ns: l(&self.unmap_ns),
            failed_rd_operations: l(&self.rd_failed),
            failed_wr_operations: l(&self.wr_failed),
            failed_flush_operations: l(&self.flush_failed),
            failed_unmap_operations: l(&self.unmap_failed),
            invalid_rd_operations: l(&self.rd_invalid),
            invalid_wr_operations: l(&self.wr_invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_reads_writes_and_highest_offset() {
        let s = Stats::default();
        s.account_read(512, Instant::now(), true);
        s.account_write(4096, 512, Instant::now(), true);
        s.account_write(0, 512, Instant::now(), false);
        let snap = s.snapshot();
        assert_eq!(snap.rd_operations, 1);
        assert_eq!(snap.rd_bytes, 512);
        assert_eq!(snap.wr_operations, 1);
        assert_eq!(snap.failed_wr_operations, 1);
        assert_eq!(s.wr_highest_offset(), 4608);
    }
}
