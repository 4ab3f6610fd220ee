//! The leaky buckets of one throttle group, with QEMU's accounting
//! (`util/throttle.c`, written here from its semantics): each bucket
//! leaks at its `avg` rate; a request may start when no bucket it counts
//! in is over its size (a tenth of a second at `avg`, or `max ×
//! burst_length` when a burst rate is set, itself metered at `max` by a
//! second bucket of a tenth of a second at `max`), and then adds its
//! whole cost. So requests start at the configured rate on average, a
//! burst runs at most at `max` for about `burst_length` seconds, and a
//! request never waits for more budget than one bucket holds.

use ipc_proto::block::ThrottleConfig;

const NS_PER_SEC: f64 = 1e9;

/// Bucket indexes, QEMU's order.
pub const BPS_TOTAL: usize = 0;
/// Read bytes.
pub const BPS_READ: usize = 1;
/// Written bytes.
pub const BPS_WRITE: usize = 2;
/// All operations.
pub const OPS_TOTAL: usize = 3;
/// Read operations.
pub const OPS_READ: usize = 4;
/// Write operations.
pub const OPS_WRITE: usize = 5;

/// The buckets a read (`[0]`) or a write (`[1]`) is measured against.
const CHECKED: [[usize; 4]; 2] = [
    [BPS_TOTAL, OPS_TOTAL, BPS_READ, OPS_READ],
    [BPS_TOTAL, OPS_TOTAL, BPS_WRITE, OPS_WRITE],
];

/// Levels of the six buckets under one configuration.
#[derive(Debug, Clone)]
pub struct Buckets {
    cfg: ThrottleConfig,
    level: [f64; 6],
    burst_level: [f64; 6],
    last_leak_ns: u64,
}

impl Buckets {
    /// Empty buckets for `cfg`, as of `now_ns`.
    pub fn new(cfg: ThrottleConfig, now_ns: u64) -> Self {
        Buckets {
            cfg,
            level: [0.0; 6],
            burst_level: [0.0; 6],
            last_leak_ns: now_ns,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    /// Let every bucket leak for the time since the last leak.
    fn leak(&mut self, now_ns: u64) {
        let delta = now_ns.saturating_sub(self.last_leak_ns) as f64;
        self.last_leak_ns = self.last_leak_ns.max(now_ns);
        for (i, b) in self.cfg.buckets.iter().enumerate() {
            self.level[i] = (self.level[i] - b.avg as f64 * delta / NS_PER_SEC).max(0.0);
            if b.burst_length > 1 {
                self.burst_level[i] =
                    (self.burst_level[i] - b.max as f64 * delta / NS_PER_SEC).max(0.0);
            }
        }
    }

    /// Nanoseconds bucket `i` needs before another request may start.
    fn bucket_wait(&self, i: usize) -> u64 {
        let b = &self.cfg.buckets[i];
        if b.avg == 0 {
            return 0;
        }
        let (size, burst_size) = if b.max == 0 {
            (b.avg as f64 / 10.0, 0.0)
        } else {
            (b.max as f64 * b.burst_length as f64, b.max as f64 / 10.0)
        };
        let extra = self.level[i] - size;
        if extra > 0.0 {
            return (extra * NS_PER_SEC / b.avg as f64) as u64;
        }
        if b.burst_length > 1 && b.max > 0 {
            let extra = self.burst_level[i] - burst_size;
            if extra > 0.0 {
                return (extra * NS_PER_SEC / b.max as f64) as u64;
            }
        }
        0
    }

    /// Nanoseconds until a read (or write) may start, as of `now_ns`
    /// (0: now).
    pub fn wait_ns(&mut self, write: bool, now_ns: u64) -> u64 {
        self.leak(now_ns);
        CHECKED[usize::from(write)]
            .iter()
            .map(|&i| self.bucket_wait(i))
            .max()
            .unwrap_or(0)
    }

    /// Count a request of `bytes` that starts now.
    pub fn account(&mut self, write: bool, bytes: u64) {
        let op = self.cfg.op_size;
        let units = if op > 0 && bytes > op {
            bytes as f64 / op as f64
        } else {
            1.0
        };
        let (bps, ops) = if write {
            (BPS_WRITE, OPS_WRITE)
        } else {
            (BPS_READ, OPS_READ)
        };
        for (i, add) in [
            (BPS_TOTAL, bytes as f64),
            (bps, bytes as f64),
            (OPS_TOTAL, units),
            (ops, units),
        ] {
            if self.cfg.buckets[i].avg == 0 {
                continue;
            }
            self.level[i] += add;
            if self.cfg.buckets[i].burst_length > 1 {
                self.burst_level[i] += add;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::block::ThrottleBucket;

    fn cfg(i: usize, avg: u64, max: u64, len: u64) -> ThrottleConfig {
        let mut c = ThrottleConfig::default();
        for b in &mut c.buckets {
            b.burst_length = 1;
        }
        c.buckets[i] = ThrottleBucket {
            avg,
            max,
            burst_length: len,
        };
        c
    }

    /// Requests of `bytes` started as soon as allowed, for `secs` seconds
    /// of simulated time (1 µs steps between tries).
    fn run(b: &mut Buckets, write: bool, bytes: u64, secs: u64) -> Vec<u64> {
        let mut now = 0u64;
        let mut starts = Vec::new();
        while now < secs * 1_000_000_000 {
            let w = b.wait_ns(write, now);
            if w == 0 {
                b.account(write, bytes);
                starts.push(now);
            } else {
                now += w.max(1_000);
            }
        }
        starts
    }

    #[test]
    fn iops_limit_admits_the_rate_plus_one_tenth_second_of_slack() {
        let mut b = Buckets::new(cfg(OPS_TOTAL, 100, 0, 1), 0);
        let n = run(&mut b, false, 4096, 5).len();
        // 5 s at 100/s, plus the bucket (10) and the request over it.
        assert!((500..=512).contains(&n), "{n}");
    }

    #[test]
    fn bps_limit_counts_bytes_and_only_its_direction() {
        let mut b = Buckets::new(cfg(BPS_WRITE, 1 << 20, 0, 1), 0);
        let n = run(&mut b, true, 64 << 10, 4).len() as u64;
        assert!((64..=64 + 3).contains(&n), "{n}");
        // Reads are not limited by a write bucket.
        assert_eq!(b.wait_ns(false, 4_000_000_000), 0);
    }

    #[test]
    fn a_burst_runs_at_max_for_its_length_then_at_avg() {
        // 10/s sustained, bursts of 100/s for 2 s.
        let mut b = Buckets::new(cfg(OPS_TOTAL, 10, 100, 2), 0);
        let starts = run(&mut b, false, 512, 10);
        let in_first = starts.iter().filter(|&&t| t < 1_000_000_000).count();
        // The burst is metered at max: about 100 in the first second.
        assert!((95..=112).contains(&in_first), "{in_first}");
        // Over 10 s: the bucket of max × length (200) plus 10/s.
        let total = starts.len();
        assert!((290..=312).contains(&total), "{total}");
        let late = starts.iter().filter(|&&t| t >= 8_000_000_000).count();
        assert!((19..=21).contains(&late), "{late}");
    }

    #[test]
    fn iops_size_makes_large_requests_count_as_several() {
        let mut c = cfg(OPS_TOTAL, 100, 0, 1);
        c.op_size = 4096;
        let mut b = Buckets::new(c, 0);
        // 16 KiB requests count 4 operations each: 25 per second.
        let n = run(&mut b, true, 16384, 4).len();
        assert!((100..=104).contains(&n), "{n}");
    }
}
