//! Byte-range locks of one file: a data-modifying request holds its range
//! (widened to whole direct-I/O blocks) while it runs, so a
//! read-modify-write of a partial block never interleaves with another
//! write, discard or write-zeroes of the same block (which would put stale
//! bytes back). Requests on disjoint blocks run in parallel.
//!
//! Written here because no rust-vmm crate offers a blocking range lock;
//! the held ranges are few (one per request in flight), so a list under a
//! mutex and one condition variable is enough.

use std::sync::{Condvar, Mutex, MutexGuard};

/// The ranges held on one file.
#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Vec<(u64, u64)>>,
    released: Condvar,
}

/// A held range; released when dropped.
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    range: (u64, u64),
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl RangeLock {
    fn held(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        // A panic while holding the list cannot leave it inconsistent (each
        // change is one push or one swap_remove).
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until no held range overlaps `[start, end)`, then hold it.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let range = (start, end.max(start + 1));
        let mut held = self.held();
        while held.iter().any(|&h| overlaps(h, range)) {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.push(range);
        RangeGuard { lock: self, range }
    }

    /// Number of ranges held (tests).
    pub fn held_count(&self) -> usize {
        self.held().len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.held();
        if let Some(i) = held.iter().position(|&h| h == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.lock.released.notify_all();
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
}
