//! Writes the core to the output fd, sequentially from its current
//! position (so pipes and sockets work, as in QEMU). Guest RAM goes out
//! straight from the mapping in large writes; ranges the guest never
//! touched (holes of the RAM memfd, found with SEEK_DATA/SEEK_HOLE) are
//! not read through the mapping — that would allocate them — but written
//! as zeros, or, when the output is a regular file whose bytes past the
//! current position are all beyond its end, skipped with a seek so they
//! read back as zeros (a sparse file with the same bytes).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
    WriteVolatile,
};

use super::elf::{Block, Layout};
use super::DumpError;
use crate::memory::GuestMemoryMmap;

/// Bytes per write of guest RAM (progress moves in these steps).
const CHUNK: u64 = 16 << 20;
/// Zeros for holes written to outputs that cannot seek.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The output fd and what it allows.
pub struct Output {
    file: File,
    /// Holes may be skipped by seeking.
    sparse: bool,
    /// Bytes skipped since the last write (the file must be extended to
    /// cover them at the end).
    skipped: u64,
}

impl Output {
    /// Wraps `file`, deciding whether holes may be skipped: a regular file
    /// not opened for appending whose size does not pass the position.
    pub fn new(file: File) -> Self {
        let sparse = (|| {
            let meta = file.metadata().ok()?;
            if !meta.file_type().is_file() {
                return None;
            }
            let fd = file.as_raw_fd();
            // SAFETY: F_GETFL on an fd this function owns through `file`.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if fl < 0 || fl & libc::O_APPEND != 0 {
                return None;
            }
            // SAFETY: lseek on an owned fd; offset 0 from the current
            // position only reads the position.
            let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
            (pos >= 0 && meta.len() <= pos as u64).then_some(())
        })()
        .is_some();
        Output {
            file,
            sparse,
            skipped: 0,
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)
    }

    fn zeros(&mut self, mut len: u64, progress: &AtomicU64) -> std::io::Result<()> {
        if self.sparse {
            let off =
                i64::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: lseek on the owned fd.
            if unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_CUR) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            self.skipped += len;
            progress.fetch_add(len, Ordering::Relaxed);
            return Ok(());
        }
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.file.write_all(&ZEROS[..n])?;
            len -= n as u64;
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Makes the file cover a hole skipped at its very end.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.skipped == 0 {
            return Ok(());
        }
        // SAFETY: lseek on the owned fd, one byte back over skipped zeros.
        if unsafe { libc::lseek(self.file.as_raw_fd(), -1, libc::SEEK_CUR) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.file.write_all(&[0])
    }
}

fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Writes `layout`'s head and blocks from `mem` to `out`, adding guest
/// memory bytes to `progress` as they go out.
pub fn write_core(
    out: &mut Output,
    layout: &Layout,
    mem: &GuestMemoryMmap,
    progress: &AtomicU64,
) -> Result<(), DumpError> {
    out.write_all(&layout.head).map_err(|e| {
        DumpError::Write(format!(
            "dump: failed to write elf header: {}",
            strerror(&e)
        ))
    })?;
    for b in &layout.blocks {
        write_block(out, mem, *b, progress).map_err(|e| {
            DumpError::Write(format!("dump: failed to save memory: {}", strerror(&e)))
        })?;
    }
    out.finish()
        .map_err(|e| DumpError::Write(format!("dump: failed to save memory: {}", strerror(&e))))
}

/// Where data resumes at or after `off` in `fd` (`end` if nowhere before).
fn seek(fd: i32, off: u64, whence: libc::c_int, end: u64) -> std::io::Result<u64> {
    let at = i64::try_from(off).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a live fd (the RAM file, owned by the memory map).
    let r = unsafe { libc::lseek(fd, at, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `off`.
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(end)
        } else {
            Err(e)
        };
    }
    Ok((r as u64).min(end))
}

fn write_block(
    out: &mut Output,
    mem: &GuestMemoryMmap,
    b: Block,
    progress: &AtomicU64,
) -> std::io::Result<()> {
    let bad = || std::io::Error::from_raw_os_error(libc::EFAULT);
    let (region, start) = mem.to_region_addr(GuestAddress(b.gpa)).ok_or_else(bad)?;
    let end = start.raw_value() + b.len;
    // The RAM file and this region's offset in it, for SEEK_DATA.
    let file = region
        .file_offset()
        .map(|f| (f.file().as_raw_fd(), f.start()));
    let mut pos = start.raw_value();
    while pos < end {
        let (data, hole) = match file {
            Some((fd, base)) => {
                let data = seek(fd, base + pos, libc::SEEK_DATA, base + end)? - base;
                let hole = if data < end {
                    seek(fd, base + data, libc::SEEK_HOLE, base + end)? - base
                } else {
                    end
                };
                (data, hole)
            }
            None => (pos, end),
        };
        if data > pos {
            out.zeros(data - pos, progress)?;
        }
        let mut at = data;
        while at < hole {
            let n = (hole - at).min(CHUNK);
            let slice = region
                .get_slice(MemoryRegionAddress(at), n as usize)
                .map_err(|_| bad())?;
            out.file.write_all_volatile(&slice).map_err(|e| match e {
                vm_memory::VolatileMemoryError::IOError(io) => io,
                _ => bad(),
            })?;
            out.skipped = 0;
            progress.fetch_add(n, Ordering::Relaxed);
            at += n;
        }
        pos = hole.max(data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    const SIZE: u64 = 4 << 20;

    fn memfd(size: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    const PAGES: [(u64, u8); 2] = [(1 << 20, 0xa5), (SIZE - 4096, 0x3c)];

    /// 4 MiB of RAM with data only in `pages`.
    fn guest_with(pages: &[(u64, u8)]) -> (GuestMemoryMmap, Layout, Vec<u8>) {
        let mem = crate::memory::map_guest_memory(memfd(SIZE), SIZE).unwrap();
        let mut expect = vec![0u8; SIZE as usize];
        for &(at, byte) in pages {
            mem.write_slice(&[byte; 4096], GuestAddress(at)).unwrap();
            expect[at as usize..at as usize + 4096].fill(byte);
        }
        let block = Block { gpa: 0, len: SIZE };
        let layout = Layout::new(vec![block], &[], &[]);
        let mut file = layout.head.clone();
        file.extend_from_slice(&expect);
        (mem, layout, file)
    }

    fn guest() -> (GuestMemoryMmap, Layout, Vec<u8>) {
        guest_with(&PAGES)
    }

    #[test]
    fn a_regular_file_gets_the_same_bytes_with_untouched_ram_left_sparse() {
        sparse_file_round(guest());
        // Untouched RAM at the very end: the file still covers it.
        sparse_file_round(guest_with(&PAGES[..1]));
    }

    fn sparse_file_round((mem, layout, expect): (GuestMemoryMmap, Layout, Vec<u8>)) {
        let out = memfd(0);
        let mut o = Output::new(out.try_clone().unwrap());
        assert!(o.sparse);
        let progress = AtomicU64::new(0);
        write_core(&mut o, &layout, &mem, &progress).unwrap();
        assert_eq!(progress.load(Ordering::SeqCst), SIZE);
        let mut got = Vec::new();
        let mut out = out;
        out.seek(SeekFrom::Start(0)).unwrap();
        out.read_to_end(&mut got).unwrap();
        assert!(got == expect, "the file differs from head + RAM");
        let allocated = out.metadata().unwrap().blocks() * 512;
        assert!(allocated < SIZE / 2, "{allocated} bytes allocated");
    }

    #[test]
    fn a_pipe_gets_zeros_written_for_untouched_ram() {
        let (mem, layout, expect) = guest();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut o = Output::new(File::from(w));
        assert!(!o.sparse);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            File::from(r).read_to_end(&mut got).unwrap();
            got
        });
        write_core(&mut o, &layout, &mem, &AtomicU64::new(0)).unwrap();
        drop(o);
        assert!(reader.join().unwrap() == expect);
    }

    #[test]
    fn a_file_with_bytes_past_the_position_is_never_skipped_over() {
        let f = memfd(1 << 20);
        assert!(!Output::new(f).sparse);
    }
}
