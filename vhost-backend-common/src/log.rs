//! The vhost-user dirty log, backend side (`VHOST_F_LOG_ALL`,
//! `VHOST_USER_PROTOCOL_F_LOG_SHMFD`, SET_LOG_BASE): a bitmap the frontend
//! shares, one bit per 4 KiB guest-physical page (bit `n % 8` of byte
//! `n / 8` stands for page `n`), in which a backend marks every page it
//! writes while the driver features include LOG_ALL, so that a live
//! migration sends those pages again.
//!
//! - [`DirtyLog`]: the mapped bitmap (checked against its file first, so
//!   no SIGBUS), marked with atomic `fetch_or`s: the frontend reads and
//!   clears it concurrently.
//! - [`QueueLog`]: what one running queue logs: the buffers it writes
//!   (guest physical) and, when the frontend set `VHOST_VRING_F_LOG` in
//!   SET_VRING_ADDR, its used-ring writes at the ring's `log_guest_addr`.
//!   A queue without logging has no `QueueLog` at all: one branch on the
//!   I/O path.
//!
//! Written here (not taken from `vhost-user-backend`) because both
//! backends implement the protocol handler themselves (see their
//! `vhost/backend.rs`), and the crate's `vm-memory` bitmap only sees
//! writes made through `vm-memory`, not the ones the kernel makes into
//! guest RAM (O_DIRECT and io_uring reads).

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserLog, VhostUserVringAddrFlags};
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

use crate::memory::file_covers;

/// `VHOST_F_LOG_ALL`: the virtio feature bit (26) with which the frontend
/// turns logging on (never offered to a guest).
pub const LOG_ALL: u64 = 1 << 26;

/// Guest-physical bytes one bit of the log stands for.
pub const LOG_PAGE: u64 = 4096;

/// Why a SET_LOG_BASE region cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A zero-sized region, or one too large to map here.
    #[error("a dirty log of {0} bytes cannot be mapped")]
    BadSize(u64),
    /// The region reaches past the end of its file (touching it would
    /// raise SIGBUS) or the fd is not a regular file.
    #[error("dirty log region [{offset:#x}, +{size:#x}) is not inside its file")]
    PastEndOfFile {
        /// `mmap_offset` of the region.
        offset: u64,
        /// `mmap_size` of the region.
        size: u64,
    },
    /// mmap failed.
    #[error("mapping the dirty log failed: {0}")]
    Map(String),
}

/// A mapped dirty log.
pub struct DirtyLog {
    region: MmapRegion<()>,
    /// Where the log starts in the mapping (the message's offset need not
    /// be page aligned; the mapping's is).
    start: usize,
    /// Bytes of log.
    len: usize,
    /// A page past the end of the log was written (reported once).
    overflowed: AtomicBool,
}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog").field("len", &self.len).finish()
    }
}

impl DirtyLog {
    /// Maps the region of a SET_LOG_BASE message: `log.mmap_size` bytes
    /// of `file` from `log.mmap_offset`, shared, after checking that the
    /// file holds them.
    pub fn from_message(log: &VhostUserLog, file: File) -> Result<Self, LogError> {
        let (size, offset) = (log.mmap_size, log.mmap_offset);
        Self::map(file, offset, size)
    }

    /// Maps `size` bytes of `file` from `offset` (shared, read-write).
    pub fn map(file: File, offset: u64, size: u64) -> Result<Self, LogError> {
        let len = usize::try_from(size)
            .ok()
            .filter(|&l| l > 0)
            .ok_or(LogError::BadSize(size))?;
        if !file_covers(&file, offset, size) {
            return Err(LogError::PastEndOfFile { offset, size });
        }
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096);
        let aligned = offset - offset % page;
        let start = usize::try_from(offset - aligned).map_err(|_| LogError::BadSize(size))?;
        let map_len = start.checked_add(len).ok_or(LogError::BadSize(size))?;
        let region = MmapRegion::from_file(FileOffset::new(file, aligned), map_len)
            .map_err(|e| LogError::Map(e.to_string()))?;
        Ok(DirtyLog {
            region,
            start,
            len,
            overflowed: AtomicBool::new(false),
        })
    }

    /// Bytes of log (it covers `8 * LOG_PAGE` bytes of guest-physical
    /// space per byte).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a log has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: `region` maps `start + len` bytes for as long as `self`
        // lives (the file was checked to hold them, so no SIGBUS);
        // `AtomicU8` has the layout of `u8`; every access from this
        // process is atomic (the frontend's are too).
        unsafe {
            std::slice::from_raw_parts(
                self.region.as_ptr().add(self.start).cast::<AtomicU8>(),
                self.len,
            )
        }
    }

    /// Marks every page of the guest-physical range `[gpa, gpa + len)`.
    /// Called after the bytes are written (Release: a frontend that sees
    /// the bit and then reads the page sees them). A page beyond the log
    /// is not marked (the frontend sized its log too small); the first
    /// one is reported.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let bytes = self.bytes();
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            let Some(b) = usize::try_from(byte).ok().and_then(|i| bytes.get(i)) else {
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "vhost-user dirty log: page {page:#x} is beyond the log of {} bytes; \
                         not logged",
                        self.len
                    );
                }
                return;
            };
            let top = last.min(byte * 8 + 7);
            let (lo, hi) = ((page % 8) as u32, (top % 8) as u32);
            let mask = (0xffu16 >> (7 - (hi - lo)) << lo) as u8;
            b.fetch_or(mask, Ordering::Release);
            page = top + 1;
        }
    }
}

/// What one running queue logs while logging is on.
#[derive(Debug, Clone)]
pub struct QueueLog {
    log: Arc<DirtyLog>,
    /// The used ring's `log_guest_addr`, when the frontend asked for
    /// used-ring logging (`VHOST_VRING_F_LOG`).
    used: Option<u64>,
}

impl QueueLog {
    /// What a queue logs, or None when logging is off: the acked
    /// `features` lack LOG_ALL or no log was set (SET_LOG_BASE).
    /// `used` is the ring's log address from [`ring_log_addr`].
    pub fn new(features: u64, log: Option<&Arc<DirtyLog>>, used: Option<u64>) -> Option<Self> {
        if features & LOG_ALL == 0 {
            return None;
        }
        Some(QueueLog {
            log: log?.clone(),
            used,
        })
    }

    /// Logs a write of `len` bytes into guest RAM at `gpa` (a buffer).
    pub fn data(&self, gpa: u64, len: u64) {
        self.log.mark(gpa, len);
    }

    /// Logs a write of `len` bytes at `offset` into the used ring.
    pub fn used(&self, offset: u64, len: u64) {
        if let Some(base) = self.used {
            self.log.mark(base.saturating_add(offset), len);
        }
    }
}

/// The used ring's log address of a SET_VRING_ADDR: `log` when the flags
/// carry `VHOST_VRING_F_LOG`, else None.
pub fn ring_log_addr(flags: VhostUserVringAddrFlags, log: u64) -> Option<u64> {
    flags
        .contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
        .then_some(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(size: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    fn bits(l: &DirtyLog) -> Vec<u64> {
        let mut v = Vec::new();
        for (i, b) in l.bytes().iter().enumerate() {
            let b = b.load(Ordering::Relaxed);
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    v.push(i as u64 * 8 + bit);
                }
            }
        }
        v
    }

    #[test]
    fn a_range_marks_every_page_it_touches_and_no_other() {
        let l = DirtyLog::map(memfd(4096), 0, 64).unwrap();
        l.mark(0x1fff, 2); // pages 1 and 2
        l.mark(5 * LOG_PAGE, 1); // page 5
        l.mark(7 * LOG_PAGE, 10 * LOG_PAGE); // pages 7..=16
        l.mark(100 * LOG_PAGE, 0); // nothing
        let want: Vec<u64> = [1, 2, 5].into_iter().chain(7..=16).collect();
        assert_eq!(bits(&l), want);
    }

    #[test]
    fn bit_n_of_byte_n_over_8_is_page_n_at_an_unaligned_offset() {
        let f = memfd(8192);
        let l = DirtyLog::map(f.try_clone().unwrap(), 100, 16).unwrap();
        l.mark(21 * LOG_PAGE + 7, 1);
        let mut raw = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut raw, 100).unwrap();
        assert_eq!(raw[2], 1 << 5, "{raw:?}");
        assert_eq!(raw.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn pages_beyond_the_log_are_not_written() {
        let f = memfd(4096);
        let l = DirtyLog::map(f.try_clone().unwrap(), 0, 8).unwrap();
        l.mark(60 * LOG_PAGE, 10 * LOG_PAGE); // pages 60..=69, log has 64
        assert_eq!(bits(&l), (60..64).collect::<Vec<_>>());
        let mut raw = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut raw, 0).unwrap();
        assert_eq!(&raw[8..], &[0; 8]);
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused() {
        assert!(matches!(
            DirtyLog::map(memfd(4096), 0, 8192),
            Err(LogError::PastEndOfFile { .. })
        ));
        assert!(matches!(
            DirtyLog::map(memfd(4096), 4000, 200),
            Err(LogError::PastEndOfFile { .. })
        ));
        assert!(matches!(
            DirtyLog::map(memfd(4096), u64::MAX, 2),
            Err(LogError::PastEndOfFile { .. })
        ));
        assert!(matches!(
            DirtyLog::map(memfd(4096), 0, 0),
            Err(LogError::BadSize(0))
        ));
    }

    #[test]
    fn logging_is_off_without_log_all_or_without_a_log() {
        let l = Arc::new(DirtyLog::map(memfd(4096), 0, 64).unwrap());
        assert!(QueueLog::new(0, Some(&l), Some(0)).is_none());
        assert!(QueueLog::new(LOG_ALL, None, Some(0)).is_none());
        let q = QueueLog::new(LOG_ALL, Some(&l), None).unwrap();
        q.used(0, 8); // no used-ring logging asked for
        assert!(bits(&l).is_empty());
        let q = QueueLog::new(LOG_ALL, Some(&l), Some(3 * LOG_PAGE)).unwrap();
        q.used(LOG_PAGE + 2, 2);
        q.data(0x10_0000, 1);
        assert_eq!(bits(&l), vec![4, 256]);
    }

    #[test]
    fn the_ring_log_address_needs_the_log_flag() {
        assert_eq!(
            ring_log_addr(VhostUserVringAddrFlags::VHOST_VRING_F_LOG, 0x5000),
            Some(0x5000)
        );
        assert_eq!(
            ring_log_addr(VhostUserVringAddrFlags::empty(), 0x5000),
            None
        );
    }
}
