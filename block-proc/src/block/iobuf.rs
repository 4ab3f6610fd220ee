//! Buffers for block I/O: aligned bounce buffers (for `O_DIRECT` files
//! when the guest's buffers or offsets are not aligned) and helpers over
//! guest buffers given as [`VolatileSlice`]s.

use std::alloc::{self, Layout};
use std::io;

use vm_memory::{Bytes, VolatileSlice};

/// Alignment used for direct I/O (memory address, offset and length).
pub const DIRECT_ALIGN: usize = 4096;

/// A zeroed heap buffer aligned to [`DIRECT_ALIGN`].
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory; moving it between
// threads is like moving a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocate `len` zeroed bytes (rounded up to the alignment).
    pub fn new(len: usize) -> io::Result<Self> {
        let size = len.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let layout = Layout::from_size_align(size, DIRECT_ALIGN)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(AlignedBuf { ptr, layout })
    }

    /// The whole buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self,
        // initialised by alloc_zeroed, and borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    /// The whole buffer, shared.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in as_mut_slice, borrowed shared through &self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Total length of the buffers.
pub fn total_len(bufs: &[VolatileSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Whether every buffer's address and length are multiples of `align`.
pub fn aligned(bufs: &[VolatileSlice<'_>], align: usize) -> bool {
    bufs.iter().all(|b| {
        (b.ptr_guard().as_ptr() as usize).is_multiple_of(align) && b.len().is_multiple_of(align)
    })
}

/// Whether all buffers hold only zero bytes.
pub fn all_zero(bufs: &[VolatileSlice<'_>]) -> bool {
    let mut chunk = [0u8; 512];
    for b in bufs {
        let mut off = 0;
        while off < b.len() {
            let n = (b.len() - off).min(chunk.len());
            let Ok(sub) = b.subslice(off, n) else {
                return false;
            };
            sub.copy_to(&mut chunk[..n]);
            if chunk[..n].iter().any(|&x| x != 0) {
                return false;
            }
            off += n;
        }
    }
    true
}

/// Copy the concatenated buffers into `out` (which is at least as long).
pub fn gather(bufs: &[VolatileSlice<'_>], out: &mut [u8]) {
    let mut pos = 0;
    for b in bufs {
        let end = (pos + b.len()).min(out.len());
        b.copy_to(&mut out[pos..end]);
        pos = end;
    }
}

/// Copy `data` into the concatenated buffers.
pub fn scatter(bufs: &[VolatileSlice<'_>], data: &[u8]) {
    let mut pos = 0;
    for b in bufs {
        let end = (pos + b.len()).min(data.len());
        if pos >= end {
            break;
        }
        let _ = b.write_slice(&data[pos..end], 0);
        pos = end;
    }
}

/// Copy bytes `[pos, pos + out.len())` of the concatenated buffers into
/// `out` (bytes past their end are left alone).
pub fn gather_at(bufs: &[VolatileSlice<'_>], mut pos: usize, out: &mut [u8]) {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            return;
        }
        if pos >= b.len() {
            pos -= b.len();
            continue;
        }
        let n = (b.len() - pos).min(out.len() - done);
        if let Ok(sub) = b.subslice(pos, n) {
            sub.copy_to(&mut out[done..done + n]);
        }
        done += n;
        pos = 0;
    }
}

/// Copy `data` into the concatenated buffers from their byte `pos` on.
pub fn scatter_at(bufs: &[VolatileSlice<'_>], mut pos: usize, data: &[u8]) {
    let mut done = 0;
    for b in bufs {
        if done == data.len() {
            return;
        }
        if pos >= b.len() {
            pos -= b.len();
            continue;
        }
        let n = (b.len() - pos).min(data.len() - done);
        let _ = b.write_slice(&data[done..done + n], pos);
        done += n;
        pos = 0;
    }
}

/// Cut the concatenated buffers into consecutive pieces of at most `max`
/// bytes each (`max` > 0).
pub fn split<'b>(bufs: &[VolatileSlice<'b>], max: usize) -> Vec<Vec<VolatileSlice<'b>>> {
    let mut pieces = Vec::new();
    let mut cur: Vec<VolatileSlice<'b>> = Vec::new();
    let mut room = max;
    for b in bufs {
        let mut off = 0;
        while off < b.len() {
            let n = (b.len() - off).min(room);
            if let Ok(sub) = b.subslice(off, n) {
                cur.push(sub);
            }
            off += n;
            room -= n;
            if room == 0 {
                pieces.push(std::mem::take(&mut cur));
                room = max;
            }
        }
    }
    if !cur.is_empty() {
        pieces.push(cur);
    }
    pieces
}

/// Fill the buffers with zeroes from byte `from` (of the concatenation) on.
pub fn zero_from(bufs: &[VolatileSlice<'_>], from: usize) {
    let mut pos = 0;
    for b in bufs {
        let start = from.saturating_sub(pos);
        if start < b.len() {
            if let Ok(sub) = b.subslice(start, b.len() - start) {
                fill_zero(&sub);
            }
        }
        pos += b.len();
    }
}

/// `libc::iovec`s pointing at the buffers.
pub fn iovecs(bufs: &[VolatileSlice<'_>]) -> Vec<libc::iovec> {
    bufs.iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

/// A [`VolatileSlice`] over a plain byte slice (tests and bounce buffers).
pub fn slice_of(buf: &mut [u8]) -> VolatileSlice<'_> {
    VolatileSlice::from(buf)
}

/// Fill a slice with zero bytes.
pub fn fill_zero(s: &VolatileSlice<'_>) {
    const Z: [u8; 4096] = [0u8; 4096];
    let mut off = 0;
    while off < s.len() {
        let n = (s.len() - off).min(Z.len());
        if s.write_slice(&Z[..n], off).is_err() {
            return;
        }
        off += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let mut b = AlignedBuf::new(100).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.as_mut_slice().len(), DIRECT_ALIGN);
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn scatter_and_gather_roundtrip_across_buffers() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        let bufs = [slice_of(&mut a), slice_of(&mut b)];
        scatter(&bufs, b"abcdefgh");
        let mut out = [0u8; 8];
        gather(&bufs, &mut out);
        assert_eq!(&out, b"abcdefgh");
        let mut mid = [0u8; 4];
        gather_at(&bufs, 2, &mut mid);
        assert_eq!(&mid, b"cdef");
        scatter_at(&bufs, 2, b"WXYZ");
        gather(&bufs, &mut out);
        assert_eq!(&out, b"abWXYZgh");
        let pieces = split(&bufs, 3);
        let lens: Vec<Vec<usize>> = pieces
            .iter()
            .map(|p| p.iter().map(|b| b.len()).collect())
            .collect();
        assert_eq!(lens, vec![vec![3], vec![3], vec![2]]);
        let pieces = split(&bufs, 4);
        let lens: Vec<Vec<usize>> = pieces
            .iter()
            .map(|p| p.iter().map(|b| b.len()).collect())
            .collect();
        assert_eq!(lens, vec![vec![3, 1], vec![4]]);
        zero_from(&bufs, 2);
        gather(&bufs, &mut out);
        assert_eq!(&out, b"ab\0\0\0\0\0\0");
        assert!(!all_zero(&bufs));
    }
}
