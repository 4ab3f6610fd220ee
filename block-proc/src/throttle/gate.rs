//! A queue's throttle gate: requests over the group's budget wait here,
//! in order per direction, and the queue thread's poll timeout brings it
//! back when the budget allows the first of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Member;

/// What a request costs the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Not metered (flush, discard, get-id, a malformed chain).
    Free,
    /// A read or a write of `bytes`.
    Io {
        /// A write.
        write: bool,
        /// Data bytes.
        bytes: u64,
    },
}

/// Held requests of one queue.
#[derive(Debug)]
pub struct Gate<J> {
    /// Reads (`[0]`) and writes (`[1]`) waiting, oldest first.
    held: [VecDeque<(J, u64)>; 2],
    /// When the first held request may be retried.
    deadline: Option<Instant>,
}

impl<J> Default for Gate<J> {
    fn default() -> Self {
        Gate {
            held: [VecDeque::new(), VecDeque::new()],
            deadline: None,
        }
    }
}

impl<J> Gate<J> {
    /// Whether requests are held.
    pub fn holding(&self) -> bool {
        self.held.iter().any(|h| !h.is_empty())
    }

    /// How long the queue thread may sleep before [`Gate::release`] is due
    /// (None: nothing held).
    pub fn timeout(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub fn due(&self) -> bool {
        self.deadline.is_some_and(|d| d <= Instant::now())
    }

    /// Keep in `batch` what may run now: held requests whose turn came,
    /// then the new ones the budget allows; the rest is held.
    pub fn admit(&mut self, member: &Member, batch: &mut Vec<J>, cost: impl FnMut(&J) -> Cost) {
        if !self.holding() && member.group().is_none() {
            return;
        }
        let incoming = std::mem::take(batch);
        self.release(member, batch);
        let Some(group) = member.group() else {
            batch.extend(incoming);
            return;
        };
        let mut cost = cost;
        for j in incoming {
            match cost(&j) {
                Cost::Free => batch.push(j),
                Cost::Io { write, bytes } => {
                    let q = &mut self.held[usize::from(write)];
                    if q.is_empty() {
                        match group.try_start(write, bytes) {
                            Ok(()) => batch.push(j),
                            Err(wait) => {
                                q.push_back((j, bytes));
                                self.wake_in(wait);
                            }
                        }
                    } else {
                        q.push_back((j, bytes));
                    }
                }
            }
        }
    }

    fn wake_in(&mut self, wait: Duration) {
        let at = Instant::now() + wait;
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    /// Move the held requests the budget now allows to `batch` (all of
    /// them when the export is no longer throttled).
    pub fn release(&mut self, member: &Member, batch: &mut Vec<J>) {
        self.deadline = None;
        let Some(group) = member.group() else {
            return self.release_all(batch);
        };
        for write in [false, true] {
            let q = &mut self.held[usize::from(write)];
            while let Some((_, bytes)) = q.front() {
                match group.try_start(write, *bytes) {
                    Ok(()) => {
                        if let Some((j, _)) = q.pop_front() {
                            batch.push(j);
                        }
                    }
                    Err(wait) => {
                        let at = Instant::now() + wait;
                        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
                        break;
                    }
                }
            }
        }
    }

    /// Move every held request to `batch` (the queue is stopping: as
    /// QEMU's drain, throttled requests run now).
    pub fn release_all(&mut self, batch: &mut Vec<J>) {
        self.deadline = None;
        for q in &mut self.held {
            batch.extend(q.drain(..).map(|(j, _)| j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{bucket, Registry};
    use super::*;
    use ipc_proto::block::ThrottleConfig;

    fn throttled(iops: u64) -> (Registry, Member) {
        let mut r = Registry::default();
        let m = Member::default();
        let mut cfg = ThrottleConfig::default();
        for b in &mut cfg.buckets {
            b.burst_length = 1;
        }
        cfg.buckets[bucket::OPS_WRITE].avg = iops;
        r.set(&m, "g", Some(cfg));
        (r, m)
    }

    #[test]
    fn over_budget_requests_are_held_in_order_and_released_later() {
        let (mut r, m) = throttled(10);
        let mut g: Gate<u32> = Gate::default();
        let mut batch: Vec<u32> = (0..5).collect();
        let write = |_: &u32| Cost::Io {
            write: true,
            bytes: 512,
        };
        g.admit(&m, &mut batch, write);
        // One op fills the 0.1 s bucket; the second still starts (the
        // bucket is not over yet), the rest waits.
        assert_eq!(batch, vec![0, 1]);
        assert!(g.holding());
        assert!(g.timeout().is_some_and(|t| t <= Duration::from_millis(100)));
        // Reads are not held behind writes.
        let mut batch = vec![9];
        g.admit(&m, &mut batch, |_| Cost::Io {
            write: false,
            bytes: 512,
        });
        assert_eq!(batch, vec![9]);
        std::thread::sleep(g.timeout().unwrap_or_default());
        let mut out = Vec::new();
        g.release(&m, &mut out);
        assert_eq!(out, vec![2]);
        // Throttling switched off: the rest goes at once, in order.
        r.set(&m, "g", None);
        g.release(&m, &mut out);
        assert_eq!(out, vec![2, 3, 4]);
        assert!(!g.holding());
    }
}
