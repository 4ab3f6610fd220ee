//! Byte-range locks of one file: a data-modifying request holds its range
//! (widened to whole direct-I/O blocks) while it runs, so a
//! read-modify-write of a partial block never interleaves with another
//! write, discard or write-zeroes of the same block (which would put stale
//! bytes back). Requests on disjoint blocks run in parallel.
//!
//! Written here because no rust-vmm crate offers a blocking range lock;
//! the held ranges are few (one per request in flight), so a list under a
//! mutex and one condition variable is enough.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The ranges held on one file.
#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Held>,
    released: Condvar,
}

/// The held ranges and how many lockers wait for one of them.
#[derive(Default)]
struct Held {
    ranges: Vec<(u64, u64)>,
    /// Waiting lockers: a release wakes them only when there are some
    /// (a condition variable's notify is a syscall even with no waiter,
    /// and every write, discard and write-zeroes releases a range).
    waiters: usize,
}

/// A held range; released when dropped.
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    range: (u64, u64),
}

/// A held range that owns its lock (for a request that outlives the
/// caller, e.g. one on an io_uring); released when dropped.
pub struct OwnedRangeGuard {
    lock: Arc<RangeLock>,
    range: (u64, u64),
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl RangeLock {
    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic while holding the list cannot leave it inconsistent (each
        // change is one push or one swap_remove).
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until no held range overlaps `[start, end)`, then hold it.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let range = (start, end.max(start + 1));
        let mut held = self.held();
        while held.ranges.iter().any(|&h| overlaps(h, range)) {
            held.waiters += 1;
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
            held.waiters -= 1;
        }
        held.ranges.push(range);
        RangeGuard { lock: self, range }
    }

    /// Hold `[start, end)` if no held range overlaps it now; never waits.
    pub fn try_lock_owned(self: &Arc<Self>, start: u64, end: u64) -> Option<OwnedRangeGuard> {
        let range = (start, end.max(start + 1));
        let mut held = self.held();
        if held.ranges.iter().any(|&h| overlaps(h, range)) {
            return None;
        }
        held.ranges.push(range);
        Some(OwnedRangeGuard {
            lock: self.clone(),
            range,
        })
    }

    fn release(&self, range: (u64, u64)) {
        let mut held = self.held();
        if let Some(i) = held.ranges.iter().position(|&h| h == range) {
            held.ranges.swap_remove(i);
        }
        let wake = held.waiters > 0;
        drop(held);
        if wake {
            self.released.notify_all();
        }
    }

    /// Number of ranges held (tests).
    pub fn held_count(&self) -> usize {
        self.held().ranges.len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.lock.release(self.range);
    }
}

impl Drop for OwnedRangeGuard {
    fn drop(&mut self) {
        self.lock.release(self.range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn overlapping_range_waits_and_disjoint_range_does_not() {
        let l = Arc::new(RangeLock::default());
        let g = l.lock(0, 4096);
        let _other = l.lock(4096, 8192);
        let got = Arc::new(AtomicBool::new(false));
        let (l2, got2) = (l.clone(), got.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.lock(4000, 4100);
            got2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!got.load(Ordering::SeqCst), "overlapping lock was granted");
        drop(_other);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!got.load(Ordering::SeqCst), "granted while [0,4096) held");
        drop(g);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
        assert_eq!(l.held_count(), 0);
    }

    #[test]
    fn owned_range_is_refused_while_overlapping_and_held_until_dropped() {
        let l = Arc::new(RangeLock::default());
        let g = l.lock(0, 4096);
        assert!(l.try_lock_owned(4000, 8192).is_none());
        let owned = l.try_lock_owned(4096, 8192).expect("disjoint range");
        drop(g);
        assert!(l.try_lock_owned(8000, 8100).is_none());
        let got = Arc::new(AtomicBool::new(false));
        let (l2, got2) = (l.clone(), got.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.lock(8000, 8100);
            got2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !got.load(Ordering::SeqCst),
            "granted while the owned range is held"
        );
        drop(owned);
        t.join().unwrap();
        assert_eq!(l.held_count(), 0);
    }
}
