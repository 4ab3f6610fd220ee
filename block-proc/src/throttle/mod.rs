//! I/O throttling (`block_set_io_throttle`, `-drive throttling.*`): QEMU's
//! throttle groups. A [`Group`] holds one set of leaky buckets
//! ([`bucket`]); every export that is a [`Member`] of the group draws
//! from the same budget, from any of its queues. The queue threads meter
//! their requests through a [`gate::Gate`]: a request over the budget is
//! held (with every later one of the same direction, so order is kept)
//! and released when the queue's poll timeout says the budget is back; a
//! queue thread never sleeps in the limiter, so other devices and the
//! queue's completions go on.

pub mod bucket;
pub mod gate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ipc_proto::block::ThrottleConfig;

use bucket::Buckets;

/// Monotonic nanoseconds since the first call (the buckets' clock).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One throttle group: its name and shared buckets.
#[derive(Debug)]
pub struct Group {
    name: String,
    buckets: Mutex<Buckets>,
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Start a read or write of `bytes` if the budget allows (counting
    /// it), else say how long to wait before asking again.
    pub fn try_start(&self, write: bool, bytes: u64) -> Result<(), Duration> {
        let mut b = self.lock();
        match b.wait_ns(write, now_ns()) {
            0 => {
                b.account(write, bytes);
                Ok(())
            }
            w => Err(Duration::from_nanos(w)),
        }
    }

    /// Replace the limits (levels start empty, as in QEMU).
    fn configure(&self, cfg: ThrottleConfig) {
        *self.lock() = Buckets::new(cfg, now_ns());
    }

    /// The current limits.
    pub fn config(&self) -> ThrottleConfig {
        *self.lock().config()
    }
}

/// An export's membership in a throttle group (none: not throttled).
#[derive(Debug, Default)]
pub struct Member {
    group: Mutex<Option<Arc<Group>>>,
    enabled: AtomicBool,
}

impl Member {
    /// The group, if the export is throttled. One atomic load when not.
    pub fn group(&self) -> Option<Arc<Group>> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        self.group.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, g: Option<Arc<Group>>) {
        let mut slot = self.group.lock().unwrap_or_else(|p| p.into_inner());
        self.enabled.store(g.is_some(), Ordering::Release);
        *slot = g;
    }
}

/// The throttle groups of one block-proc, by name. A group lives as long
/// as a member holds it.
#[derive(Debug, Default)]
pub struct Registry {
    groups: HashMap<String, Weak<Group>>,
}

impl Registry {
    /// Make `member` a member of `group` with the group's limits set to
    /// `cfg`, or (`cfg` None) take it out of its group.
    pub fn set(&mut self, member: &Member, group: &str, cfg: Option<ThrottleConfig>) {
        self.groups.retain(|_, g| g.strong_count() > 0);
        let Some(cfg) = cfg else {
            member.set(None);
            return;
        };
        let g = match self.groups.get(group).and_then(Weak::upgrade) {
            Some(g) => g,
            None => {
                let g = Arc::new(Group {
                    name: group.to_string(),
                    buckets: Mutex::new(Buckets::new(cfg, now_ns())),
                });
                self.groups.insert(group.to_string(), Arc::downgrade(&g));
                g
            }
        };
        g.configure(cfg);
        member.set(Some(g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_one_group_share_its_buckets_and_leave_it() {
        let mut r = Registry::default();
        let (a, b) = (Member::default(), Member::default());
        let mut cfg = ThrottleConfig::default();
        cfg.buckets[bucket::OPS_TOTAL].avg = 10;
        for bk in &mut cfg.buckets {
            bk.burst_length = 1;
        }
        r.set(&a, "g", Some(cfg));
        r.set(&b, "g", Some(cfg));
        let (ga, gb) = (a.group().unwrap(), b.group().unwrap());
        assert!(Arc::ptr_eq(&ga, &gb));
        // The bucket holds one op (a tenth of a second); the next waits,
        // whichever member asks.
        assert!(ga.try_start(false, 512).is_ok());
        assert!(ga.try_start(false, 512).is_ok());
        assert!(gb.try_start(true, 512).is_err());
        r.set(&a, "g", None);
        assert!(a.group().is_none());
        assert_eq!(b.group().unwrap().name(), "g");
    }
}
