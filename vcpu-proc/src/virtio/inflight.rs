//! The frontend's side of vhost-user inflight I/O tracking (QEMU
//! `docs/interop/vhost-user.rst`, "Inflight I/O tracking").
//!
//! At the first DRIVER_OK the frontend asks the backend for a shared
//! buffer (GET_INFLIGHT_FD, answered with a memfd) in which the backend
//! records which descriptor heads it has taken from the avail ring and not
//! yet completed. The frontend KEEPS that memfd: it outlives a crashed
//! backend, and after a reconnect it is handed to the new backend with
//! SET_INFLIGHT_FD so that the requests in flight at the crash are
//! resubmitted. A guest reset drops it (the rings it describes are gone).
//!
//! The frontend never writes the region; it only reads it to report how
//! many requests were in flight (split-virtqueue layout, per queue aligned
//! to 64 bytes):
//!
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! struct { u8 inflight; u8 padding[5]; u16 next; u64 counter; } desc[desc_num];
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::VhostUserInflight;

/// Size of a queue's header in the region.
const QUEUE_HEADER: u64 = 16;
/// Size of one descriptor's state.
const DESC_STATE: u64 = 16;

/// Errors of reading the inflight region.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The backend answered with an unusable geometry.
    #[error("backend returned an inflight region of {mmap_size} bytes for {num_queues} queues of {queue_size}")]
    Geometry {
        /// Region size.
        mmap_size: u64,
        /// Queues.
        num_queues: u16,
        /// Queue size.
        queue_size: u16,
    },
    /// Reading the memfd failed.
    #[error("cannot read the inflight region")]
    Read(#[source] std::io::Error),
}

/// Result of inflight operations.
pub type Result<T> = std::result::Result<T, InflightError>;

/// Bytes of one queue's part of the region (split layout, 64-byte aligned).
pub fn queue_region_size(queue_size: u16) -> u64 {
    (QUEUE_HEADER + DESC_STATE * u64::from(queue_size)).div_ceil(64) * 64
}

/// The inflight buffer the backend handed out, kept across reconnects.
pub struct InflightBuffer {
    file: File,
    info: VhostUserInflight,
}

impl std::fmt::Debug for InflightBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightBuffer")
            .field("mmap_size", &self.info.mmap_size)
            .field("num_queues", &self.info.num_queues)
            .field("queue_size", &self.info.queue_size)
            .finish()
    }
}

impl InflightBuffer {
    /// Keeps `file` as described by the backend's GET_INFLIGHT_FD reply.
    pub fn new(file: File, info: VhostUserInflight) -> Result<Self> {
        let geometry = || InflightError::Geometry {
            mmap_size: info.mmap_size,
            num_queues: info.num_queues,
            queue_size: info.queue_size,
        };
        if info.mmap_size == 0 || info.num_queues == 0 || info.queue_size == 0 {
            return Err(geometry());
        }
        Ok(InflightBuffer { file, info })
    }

    /// The description to send with SET_INFLIGHT_FD.
    pub fn info(&self) -> &VhostUserInflight {
        &self.info
    }

    /// The memfd.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Number of descriptor heads the backend marked in flight on queue
    /// `q` (0 when the region does not follow the split layout this
    /// frontend knows, e.g. a backend with its own layout).
    pub fn pending(&self, q: u16) -> Result<usize> {
        let per_queue = queue_region_size(self.info.queue_size);
        let need = per_queue * u64::from(self.info.num_queues);
        if q >= self.info.num_queues || self.info.mmap_size < need {
            return Ok(0);
        }
        let mut buf = vec![0u8; usize::try_from(per_queue).unwrap_or(0)];
        let start = self.info.mmap_offset + per_queue * u64::from(q);
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(InflightError::Read)?;
        let n = buf
            .iter()
            .skip(QUEUE_HEADER as usize)
            .step_by(DESC_STATE as usize)
            .take(usize::from(self.info.queue_size))
            .filter(|&&b| b == 1)
            .count();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(size: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn queue_regions_are_64_byte_aligned() {
        assert_eq!(queue_region_size(1), 64);
        assert_eq!(queue_region_size(8), 192);
        assert_eq!(queue_region_size(256), 4160);
    }

    #[test]
    fn zero_sized_region_is_rejected() {
        let r = InflightBuffer::new(memfd(0), VhostUserInflight::new(0, 0, 1, 8));
        assert!(matches!(r, Err(InflightError::Geometry { .. })));
    }

    #[test]
    fn pending_counts_heads_marked_inflight_in_the_split_layout() {
        let size = 2 * queue_region_size(8);
        let f = memfd(size);
        // Queue 1, heads 3 and 6 in flight.
        let q1 = queue_region_size(8);
        f.write_all_at(&[1], q1 + QUEUE_HEADER + 3 * DESC_STATE)
            .unwrap();
        f.write_all_at(&[1], q1 + QUEUE_HEADER + 6 * DESC_STATE)
            .unwrap();
        let b = InflightBuffer::new(f, VhostUserInflight::new(size, 0, 2, 8)).unwrap();
        assert_eq!(b.pending(0).unwrap(), 0);
        assert_eq!(b.pending(1).unwrap(), 2);
        assert_eq!(b.pending(2).unwrap(), 0);
    }
}
