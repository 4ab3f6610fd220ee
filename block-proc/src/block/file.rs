//! The `file` driver: a regular file (or block device) the broker opened.
//!
//! With `cache.direct=on` the broker opens the file with `O_DIRECT`; then
//! every request whose offset, length and buffers are aligned to
//! [`DIRECT_ALIGN`] goes straight to `preadv`/`pwritev` on guest memory, and
//! any other goes through an aligned bounce buffer (read-modify-write for
//! writes, serialised by a lock so two unaligned writes sharing a block do
//! not lose each other's bytes).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use ipc_proto::block::ImageInfo;

use super::aio::{self, Engine};
use super::iobuf::{self, AlignedBuf, DIRECT_ALIGN};
use super::{Bufs, Driver};

/// A node over an open file.
pub struct FileDriver {
    file: File,
    filename: String,
    direct: bool,
    size: u64,
    rmw: Mutex<()>,
    engine: Engine,
}

impl FileDriver {
    /// Wrap an open file. `direct` says whether it was opened `O_DIRECT`.
    pub fn new(file: File, filename: String, direct: bool) -> io::Result<Self> {
        let size = file_size(&file)?;
        Ok(FileDriver {
            file,
            filename,
            direct,
            size,
            rmw: Mutex::new(()),
            engine: Engine::Threads,
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

    fn is_aligned(&self, bufs: Bufs<'_, '_>, offset: u64, len: usize) -> bool {
        !self.direct
            || (offset.is_multiple_of(DIRECT_ALIGN as u64)
                && len.is_multiple_of(DIRECT_ALIGN)
                && iobuf::aligned(bufs, DIRECT_ALIGN))
    }

    fn bounce_range(offset: u64, len: usize) -> (u64, usize) {
        let a = DIRECT_ALIGN as u64;
        let start = offset / a * a;
        let end = (offset + len as u64).div_ceil(a) * a;
        (start, usize::try_from(end - start).unwrap_or(usize::MAX))
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
        self.size
    }

    fn read(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let len = iobuf::total_len(bufs);
        if self.is_aligned(bufs, offset, len) {
            let mut iov = iobuf::iovecs(bufs);
            // SAFETY: the iovecs point into `bufs`, borrowed for this call.
            return unsafe { rw_full(self.file.as_raw_fd(), &mut iov, offset, false) };
        }
        let (start, blen) = Self::bounce_range(offset, len);
        let mut b = AlignedBuf::new(blen)?;
        let s = b.as_mut_slice();
        let mut iov = [libc::iovec {
            iov_base: s.as_mut_ptr().cast(),
            iov_len: blen,
        }];
        // SAFETY: the iovec points into the bounce buffer `b`, alive here.
        unsafe { rw_full(self.file.as_raw_fd(), &mut iov, start, false) }?;
        let skip = usize::try_from(offset - start).unwrap_or(0);
        iobuf::scatter(bufs, &b.as_slice()[skip..skip + len]);
        Ok(())
    }

    fn write(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let len = iobuf::total_len(bufs);
        if self.is_aligned(bufs, offset, len) {
            let mut iov = iobuf::iovecs(bufs);
            // SAFETY: the iovecs point into `bufs`, borrowed for this call.
            return unsafe { rw_full(self.file.as_raw_fd(), &mut iov, offset, true) };
        }
        let _g = self
            .rmw
            .lock()
            .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
        let (start, blen) = Self::bounce_range(offset, len);
        let mut b = AlignedBuf::new(blen)?;
        let s = b.as_mut_slice();
        let mut iov = [libc::iovec {
            iov_base: s.as_mut_ptr().cast(),
            iov_len: blen,
        }];
        // SAFETY: the iovec points into the bounce buffer `b`, alive here.
        unsafe { rw_full(self.file.as_raw_fd(), &mut iov, start, false) }?;
        let skip = usize::try_from(offset - start).unwrap_or(0);
        iobuf::gather(bufs, &mut b.as_mut_slice()[skip..skip + len]);
        let s = b.as_mut_slice();
        // Do not extend the file past its size with the bounce tail.
        let wlen = usize::try_from((self.size.max(offset + len as u64)).saturating_sub(start))
            .unwrap_or(blen)
            .min(blen);
        let wlen = if self.direct { blen } else { wlen };
        let mut iov = [libc::iovec {
            iov_base: s.as_mut_ptr().cast(),
            iov_len: wlen,
        }];
        // SAFETY: the iovec points into the bounce buffer `b`, alive here.
        unsafe { rw_full(self.file.as_raw_fd(), &mut iov, start, true) }
    }

    fn flush(&self) -> io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fdatasync(self.file.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        if fallocate(fd, mode, offset, len).is_ok() {
            return Ok(());
        }
        // Fallback: write zeroes in chunks.
        let chunk = 1 << 20;
        let mut zero = AlignedBuf::new(chunk)?;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = usize::try_from((end - pos).min(chunk as u64)).unwrap_or(chunk);
            let vs = iobuf::slice_of(&mut zero.as_mut_slice()[..n]);
            self.write(&[vs], pos)?;
            pos += n as u64;
        }
        Ok(())
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
            virtual_size: self.size,
            actual_size: actual,
            cluster_size: None,
            backing_filename: None,
            backing_image: None,
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

    /// The dispatch point to the engine: requests that need no bounce
    /// buffer go to it as they are.
    fn aio_target(&self, op: &aio::Op<'_, '_>) -> Option<aio::Target> {
        let as_is = match *op {
            aio::Op::Read { bufs, offset } | aio::Op::Write { bufs, offset } => {
                self.is_aligned(bufs, offset, iobuf::total_len(bufs))
            }
            aio::Op::Flush | aio::Op::Discard { .. } => true,
        };
        self.engine.target(self.file.as_raw_fd(), op, as_is)
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
