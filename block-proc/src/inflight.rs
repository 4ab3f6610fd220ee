//! vhost-user inflight I/O tracking, split-virtqueue layout (QEMU
//! `docs/interop/vhost-user.rst`, "Inflight I/O tracking").
//!
//! The region is shared with the frontend, which keeps it across backend
//! crashes. Per queue (each [`queue_region_size`] bytes, 64-byte aligned):
//!
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! struct { u8 inflight; u8 padding[5]; u16 next; u64 counter; } desc[desc_num];
//! ```
//!
//! Protocol, per request: when a head is taken from the avail ring,
//! `desc[head] = {inflight: 1, counter: ++n}`; before its used element is
//! published, `last_batch_head = head`; after the used index is published,
//! `desc[head].inflight = 0` then `used_idx = new used index`. After a
//! reconnect the region tells which heads were taken but never completed;
//! they are resubmitted in `counter` order, and the avail position is
//! rebuilt as `used->idx + number inflight`.

use std::fs::File;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory};

/// Size of the per-queue header.
pub const QUEUE_HEADER: usize = 16;
/// Size of one descriptor state.
pub const DESC_STATE: usize = 16;
/// Version written into a fresh region.
pub const INFLIGHT_VERSION: u16 = 1;

/// Errors of inflight region handling.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The region could not be created or mapped.
    #[error("inflight region mapping failed")]
    Map(#[source] std::io::Error),
    /// The frontend asked for an impossible geometry, or a region larger
    /// than its file.
    #[error(
        "invalid inflight geometry: {num_queues} queues of size {queue_size}, {mmap_size} bytes"
    )]
    Geometry {
        /// Queues.
        num_queues: u16,
        /// Queue size.
        queue_size: u16,
        /// Region size.
        mmap_size: u64,
    },
}

/// Result of inflight operations.
pub type Result<T> = std::result::Result<T, InflightError>;

/// Bytes of one queue's region.
pub fn queue_region_size(queue_size: u16) -> usize {
    (QUEUE_HEADER + DESC_STATE * usize::from(queue_size)).div_ceil(64) * 64
}

/// A mapped inflight region.
pub struct InflightRegion {
    map: Arc<MmapRegion<()>>,
    num_queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// Create a fresh zeroed region in a memfd (GET_INFLIGHT_FD).
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(Self, File, u64)> {
        let geom = || InflightError::Geometry {
            num_queues,
            queue_size,
            mmap_size: 0,
        };
        if num_queues == 0 || queue_size == 0 || !queue_size.is_power_of_two() {
            return Err(geom());
        }
        let size = queue_region_size(queue_size) * usize::from(num_queues);
        let fd = nix::sys::memfd::memfd_create(
            c"bulkhead-inflight",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| InflightError::Map(e.into()))?;
        let file = File::from(fd);
        file.set_len(size as u64).map_err(InflightError::Map)?;
        let region = Self::map(&file, 0, size as u64, num_queues, queue_size)?;
        for q in 0..num_queues {
            region.store_u16(q, 10, queue_size);
        }
        Ok((region, file, size as u64))
    }

    /// Map a region the frontend sends back (SET_INFLIGHT_FD).
    pub fn map(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self> {
        let need = queue_region_size(queue_size) as u64 * u64::from(num_queues);
        if num_queues == 0
            || queue_size == 0
            || size < need
            || !crate::vhost::memory::file_covers(file, offset, size)
        {
            return Err(InflightError::Geometry {
                num_queues,
                queue_size,
                mmap_size: size,
            });
        }
        let dup = file.try_clone().map_err(InflightError::Map)?;
        let len = usize::try_from(size).map_err(|_| InflightError::Geometry {
            num_queues,
            queue_size,
            mmap_size: size,
        })?;
        let map = MmapRegion::from_file(FileOffset::new(dup, offset), len)
            .map_err(|e| InflightError::Map(std::io::Error::other(e.to_string())))?;
        Ok(InflightRegion {
            map: Arc::new(map),
            num_queues,
            queue_size,
        })
    }

    /// Number of queues described.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn base(&self, q: u16) -> usize {
        queue_region_size(self.queue_size) * usize::from(q)
    }

    fn store_u16(&self, q: u16, off: usize, v: u16) {
        let _ = self
            .map
            .as_volatile_slice()
            .store(v, self.base(q) + off, Ordering::Release);
    }

    /// The tracker of queue `q` (None if out of range).
    pub fn queue(&self, q: u16) -> Option<QueueInflight> {
        (q < self.num_queues).then(|| QueueInflight {
            map: self.map.clone(),
            base: self.base(q),
            desc_num: self.queue_size,
            counter: 0,
        })
    }
}

/// Inflight tracking of one queue (owned by the queue's worker thread).
pub struct QueueInflight {
    map: Arc<MmapRegion<()>>,
    base: usize,
    desc_num: u16,
    counter: u64,
}

/// What recovery found for one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Avail index to continue from.
    pub next_avail: u16,
    /// Heads to resubmit, oldest first.
    pub resubmit: Vec<u16>,
}

impl QueueInflight {
    fn ld16(&self, off: usize) -> u16 {
        self.map
            .as_volatile_slice()
            .load::<u16>(self.base + off, Ordering::Acquire)
            .unwrap_or(0)
    }
    fn st16(&self, off: usize, v: u16) {
        let _ = self
            .map
            .as_volatile_slice()
            .store(v, self.base + off, Ordering::Release);
    }
    fn desc_off(&self, head: u16) -> usize {
        QUEUE_HEADER + DESC_STATE * usize::from(head)
    }
    fn in_range(&self, head: u16) -> bool {
        head < self.desc_num
    }

    /// A head was taken from the avail ring.
    pub fn get(&mut self, head: u16) {
        if !self.in_range(head) {
            return;
        }
        self.counter += 1;
        let off = self.base + self.desc_off(head);
        let s = self.map.as_volatile_slice();
        let _ = s.store(self.counter, off + 8, Ordering::Relaxed);
        let _ = s.store(1u8, off, Ordering::Release);
    }

    /// About to publish the used element of `head`.
    pub fn pre_put(&self, head: u16) {
        self.st16(12, head);
    }

    /// The used element of `head` is published; the used index is `used_idx`.
    pub fn post_put(&self, head: u16, used_idx: u16) {
        if self.in_range(head) {
            let off = self.base + self.desc_off(head);
            let _ = self
                .map
                .as_volatile_slice()
                .store(0u8, off, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.st16(14, used_idx);
    }

    /// Rebuild the queue position after a (re)connect, given the used index
    /// currently in guest memory, the ring size and the frontend's base
    /// (used as is when the region is fresh).
    pub fn recover(&mut self, used_idx_mem: u16, ring_size: u16, base: u16) -> Recovery {
        if self.ld16(8) == 0 {
            // Fresh region: nothing to recover.
            self.st16(8, INFLIGHT_VERSION);
            self.st16(10, self.desc_num);
            self.st16(14, used_idx_mem);
            return Recovery {
                next_avail: base,
                resubmit: Vec::new(),
            };
        }
        if self.ld16(14) != used_idx_mem {
            // Crashed between publishing the used index and clearing the
            // head: that head did complete.
            let last = self.ld16(12);
            if self.in_range(last) {
                let off = self.base + self.desc_off(last);
                let _ = self
                    .map
                    .as_volatile_slice()
                    .store(0u8, off, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            self.st16(14, used_idx_mem);
        }
        let n = self.desc_num.min(ring_size);
        let s = self.map.as_volatile_slice();
        let mut pending: Vec<(u64, u16)> = (0..n)
            .filter_map(|h| {
                let off = self.base + self.desc_off(h);
                let infl = s.load::<u8>(off, Ordering::Acquire).unwrap_or(0);
                let ctr = s.load::<u64>(off + 8, Ordering::Acquire).unwrap_or(0);
                (infl == 1).then_some((ctr, h))
            })
            .collect();
        pending.sort_unstable();
        self.counter = pending.last().map_or(0, |p| p.0);
        let inuse = u16::try_from(pending.len()).unwrap_or(u16::MAX);
        Recovery {
            next_avail: used_idx_mem.wrapping_add(inuse),
            resubmit: pending.into_iter().map(|p| p.1).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_larger_than_its_file_is_refused() {
        let (_r, f, size) = InflightRegion::create(1, 8).unwrap();
        assert!(InflightRegion::map(&f, 0, size, 1, 8).is_ok());
        f.set_len(size - 1).unwrap();
        assert!(matches!(
            InflightRegion::map(&f, 0, size, 1, 8),
            Err(InflightError::Geometry { .. })
        ));
        f.set_len(size).unwrap();
        assert!(InflightRegion::map(&f, 64, size, 1, 8).is_err());
    }

    #[test]
    fn fresh_region_recovers_nothing() {
        let (r, _f, size) = InflightRegion::create(2, 8).unwrap();
        assert_eq!(size, 2 * queue_region_size(8) as u64);
        let mut q = r.queue(1).unwrap();
        assert_eq!(
            q.recover(5, 8, 5),
            Recovery {
                next_avail: 5,
                resubmit: vec![]
            }
        );
    }

    #[test]
    fn unfinished_heads_are_resubmitted_in_counter_order() {
        let (r, f, size) = InflightRegion::create(1, 8).unwrap();
        let mut q = r.queue(0).unwrap();
        q.recover(0, 8, 0);
        q.get(5);
        q.get(2);
        q.get(7);
        q.pre_put(2);
        q.post_put(2, 1);
        // "Crash": map the same file again as a new process would.
        let r2 = InflightRegion::map(&f, 0, size, 1, 8).unwrap();
        let mut q2 = r2.queue(0).unwrap();
        assert_eq!(
            q2.recover(1, 8, 0),
            Recovery {
                next_avail: 3,
                resubmit: vec![5, 7]
            }
        );
    }

    #[test]
    fn crash_after_used_index_publish_clears_last_head() {
        let (r, _f, _) = InflightRegion::create(1, 8).unwrap();
        let mut q = r.queue(0).unwrap();
        q.recover(0, 8, 0);
        q.get(3);
        q.pre_put(3);
        // used->idx became 1 in guest memory but post_put never ran.
        let mut q2 = r.queue(0).unwrap();
        assert_eq!(
            q2.recover(1, 8, 0),
            Recovery {
                next_avail: 1,
                resubmit: vec![]
            }
        );
    }
}
