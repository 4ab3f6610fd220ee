//! The `file` driver: a regular file (or block device) the broker opened.
//!
//! Layers of one request, top to bottom:
//! 1. **Range lock** ([`RangeLock`]): every data-modifying request (write,
//!    discard, write zeroes) holds its byte range, widened to whole
//!    [`DIRECT_ALIGN`] blocks, while it runs, so a read-modify-write of a
//!    partial block is exclusive against anything else touching the block.
//! 2. **Bounce buffers** ([`BouncePool`]): with `cache.direct=on` the broker
//!    opens the file `O_DIRECT`; a request whose offset, length or guest
//!    buffers are not aligned to [`DIRECT_ALIGN`] is moved through aligned
//!    bounce chunks of the node's pool (fixed budget, one chunk per request
//!    at a time; read-modify-write of the partial end blocks for writes).
//!    Aligned requests go straight to guest memory.
//! 3. **Engine** (`FileDriver::transfer`): the one place data moves between
//!    memory and the file on the synchronous path (`preadv`/`pwritev` on
//!    the calling I/O thread). With `aio=io_uring`, a request that needs no
//!    bounce buffer goes to the queue's ring instead (`aio_target`), owning
//!    the same range and `fd_mode` guards until the ring completes it.
//!
//! Writes never grow the file: a bounce write of the partial last block of
//! a file whose size is not a multiple of [`DIRECT_ALIGN`] writes only up to
//! the end of the file (that tail with `O_DIRECT` briefly cleared, see
//! `FileDriver::write_tail`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use ipc_proto::block::ImageInfo;

use super::aio::{self, Engine};
use super::bounce::{BouncePool, BOUNCE_CHUNK};
use super::graph::strerror;
use super::iobuf::{self, DIRECT_ALIGN};
use super::range_lock::RangeLock;
use super::{Bufs, Driver};

/// A node over an open file.
pub struct FileDriver {
    file: File,
    filename: String,
    direct: bool,
    /// Current size; changes only with [`Driver::resize`] (`block_resize`).
    size: AtomicU64,
    engine: Engine,
    /// Shared (`Arc`) so a ring request can own its guard until it
    /// completes.
    ranges: Arc<RangeLock>,
    bounce: BouncePool,
    /// Held shared by every transfer and exclusively while `O_DIRECT` is
    /// cleared for a tail write (the flag belongs to the open file, so no
    /// other transfer may run meanwhile). Ring requests own a shared
    /// guard from submission to completion (`aio_target`).
    fd_mode: Arc<RwLock<()>>,
}

/// Where the bytes of a bounce write come from.
#[derive(Clone, Copy)]
enum Source<'a, 'b> {
    /// The request's buffers.
    Bufs(Bufs<'a, 'b>),
    /// Zeroes (the write-zeroes fallback).
    Zeroes,
}

/// `[offset, offset + len)` widened to whole direct-I/O blocks.
fn widen(offset: u64, len: u64) -> (u64, u64) {
    let a = DIRECT_ALIGN as u64;
    let end = offset.saturating_add(len);
    (offset / a * a, end.div_ceil(a).saturating_mul(a))
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn iovec(buf: &mut [u8]) -> [libc::iovec; 1] {
    [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }]
}

impl FileDriver {
    /// Wrap an open file. `direct` says whether it was opened `O_DIRECT`.
    pub fn new(file: File, filename: String, direct: bool) -> io::Result<Self> {
        let size = file_size(&file)?;
        Ok(FileDriver {
            file,
            filename,
            direct,
            size: AtomicU64::new(size),
            engine: Engine::Threads,
            ranges: Arc::default(),
            bounce: BouncePool::default(),
            fd_mode: Arc::new(RwLock::new(())),
        })
    }

    /// Run I/O with `engine` (`aio=`); [`FileDriver::new`] uses threads.
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// The file (for format drivers that need their own handle).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file name the broker opened.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Whether the file is opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The bounce-buffer pool (its budget and the most it ever lent).
    pub fn bounce_pool(&self) -> &BouncePool {
        &self.bounce
    }

    fn is_aligned(&self, bufs: Bufs<'_, '_>, offset: u64, len: usize) -> bool {
        !self.direct
            || (offset.is_multiple_of(DIRECT_ALIGN as u64)
                && len.is_multiple_of(DIRECT_ALIGN)
                && iobuf::aligned(bufs, DIRECT_ALIGN))
    }

    fn shared_mode(&self) -> RwLockReadGuard<'_, ()> {
        self.fd_mode.read()
    }

    /// **Engine dispatch point**: every transfer of this driver between
    /// memory and the file goes through here, already range-locked and
    /// bounced as needed by the layers above. Today: `preadv`/`pwritev`
    /// on the calling I/O thread. An engine must hold `fd_mode` shared
    /// from submission to completion. A read past the end of the file
    /// zero-fills.
    ///
    /// # Safety
    ///
    /// Every iovec must point at memory that stays valid (and, for reads,
    /// writable) for `iov_len` bytes during the call.
    unsafe fn transfer(&self, iov: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<()> {
        let _mode = self.shared_mode();
        // SAFETY: forwarded from this function's contract.
        unsafe { rw_full(self.file.as_raw_fd(), iov, offset, write) }
    }

    /// Transfer a whole bounce (or other plain) buffer.
    fn transfer_buf(&self, buf: &mut [u8], offset: u64, write: bool) -> io::Result<()> {
        // SAFETY: the iovec covers `buf`, borrowed mutably for the call.
        unsafe { self.transfer(&mut iovec(buf), offset, write) }
    }

    /// Write `data` (a whole number of blocks at the block-aligned
    /// `offset`) but never past the end of the file.
    fn write_clamped(&self, data: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let size = self.size.load(Ordering::Acquire);
        if end <= size {
            return self.transfer_buf(data, offset, true);
        }
        let keep = to_usize(size.saturating_sub(offset))?.min(data.len());
        if !self.direct {
            return self.transfer_buf(&mut data[..keep], offset, true);
        }
        // The aligned part directly, the partial last block without
        // O_DIRECT (which cannot write less than a block).
        let whole = keep / DIRECT_ALIGN * DIRECT_ALIGN;
        self.transfer_buf(&mut data[..whole], offset, true)?;
        self.write_tail(&data[whole..keep], offset + whole as u64)
    }

    /// Write the bytes of the partial last block of an `O_DIRECT` file:
    /// clear `O_DIRECT` on the file (all other transfers excluded), write
    /// through the page cache, set it again.
    fn write_tail(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let _excl = self.fd_mode.write();
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl with integer arguments on an fd we own.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset);
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, fl) } < 0 {
            return Err(io::Error::last_os_error());
        }
        r
    }

    /// Read through bounce chunks, one at a time.
    fn bounce_read(&self, bufs: Bufs<'_, '_>, offset: u64, len: u64) -> io::Result<()> {
        let (start, end) = widen(offset, len);
        let mut chunk = self.bounce.take()?;
        let mut cs = start;
        while cs < end {
            let n = to_usize((end - cs).min(BOUNCE_CHUNK as u64))?;
            let b = &mut chunk.as_mut_slice()[..n];
            self.transfer_buf(b, cs, false)?;
            let lo = cs.max(offset);
            let hi = (cs + n as u64).min(offset + len);
            let data = &b[to_usize(lo - cs)?..to_usize(hi - cs)?];
            iobuf::scatter_at(bufs, to_usize(lo - offset)?, data);
            cs += n as u64;
        }
        Ok(())
    }

    /// Write through bounce chunks, one at a time, reading the partial
    /// first and last blocks first. The caller holds the widened range.
    fn bounce_write(&self, src: Source<'_, '_>, offset: u64, len: u64) -> io::Result<()> {
        let a = DIRECT_ALIGN as u64;
        let (start, end) = widen(offset, len);
        let mut chunk = self.bounce.take()?;
        let mut cs = start;
        while cs < end {
            let n = to_usize((end - cs).min(BOUNCE_CHUNK as u64))?;
            let ce = cs + n as u64;
            let b = &mut chunk.as_mut_slice()[..n];
            let lo = cs.max(offset);
            let hi = ce.min(offset + len);
            if lo > cs {
                self.transfer_buf(&mut b[..DIRECT_ALIGN], cs, false)?;
            }
            if hi < ce && (n > DIRECT_ALIGN || lo == cs) {
                self.transfer_buf(&mut b[n - DIRECT_ALIGN..], ce - a, false)?;
            }
            let dst = &mut b[to_usize(lo - cs)?..to_usize(hi - cs)?];
            match src {
                Source::Bufs(bufs) => iobuf::gather_at(bufs, to_usize(lo - offset)?, dst),
                Source::Zeroes => dst.fill(0),
            }
            self.write_clamped(b, cs)?;
            cs = ce;
        }
        Ok(())
    }
}

/// Size of a regular file or block device.
pub fn file_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which is valid.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), 0x8008_1272, &mut size as *mut u64) };
    if r < 0 {
        return Ok(meta.len());
    }
    Ok(size)
}

/// `preadv`/`pwritev` until all of `iov` is transferred. A read hitting end
/// of file zero-fills the rest.
///
/// # Safety
///
/// Every iovec must point at memory that stays valid (and, for reads,
/// writable) for `iov_len` bytes during the call.
unsafe fn rw_full(
    fd: RawFd,
    iov: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    let mut idx = 0;
    while idx < iov.len() {
        if iov[idx].iov_len == 0 {
            idx += 1;
            continue;
        }
        let cnt = libc::c_int::try_from((iov.len() - idx).min(1024)).unwrap_or(1024);
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let ptr = iov[idx..].as_ptr();
        let n = if write {
            // SAFETY: ptr/cnt describe iovecs pointing at memory the caller
            // guarantees valid for the duration of the call.
            unsafe { libc::pwritev(fd, ptr, cnt, off) }
        } else {
            // SAFETY: as above; the kernel writes only inside the iovecs.
            unsafe { libc::preadv(fd, ptr, cnt, off) }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            if write {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            for v in &mut iov[idx..] {
                // SAFETY: the iovec points at memory the caller keeps mapped and
                // writable, of iov_len bytes.
                unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
            }
            return Ok(());
        }
        offset += n as u64;
        while n > 0 && idx < iov.len() {
            let v = &mut iov[idx];
            if n >= v.iov_len {
                n -= v.iov_len;
                idx += 1;
            } else {
                // SAFETY: n < iov_len, so the advanced pointer stays inside the buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let l = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let r = unsafe { libc::fallocate(fd, mode, off, l) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Driver for FileDriver {
    fn drv(&self) -> &'static str {
        "file"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn resize(&self, new_size: u64) -> Result<(), String> {
        // A management resize (`block_resize`), not growth by guest
        // writes: those stay inside the size (issue 14).
        self.file.set_len(new_size).map_err(|e| {
            format!(
                "Failed to resize file '{}': {}",
                self.filename,
                strerror(&e)
            )
        })?;
        self.size
            .store(file_size(&self.file).unwrap_or(new_size), Ordering::Release);
        Ok(())
    }

    fn read(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let len = iobuf::total_len(bufs);
        if self.is_aligned(bufs, offset, len) {
            let mut iov = iobuf::iovecs(bufs);
            // SAFETY: the iovecs point into `bufs`, borrowed for this call.
            return unsafe { self.transfer(&mut iov, offset, false) };
        }
        self.bounce_read(bufs, offset, len as u64)
    }

    fn write(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let len = iobuf::total_len(bufs);
        let (start, end) = widen(offset, len as u64);
        let _range = self.ranges.lock(start, end);
        if self.is_aligned(bufs, offset, len) {
            let mut iov = iobuf::iovecs(bufs);
            // SAFETY: the iovecs point into `bufs`, borrowed for this call.
            return unsafe { self.transfer(&mut iov, offset, true) };
        }
        self.bounce_write(Source::Bufs(bufs), offset, len as u64)
    }

    fn flush(&self) -> io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fdatasync(self.file.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let (start, end) = widen(offset, len);
        let _range = self.ranges.lock(start, end);
        let _mode = self.shared_mode();
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let (start, end) = widen(offset, len);
        let _range = self.ranges.lock(start, end);
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        let done = {
            let _mode = self.shared_mode();
            fallocate(self.file.as_raw_fd(), mode, offset, len).is_ok()
        };
        if done {
            return Ok(());
        }
        // Fallback: write zeroes through the bounce chunks.
        self.bounce_write(Source::Zeroes, offset, len)
    }

    fn image_info(&self) -> ImageInfo {
        let actual = self
            .file
            .metadata()
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
        ImageInfo {
            filename: self.filename.clone(),
            format: "file".into(),
            virtual_size: self.size(),
            actual_size: actual,
            cluster_size: None,
            backing_filename: None,
            backing_image: None,
            format_specific: Some(ipc_proto::block::FormatSpecific::File),
        }
    }

    fn children(&self) -> Vec<String> {
        Vec::new()
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn aio(&self) -> Option<aio::FileAio> {
        (self.engine != Engine::Threads).then(|| aio::FileAio {
            engine: self.engine,
            fd: self.file.as_raw_fd(),
        })
    }

    /// The dispatch point to the asynchronous engine: a request that needs
    /// no bounce buffer (and, for a write, ends inside the file) goes to
    /// the engine as it is, owning what the synchronous path would hold
    /// around `transfer`, until the engine completes it: a shared
    /// `fd_mode` guard (so `write_tail` never flips `O_DIRECT` under it)
    /// and, for a write or discard, its range widened to whole blocks.
    /// Both are only tried, never waited for: the caller is the queue
    /// thread that reaps the ring, and a range held by a request on its
    /// own ring would never be released. When either is taken, None: the
    /// synchronous path runs the request on an I/O thread and waits there.
    fn aio_target(&self, op: &aio::Op<'_, '_>) -> Option<aio::Target> {
        if self.engine == Engine::Threads {
            return None;
        }
        let (as_is, range) = match *op {
            aio::Op::Read { bufs, offset } => {
                (self.is_aligned(bufs, offset, iobuf::total_len(bufs)), None)
            }
            aio::Op::Write { bufs, offset } => {
                let len = iobuf::total_len(bufs);
                let inside = offset
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= self.size());
                (
                    inside && self.is_aligned(bufs, offset, len),
                    Some(widen(offset, len as u64)),
                )
            }
            aio::Op::Flush => (true, None),
            aio::Op::Discard { offset, len } => (true, Some(widen(offset, len))),
        };
        if !as_is {
            return None;
        }
        // Same order as the synchronous path: range, then mode.
        let range = match range {
            Some((start, end)) => Some(self.ranges.try_lock_owned(start, end)?),
            None => None,
        };
        let mode = match op {
            aio::Op::Flush => None,
            aio::Op::Read { .. } | aio::Op::Write { .. } | aio::Op::Discard { .. } => {
                Some(self.fd_mode.try_read_arc()?)
            }
        };
        let mut target = self.engine.target(self.file.as_raw_fd(), op, true)?;
        target.hold = Some(Box::new((range, mode)));
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(len: usize) -> (File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("bp-file-{}-{len}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&vec![0u8; len]).unwrap();
        (f, path)
    }

    #[test]
    fn file_driver_write_then_read_returns_same_bytes() {
        let (f, path) = temp_file(65536);
        let d = FileDriver::new(f, path.display().to_string(), false).unwrap();
        let mut data = vec![0xabu8; 1000];
        d.write(&[iobuf::slice_of(&mut data)], 513).unwrap();
        let mut back = vec![0u8; 1000];
        d.read(&[iobuf::slice_of(&mut back)], 513).unwrap();
        assert_eq!(back, vec![0xabu8; 1000]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn file_driver_read_past_eof_zero_fills() {
        let (f, path) = temp_file(512);
        let d = FileDriver::new(f, "x".into(), false).unwrap();
        let mut back = vec![0xffu8; 1024];
        d.read(&[iobuf::slice_of(&mut back)], 0).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        std::fs::remove_file(path).unwrap();
    }
}
