//! The bitmap memory the broker owns: its memfd mapped shared, seen as
//! atomic 64-bit words. Written by hand: a shared `AtomicU64` view of a
//! passed fd is all this needs (vm-memory's mappings are for guest memory
//! and hand out volatile slices, not atomics).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;

/// A shared mapping of `words` 64-bit words.
pub struct SharedWords {
    ptr: *mut AtomicU64,
    words: usize,
}

// SAFETY: the mapping is only accessed through atomics, from any thread.
unsafe impl Send for SharedWords {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the first `words` words of `fd` (which must be at least that
    /// long: a shorter file would raise SIGBUS on access).
    pub fn map(fd: &OwnedFd, words: usize) -> std::io::Result<Self> {
        let bytes = words
            .checked_mul(8)
            .ok_or_else(|| std::io::Error::other("bitmap too large"))?;
        let st = nix::sys::stat::fstat(fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_size as u64) < bytes as u64 {
            return Err(std::io::Error::other(
                "bitmap memory is not a regular file of the expected size",
            ));
        }
        if words == 0 {
            return Ok(SharedWords {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                words: 0,
            });
        }
        // SAFETY: a fresh shared mapping of a file we checked is long
        // enough; no existing memory is affected. The broker keeps the
        // file at this size (it never truncates a bitmap's memfd).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedWords {
            ptr: p.cast(),
            words,
        })
    }

    /// The words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` maps `words` properly aligned (page-aligned) words
        // for the lifetime of `self`; AtomicU64 has u64's layout.
        unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        if self.words == 0 {
            return;
        }
        // SAFETY: unmaps exactly the mapping made in `map`; no reference
        // from `words()` outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.words * 8);
        }
    }
}
