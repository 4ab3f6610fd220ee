//! The vhost-user dirty log: a shared bitmap, one bit per 4 KiB
//! guest-physical page (bit `n` of byte `n / 8` stands for page `n`), that
//! backends set (`VHOST_F_LOG_ALL`, `SET_LOG_BASE`) for every page they
//! write while a migration runs. The memfd comes from the broker
//! (`MigrationRequest::Start`'s `log`); the frontends hand it to their
//! backends and the migration reads and clears it word by word.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub use ipc_proto::migration::DIRTY_LOG_PAGE;

/// Why a log could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    /// The size is zero or not a multiple of 8 bytes.
    #[error("a dirty log of {0} bytes is not a whole number of 64-bit words")]
    BadSize(u64),
    /// The memfd is smaller than the size asked for.
    #[error("the dirty log's file has {have} bytes, {want} wanted")]
    TooSmall {
        /// Bytes in the file.
        have: u64,
        /// Bytes asked for.
        want: u64,
    },
    /// fstat or mmap failed.
    #[error("cannot map the dirty log")]
    Map(#[source] nix::Error),
}

/// A mapped dirty log.
#[derive(Debug)]
pub struct VhostLog {
    fd: OwnedFd,
    ptr: NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: the mapping is only accessed through atomics and lives as long
// as the value.
unsafe impl Send for VhostLog {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for VhostLog {}

impl VhostLog {
    /// Maps `size` bytes of the memfd `fd` (shared, read-write).
    pub fn map(fd: OwnedFd, size: u64) -> Result<Self, DirtyLogError> {
        if size == 0 || !size.is_multiple_of(8) {
            return Err(DirtyLogError::BadSize(size));
        }
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(DirtyLogError::Map)?;
        let have = u64::try_from(st.st_size).unwrap_or(0);
        if have < size {
            return Err(DirtyLogError::TooSmall { have, want: size });
        }
        let len = std::num::NonZeroUsize::new(size as usize).ok_or(DirtyLogError::BadSize(size))?;
        // SAFETY: a new shared mapping of a file at least `len` bytes long
        // (checked above, so no SIGBUS); nothing else in this process
        // aliases it.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(DirtyLogError::Map)?;
        Ok(VhostLog {
            fd,
            ptr: ptr.cast(),
            words: (size / 8) as usize,
        })
    }

    /// The memfd, for `SET_LOG_BASE`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapped size in bytes.
    pub fn size(&self) -> u64 {
        self.words as u64 * 8
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` maps `words` 64-bit words for the value's life;
        // page-aligned, so aligned for AtomicU64.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }

    /// Marks guest-physical page `page` dirty (what a backend does; used
    /// by tests and by the frontend for pages it writes itself).
    pub fn mark(&self, page: u64) {
        if let Some(w) = self.words().get((page / 64) as usize) {
            w.fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }

    /// Calls `f` with every page marked since the last call, clearing
    /// each word as it is read (a page marked meanwhile is seen then or
    /// at the next call, never lost).
    pub fn take(&self, mut f: impl FnMut(u64)) {
        for (i, w) in self.words().iter().enumerate() {
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = w.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros();
                f(i as u64 * 64 + u64::from(b));
                bits &= bits - 1;
            }
        }
    }
}

impl Drop for VhostLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which no
        // reference outlives (`words` borrows `self`).
        if let Err(e) = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.words * 8) } {
            tracing::warn!("cannot unmap the dirty log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(size: u64) -> VhostLog {
        let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, size as i64).unwrap();
        VhostLog::map(fd, size).unwrap()
    }

    #[test]
    fn marked_pages_are_taken_once_in_order() {
        let l = log(4096);
        for p in [3, 64, 65, 1000, 32767] {
            l.mark(p);
        }
        l.mark(40_000_000); // beyond the log: ignored
        let mut seen = Vec::new();
        l.take(|p| seen.push(p));
        assert_eq!(seen, vec![3, 64, 65, 1000, 32767]);
        let mut again = Vec::new();
        l.take(|p| again.push(p));
        assert!(again.is_empty());
    }

    #[test]
    fn a_byte_a_backend_sets_is_the_page_bit_n_of_byte_n_over_8() {
        let l = log(4096);
        // A backend writes byte 2, bit 5: page 21.
        let ptr = l.ptr.as_ptr().cast::<u8>();
        // SAFETY: byte 2 of the mapping, inside it; no other access now.
        unsafe { *ptr.add(2) |= 1 << 5 };
        let mut seen = Vec::new();
        l.take(|p| seen.push(p));
        assert_eq!(seen, vec![21]);
    }

    #[test]
    fn a_log_larger_than_its_file_is_refused() {
        let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            VhostLog::map(fd, 8192),
            Err(DirtyLogError::TooSmall {
                have: 4096,
                want: 8192
            })
        ));
    }

    #[test]
    fn the_broker_sizes_the_log_for_ram_plus_the_hole() {
        assert_eq!(ipc_proto::migration::dirty_log_size(0), 131072);
        assert_eq!(ipc_proto::migration::dirty_log_size(512 << 20), 147456);
    }
}
