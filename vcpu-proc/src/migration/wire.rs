//! The source's side of the migration fd: [`WireOut`] buffers the
//! stream's small records and hands runs of guest pages to the fd
//! straight from the guest RAM mapping (one `write` per run, no copy in
//! user space), and sizes the socket's send buffer for it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{VolatileMemoryError, VolatileSlice, WriteVolatile};

/// A writer that can take guest memory without a copy.
pub trait RamOut: Write {
    /// Writes all of `ram` (guest memory, read with volatile accesses)
    /// after everything written before.
    fn write_guest<B: BitmapSlice>(&mut self, ram: &VolatileSlice<'_, B>) -> io::Result<()>;
}

/// A stream in memory (tests): guest memory is copied.
impl RamOut for Vec<u8> {
    fn write_guest<B: BitmapSlice>(&mut self, ram: &VolatileSlice<'_, B>) -> io::Result<()> {
        let at = self.len();
        self.resize(at + ram.len(), 0);
        ram.copy_to(&mut self[at..]);
        Ok(())
    }
}

/// Runs of guest memory up to this size are copied into the buffer (one
/// `write` for many small records); larger ones go to the fd directly.
const COPY_MAX: usize = 16 << 10;

/// The source's migration fd with a buffer for small records.
#[derive(Debug)]
pub struct WireOut {
    fd: File,
    buf: Vec<u8>,
    cap: usize,
}

impl WireOut {
    /// `fd` with a buffer of `cap` bytes.
    pub fn new(fd: File, cap: usize) -> Self {
        WireOut {
            fd,
            buf: Vec::with_capacity(cap),
            cap,
        }
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.fd.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for WireOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.flush_buf()?;
        }
        if data.len() >= self.cap {
            return self.fd.write(data);
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.fd.flush()
    }
}

fn io_error(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

impl RamOut for WireOut {
    fn write_guest<B: BitmapSlice>(&mut self, ram: &VolatileSlice<'_, B>) -> io::Result<()> {
        if ram.len() <= COPY_MAX {
            if self.buf.len() + ram.len() > self.cap {
                self.flush_buf()?;
            }
            let at = self.buf.len();
            self.buf.resize(at + ram.len(), 0);
            ram.copy_to(&mut self.buf[at..]);
            return Ok(());
        }
        // The records before it first, then the pages from the mapping.
        self.flush_buf()?;
        self.fd.write_all_volatile(ram).map_err(io_error)
    }
}

/// The send buffer asked for on a socket: a few runs in flight, so the
/// source does not wake for every 200 KiB the target reads (the kernel
/// caps it at `net.core.wmem_max`).
const SEND_BUFFER: libc::c_int = 4 << 20;

/// Asks for a large send buffer when `fd` is a socket (others refuse it,
/// harmlessly).
pub fn large_send_buffer(fd: &impl AsRawFd) {
    // SAFETY: a plain setsockopt on an fd the caller borrows to us, with a
    // pointer to a c_int that outlives the call and its exact size.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&SEND_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn small_records_and_guest_runs_arrive_in_order() {
        let ram = File::from(
            nix::sys::memfd::memfd_create(c"ram", nix::sys::memfd::MFdFlags::empty()).unwrap(),
        );
        ram.set_len(1 << 20).unwrap();
        let mem = crate::memory::map_guest_memory(ram, 1 << 20).unwrap();
        for (i, b) in (0u8..64).enumerate() {
            mem.write_slice(&[b; 4096], GuestAddress(i as u64 * 4096))
                .unwrap();
        }
        let (a, mut b) = UnixStream::pair().unwrap();
        large_send_buffer(&a);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        let mut w = WireOut::new(File::from(std::os::fd::OwnedFd::from(a)), 4096);
        w.write_all(b"head").unwrap();
        // A small run (copied), a large one (from the mapping), a record
        // larger than the buffer.
        w.write_guest(&mem.get_slice(GuestAddress(0), 2 * 4096).unwrap())
            .unwrap();
        w.write_all(b"mid").unwrap();
        w.write_guest(&mem.get_slice(GuestAddress(2 * 4096), 40 * 4096).unwrap())
            .unwrap();
        w.write_all(&[0xee; 5000]).unwrap();
        w.write_all(b"tail").unwrap();
        w.flush().unwrap();
        drop(w);
        let got = reader.join().unwrap();
        let mut want = b"head".to_vec();
        for i in 0u8..2 {
            want.extend([i; 4096]);
        }
        want.extend(b"mid");
        for i in 2u8..42 {
            want.extend([i; 4096]);
        }
        want.extend([0xee; 5000]);
        want.extend(b"tail");
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }
}
