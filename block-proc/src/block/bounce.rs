//! The bounce-buffer pool of one `O_DIRECT` file: a fixed memory budget,
//! [`BOUNCE_BUDGET`] bytes, cut into [`BOUNCE_CHUNK`]-sized aligned
//! buffers. An unaligned request borrows one chunk at a time and moves its
//! data chunk by chunk, so however many requests a guest puts in flight
//! on however many queues, the bounce memory of a file node never exceeds
//! the budget: requests beyond it wait for a chunk. Buffers are allocated
//! on first use and kept (freeing them to the allocator would leave the
//! memory in per-thread malloc arenas, outside any budget).

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::iobuf::AlignedBuf;

/// Size of one bounce buffer (= the largest segment, virtio-blk `size_max`).
pub const BOUNCE_CHUNK: usize = 1 << 20;
/// Bounce memory of one file node at most.
pub const BOUNCE_BUDGET: usize = 16 * BOUNCE_CHUNK;

struct PoolState {
    free: Vec<AlignedBuf>,
    /// Buffers allocated (free or lent).
    allocated: usize,
    /// Buffers lent right now.
    lent: usize,
    /// Most buffers ever lent at once.
    peak: usize,
}

/// A budgeted pool of aligned bounce buffers.
pub struct BouncePool {
    state: Mutex<PoolState>,
    returned: Condvar,
    max_buffers: usize,
}

/// A buffer lent by the pool; goes back when dropped.
pub struct BounceBuf<'a> {
    pool: &'a BouncePool,
    buf: Option<AlignedBuf>,
}

impl Default for BouncePool {
    fn default() -> Self {
        Self::new(BOUNCE_BUDGET)
    }
}

impl BouncePool {
    /// A pool of at most `budget` bytes (at least one chunk).
    pub fn new(budget: usize) -> Self {
        BouncePool {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                allocated: 0,
                lent: 0,
                peak: 0,
            }),
            returned: Condvar::new(),
            max_buffers: (budget / BOUNCE_CHUNK).max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // Every update is a few plain field writes: a panic cannot leave
        // the counters half-changed in a way that matters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Borrow one [`BOUNCE_CHUNK`]-byte buffer, waiting while the whole
    /// budget is lent. Callers hold at most one at a time (so waiting can
    /// never deadlock).
    pub fn take(&self) -> io::Result<BounceBuf<'_>> {
        let mut st = self.state();
        loop {
            if let Some(b) = st.free.pop() {
                return Ok(self.lend(st, b));
            }
            if st.allocated < self.max_buffers {
                st.allocated += 1;
                drop(st);
                match AlignedBuf::new(BOUNCE_CHUNK) {
                    Ok(b) => return Ok(self.lend(self.state(), b)),
                    Err(e) => {
                        self.state().allocated -= 1;
                        self.returned.notify_one();
                        return Err(e);
                    }
                }
            }
            st = self.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lend<'a>(&'a self, mut st: MutexGuard<'_, PoolState>, b: AlignedBuf) -> BounceBuf<'a> {
        st.lent += 1;
        st.peak = st.peak.max(st.lent);
        BounceBuf {
            pool: self,
            buf: Some(b),
        }
    }

    /// Most bounce bytes ever lent at once.
    pub fn peak_bytes(&self) -> usize {
        self.state().peak * BOUNCE_CHUNK
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.max_buffers * BOUNCE_CHUNK
    }
}

impl BounceBuf<'_> {
    /// The whole buffer ([`BOUNCE_CHUNK`] bytes, aligned).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl Drop for BounceBuf<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut st = self.pool.state();
            st.lent -= 1;
            st.free.push(b);
            drop(st);
            self.pool.returned.notify_one();
        }
    }
}

/// The same budget for a driver whose library allocates its own bounce
/// buffers (imago, for `qcow2` over an `O_DIRECT` file): the driver cuts
/// an unaligned request into pieces of at most [`BOUNCE_CHUNK`] bytes and
/// holds one permit while the library moves each piece, so at most
/// `budget / BOUNCE_CHUNK` pieces are bounced at once.
pub struct BouncePermits {
    free: Mutex<usize>,
    returned: Condvar,
}

/// One held [`BouncePermits`] permit; returned when dropped.
pub struct BouncePermit<'a>(&'a BouncePermits);

impl Default for BouncePermits {
    fn default() -> Self {
        BouncePermits {
            free: Mutex::new((BOUNCE_BUDGET / BOUNCE_CHUNK).max(1)),
            returned: Condvar::new(),
        }
    }
}

impl BouncePermits {
    fn free(&self) -> MutexGuard<'_, usize> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a permit. Callers hold at most one at a time.
    pub fn acquire(&self) -> BouncePermit<'_> {
        let mut free = self.free();
        while *free == 0 {
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        BouncePermit(self)
    }
}

impl Drop for BouncePermit<'_> {
    fn drop(&mut self) {
        *self.0.free() += 1;
        self.0.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pool_never_lends_more_than_its_budget() {
        let pool = Arc::new(BouncePool::new(2 * BOUNCE_CHUNK));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let mut b = p.take().unwrap();
                        b.as_mut_slice()[0] = 1;
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(pool.peak_bytes() <= 2 * BOUNCE_CHUNK);
        assert_eq!(pool.state().allocated, 2);
        assert_eq!(pool.state().lent, 0);
    }
}
