//! Guest pages in and out of the stream. [`PageEncoder::encode_run`]
//! sends a run of dirty pages on the source: zero pages as zero-page
//! records, the others as page records whose bytes go from the guest RAM
//! mapping to the fd ([`super::wire`]). [`PageDecoder`] applies them on
//! the target, writing guest RAM through its memfd (`pwrite`, so a page
//! lands in the page cache without a page fault on the mapping; a zero
//! page already zero is not written, so a hole stays a hole). With the
//! `xbzrle` capability every page goes through an [`XbzrleEncoder`]
//! (`super::xbzrle`), and a page sent before may go as a delta against
//! it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use ipc_proto::migration::{MigrationParams, XbzrleStats};
use ipc_proto::migstream::{StreamError, StreamReader, StreamWriter, MAX_RUN};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileMemory,
    VolatileSlice,
};

use super::wire::RamOut;
use super::xbzrle::{self, Encoded, XbzrleEncoder, XbzrleError};
use crate::memory::GuestMemoryMmap;

/// Bytes of a page.
const PAGE: usize = 4096;

/// Why a page could not be sent or applied.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// Guest memory refused the access (the reader checked the address
    /// against the layout, so this means the layouts differ).
    #[error("cannot access guest page {gpa:#x}")]
    Memory {
        /// The page.
        gpa: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Reading or writing guest RAM through its file failed.
    #[error("cannot access guest pages {gpa:#x}+{pages} through the RAM file")]
    File {
        /// The first page.
        gpa: u64,
        /// Pages from there.
        pages: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An XBZRLE delta that does not fit the page (the page is left as
    /// it was).
    #[error("bad XBZRLE delta for page {gpa:#x}")]
    Xbzrle {
        /// The page.
        gpa: u64,
        /// What is wrong with it.
        #[source]
        source: XbzrleError,
    },
    /// The XBZRLE cache could not be made (`xbzrle-cache-size`).
    #[error("cannot set up XBZRLE")]
    XbzrleCache(#[source] XbzrleError),
    /// The stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

fn access(gpa: u64) -> impl Fn(vm_memory::GuestMemoryError) -> RamError {
    move |source| RamError::Memory { gpa, source }
}

/// How a page went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSent {
    /// As a zero-page record.
    Zero,
    /// Whole.
    Whole,
    /// As an XBZRLE delta.
    Delta,
    /// Not at all: the target already holds these bytes (XBZRLE found
    /// the page equal to the one sent last).
    Unchanged,
}

/// Pages of a run by how they went out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSent {
    /// As zero pages.
    pub zero: u64,
    /// Whole.
    pub whole: u64,
    /// As XBZRLE deltas.
    pub delta: u64,
    /// Not at all (XBZRLE found them unchanged).
    pub unchanged: u64,
}

impl RunSent {
    fn add(&mut self, p: PageSent, n: u64) {
        match p {
            PageSent::Zero => self.zero += n,
            PageSent::Whole => self.whole += n,
            PageSent::Delta => self.delta += n,
            PageSent::Unchanged => self.unchanged += n,
        }
    }
}

/// A page of zeros to compare with.
static ZEROS: [u8; PAGE] = [0; PAGE];

/// True when `page` is all zeros (a `memcmp` against a zero page: the
/// C library's vectorised compare, fast even in a debug build).
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// True when guest memory `ram` (a whole number of 8-byte words, as a
/// page is) is all zeros: volatile word reads that stop at the first
/// non-zero word (most pages that are not zero say so in their first
/// bytes).
pub fn is_zero_ram<B: BitmapSlice>(ram: &VolatileSlice<'_, B>) -> bool {
    let Ok(words) = ram.get_array_ref::<u64>(0, ram.len() / 8) else {
        return false;
    };
    (0..words.len()).all(|i| words.load(i) == 0)
}

/// The source's side of pages.
#[derive(Debug)]
pub struct PageEncoder {
    /// The `xbzrle` capability's cache and counters, when it is on.
    xbzrle: Option<XbzrleEncoder>,
    /// XBZRLE's output: a delta, or the page as cached.
    delta: Vec<u8>,
    /// A page copied out of guest RAM for XBZRLE.
    page: Vec<u8>,
    /// The last hole looked up in the RAM file: its fd, where the lookup
    /// started and the next data from there. A run between the two is in
    /// the hole, without a syscall. Forgotten at each pass and at the
    /// last stage (holes may have been filled since).
    hole: Option<(RawFd, u64, u64)>,
}

impl PageEncoder {
    /// An encoder for a migration with `params` of a guest with
    /// `ram_size` bytes of RAM.
    pub fn new(params: &MigrationParams, ram_size: u64) -> Result<Self, RamError> {
        let xbzrle = if params.xbzrle {
            Some(
                XbzrleEncoder::new(params.xbzrle_cache_size, ram_size)
                    .map_err(RamError::XbzrleCache)?,
            )
        } else {
            None
        };
        Ok(PageEncoder {
            xbzrle,
            delta: Vec::new(),
            page: vec![0; PAGE],
            hole: None,
        })
    }

    /// Pass `n` begins (XBZRLE's cache generation; holes may have been
    /// filled since the last).
    pub fn begin_pass(&mut self, n: u64) {
        self.hole = None;
        if let Some(x) = self.xbzrle.as_mut() {
            x.begin_pass(n);
        }
    }

    /// The guest is stopped: the last pages go out, the cache is no
    /// longer updated.
    pub fn last_stage(&mut self) {
        self.hole = None;
        if let Some(x) = self.xbzrle.as_mut() {
            x.last_stage();
        }
    }

    /// `xbzrle-cache-size` is now `size` (a new, empty cache if it
    /// changed, as QEMU's `xbzrle_cache_resize`).
    pub fn resize(&mut self, size: u64) -> Result<(), RamError> {
        match self.xbzrle.as_mut() {
            Some(x) => x.resize(size).map_err(RamError::XbzrleCache),
            None => Ok(()),
        }
    }

    /// `query-migrate`'s `xbzrle-cache`, when the capability is on.
    pub fn xbzrle_stats(&self) -> Option<XbzrleStats> {
        self.xbzrle.as_ref().map(XbzrleEncoder::stats)
    }

    /// Pages of a hole in `file` at `off`, up to `count`.
    fn hole_pages(&mut self, file: &File, off: u64, count: u32) -> u32 {
        let fd = file.as_raw_fd();
        let data = match self.hole {
            Some((f, from, d)) if f == fd && (from..=d).contains(&off) => d,
            _ => {
                let d = next_data(file, off);
                self.hole = Some((fd, off, d));
                d
            }
        };
        u32::try_from((data - off) / PAGE as u64)
            .unwrap_or(u32::MAX)
            .min(count)
    }

    /// Sends the `count` pages (1..=[`MAX_RUN`], inside one RAM region)
    /// from `gpa`: runs of zero pages as one zero-page record, runs of the
    /// others as one page record, their bytes straight from guest RAM.
    /// With XBZRLE each page goes through the cache instead.
    pub fn encode_run<W: RamOut>(
        &mut self,
        w: &mut StreamWriter<W>,
        mem: &GuestMemoryMmap,
        gpa: u64,
        count: u32,
    ) -> Result<RunSent, RamError> {
        let run = mem
            .get_slice(GuestAddress(gpa), count as usize * PAGE)
            .map_err(access(gpa))?;
        let page = |i: u32| {
            run.subslice(i as usize * PAGE, PAGE)
                .map_err(|e| access(gpa)(e.into()))
        };
        let mut sent = RunSent::default();
        if self.xbzrle.is_some() {
            for i in 0..count {
                page(i)?.copy_to(&mut self.page[..]);
                let bytes = std::mem::take(&mut self.page);
                let r = self.encode(w, gpa + u64::from(i) * PAGE as u64, &bytes);
                self.page = bytes;
                sent.add(r?, 1);
            }
            return Ok(sent);
        }
        // A hole at the start of the run (never written): zero, and not
        // read, which would fill it.
        let mut i = match file_of(mem, gpa, u64::from(count) * PAGE as u64) {
            Some((f, off)) => self.hole_pages(f, off, count),
            None => 0,
        };
        if i > 0 {
            w.zero_pages(gpa, i)?;
            sent.add(PageSent::Zero, u64::from(i));
        }
        while i < count {
            let zero = is_zero_ram(&page(i)?);
            let mut j = i + 1;
            while j < count && is_zero_ram(&page(j)?) == zero {
                j += 1;
            }
            let at = gpa + u64::from(i) * PAGE as u64;
            let n = j - i;
            if zero {
                w.zero_pages(at, n)?;
                sent.add(PageSent::Zero, u64::from(n));
            } else {
                let bytes = run
                    .subslice(i as usize * PAGE, n as usize * PAGE)
                    .map_err(|e| access(at)(e.into()))?;
                w.pages_with(at, n, |out, _| out.write_guest(&bytes))?;
                sent.add(PageSent::Whole, u64::from(n));
            }
            i = j;
        }
        Ok(sent)
    }

    /// Writes the page at `gpa` (its bytes in `page`, read once) as the
    /// record that suits it. With XBZRLE every page goes through its
    /// cache, so the cache keeps what the target holds.
    pub fn encode<W: Write>(
        &mut self,
        w: &mut StreamWriter<W>,
        gpa: u64,
        page: &[u8],
    ) -> Result<PageSent, StreamError> {
        if is_zero(page) {
            w.zero_pages(gpa, 1)?;
            if let Some(x) = self.xbzrle.as_mut() {
                x.zero_page(gpa);
            }
            return Ok(PageSent::Zero);
        }
        let Some(x) = self.xbzrle.as_mut() else {
            w.pages(gpa, page)?;
            return Ok(PageSent::Whole);
        };
        match x.encode(gpa, page, &mut self.delta) {
            Encoded::Unchanged => Ok(PageSent::Unchanged),
            Encoded::Delta => {
                let before = w.written();
                w.xbzrle(gpa, &self.delta)?;
                // The record's header (the delta itself is counted already).
                x.add_bytes((w.written() - before).saturating_sub(self.delta.len() as u64));
                Ok(PageSent::Delta)
            }
            // The copy the cache took, not a second read of guest RAM.
            Encoded::Whole(_) => {
                w.pages(gpa, &self.delta)?;
                Ok(PageSent::Whole)
            }
        }
    }
}

/// The offset of the first data in `file` at or after `off`
/// (`lseek(SEEK_DATA)`, which skips a hole quickly); `u64::MAX` when
/// there is none, `off` when the file cannot tell.
fn next_data(file: &File, off: u64) -> u64 {
    let Ok(start) = i64::try_from(off) else {
        return off;
    };
    match nix::unistd::lseek(file, start, nix::unistd::Whence::SeekData) {
        Ok(d) => u64::try_from(d).unwrap_or(off).max(off),
        Err(nix::errno::Errno::ENXIO) => u64::MAX,
        Err(_) => off,
    }
}

/// Where guest RAM from `gpa` for `len` bytes lies in its file: the file
/// and the offset, when the region is file-backed and holds all of it.
fn file_of(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<(&File, u64)> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let off = gpa.checked_sub(region.start_addr().raw_value())?;
    if off.checked_add(len)? > region.len() {
        return None;
    }
    let fo = region.file_offset()?;
    Some((fo.file(), fo.start().checked_add(off)?))
}

/// The target's side of pages.
#[derive(Debug)]
pub struct PageDecoder {
    /// A run's bytes between the stream and guest RAM.
    buf: Vec<u8>,
    /// False once the RAM file refused a `pwrite` (hugetlbfs has none):
    /// pages go through the mapping from then on.
    via_file: bool,
}

impl Default for PageDecoder {
    fn default() -> Self {
        PageDecoder {
            buf: vec![0; MAX_RUN as usize * PAGE],
            via_file: true,
        }
    }
}

/// The first `len` bytes of the decoder's run buffer (a run longer than
/// [`MAX_RUN`] pages is the reader's error, checked here again).
fn run_buffer(buf: &mut [u8], len: usize) -> Result<&mut [u8], RamError> {
    buf.get_mut(..len)
        .ok_or(RamError::Stream(StreamError::Buffer {
            have: MAX_RUN as usize * PAGE,
            want: len,
        }))
}

impl PageDecoder {
    /// Reads the bytes of the page record just read (`count` pages from
    /// `gpa`, checked against the layout by the reader) into guest RAM.
    pub fn pages<R: Read>(
        &mut self,
        mem: &GuestMemoryMmap,
        r: &mut StreamReader<R>,
        gpa: u64,
        count: u32,
    ) -> Result<(), RamError> {
        let len = count as usize * PAGE;
        let buf = run_buffer(&mut self.buf, len)?;
        r.read_pages(buf)?;
        if let Some((file, off)) = file_of(mem, gpa, len as u64).filter(|_| self.via_file) {
            match file.write_all_at(buf, off) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => self.via_file = false,
                Err(source) => {
                    return Err(RamError::File {
                        gpa,
                        pages: count,
                        source,
                    })
                }
            }
        }
        mem.write_slice(buf, GuestAddress(gpa)).map_err(access(gpa))
    }

    /// Makes the `count` pages from `gpa` zero; pages already zero are
    /// not written.
    pub fn zero_pages(
        &mut self,
        mem: &GuestMemoryMmap,
        gpa: u64,
        count: u32,
    ) -> Result<(), RamError> {
        let len = count as usize * PAGE;
        let buf = run_buffer(&mut self.buf, len)?;
        let Some((file, off)) = file_of(mem, gpa, len as u64).filter(|_| self.via_file) else {
            return (0..u64::from(count)).try_for_each(|i| zero_page(mem, gpa + i * PAGE as u64));
        };
        let file_err = |source| RamError::File {
            gpa,
            pages: count,
            source,
        };
        // A hole reads as zeros without being filled.
        file.read_exact_at(buf, off).map_err(file_err)?;
        for (i, page) in buf.chunks_mut(PAGE).enumerate() {
            if !is_zero(page) {
                page.fill(0);
                file.write_all_at(page, off + (i * PAGE) as u64)
                    .map_err(file_err)?;
            }
        }
        Ok(())
    }

    /// Applies the XBZRLE `delta` (checked whole before the page is
    /// written) to the page at `gpa`.
    pub fn xbzrle(
        &mut self,
        mem: &GuestMemoryMmap,
        gpa: u64,
        delta: &[u8],
    ) -> Result<(), RamError> {
        let mut target = [0u8; PAGE];
        mem.read_slice(&mut target, GuestAddress(gpa))
            .map_err(access(gpa))?;
        xbzrle::apply(delta, &mut target).map_err(|source| RamError::Xbzrle { gpa, source })?;
        mem.write_slice(&target, GuestAddress(gpa))
            .map_err(access(gpa))
    }
}

/// Zeroes the page at `gpa` through the mapping unless it is zero.
fn zero_page(mem: &GuestMemoryMmap, gpa: u64) -> Result<(), RamError> {
    let page = mem
        .get_slice(GuestAddress(gpa), PAGE)
        .map_err(access(gpa))?;
    if !is_zero_ram(&page) {
        page.copy_from(&ZEROS[..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::migstream::{Header, Layout, Record, Region};

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        let m = mem();
        let ram = m.get_slice(GuestAddress(0x3000), PAGE).unwrap();
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        assert!(is_zero_ram(&ram));
        for i in [0, 7, 8, 2048, 4095] {
            p[i] = 1;
            ram.copy_from(&p[..]);
            assert!(!is_zero(&p), "byte {i}");
            assert!(!is_zero_ram(&ram), "byte {i}");
            p[i] = 0;
        }
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 9]));
    }

    fn mem() -> GuestMemoryMmap {
        let fd = nix::sys::memfd::memfd_create(c"ram", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(1 << 20).unwrap();
        crate::memory::map_guest_memory(f, 1 << 20).unwrap()
    }

    /// Guest memory without a file (pages go through the mapping).
    fn anonymous() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn header() -> Header {
        Header {
            flags: 0,
            layout: Layout {
                page_size: 4096,
                regions: vec![Region {
                    start: 0,
                    len: 1 << 20,
                }],
            },
        }
    }

    fn params(xbzrle: bool) -> MigrationParams {
        MigrationParams {
            downtime_limit_ms: 300,
            max_bandwidth: 0,
            xbzrle,
            xbzrle_cache_size: if xbzrle { 1 << 16 } else { 0 },
        }
    }

    /// True when the RAM file of `m` has data at page `n`.
    fn has_data(m: &GuestMemoryMmap, n: u64) -> bool {
        let (f, _) = file_of(m, 0, 1 << 20).unwrap();
        match nix::unistd::lseek(f, (n * PAGE as u64) as i64, nix::unistd::Whence::SeekData) {
            Ok(at) => at as u64 == n * PAGE as u64,
            Err(_) => false,
        }
    }

    /// Reads `stream` into `m`: its records, in order.
    fn apply(stream: &[u8], m: &GuestMemoryMmap) -> Vec<Record> {
        let mut r = StreamReader::open(stream).unwrap();
        let mut d = PageDecoder::default();
        let mut page = vec![0u8; PAGE];
        let mut out = Vec::new();
        while r.offset() < stream.len() as u64 {
            let rec = r.next(&mut page).unwrap();
            match rec {
                Record::ZeroPages { gpa, count } => d.zero_pages(m, gpa, count).unwrap(),
                Record::Pages { gpa, count } => d.pages(m, &mut r, gpa, count).unwrap(),
                Record::Xbzrle { gpa, len } => d.xbzrle(m, gpa, &page[..len]).unwrap(),
                _ => panic!("{rec:?}"),
            }
            out.push(rec);
        }
        out
    }

    #[test]
    fn a_run_goes_out_as_zero_and_page_records_and_arrives_whole() {
        let src = mem();
        // Pages 0 and 1 never written (a hole), 4, 6 and 7 written with
        // zeros, 2, 3 and 5 with data.
        for n in [4u64, 6, 7] {
            src.write_slice(&[0u8; PAGE], GuestAddress(n * PAGE as u64))
                .unwrap();
        }
        for n in [2u64, 3, 5] {
            src.write_slice(&[n as u8; PAGE], GuestAddress(n * PAGE as u64))
                .unwrap();
        }
        let mut e = PageEncoder::new(&params(false), 1 << 20).unwrap();
        let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
        let sent = e.encode_run(&mut w, &src, 0, 8).unwrap();
        assert_eq!(
            sent,
            RunSent {
                zero: 5,
                whole: 3,
                ..Default::default()
            }
        );
        // A run all in the hole past the data.
        let sent = e.encode_run(&mut w, &src, 16 * PAGE as u64, 8).unwrap();
        assert_eq!(sent.zero, 8);
        // The holes were not read (reading them would have filled them).
        assert!(!has_data(&src, 0) && !has_data(&src, 1) && !has_data(&src, 16));
        let stream = std::mem::take(w.get_mut());
        for dst in [mem(), anonymous()] {
            // Junk where zero pages go: cleared.
            dst.write_slice(&[0xffu8; PAGE], GuestAddress(0x7000))
                .unwrap();
            let records = apply(&stream, &dst);
            assert_eq!(
                records,
                vec![
                    Record::ZeroPages { gpa: 0, count: 2 },
                    Record::Pages {
                        gpa: 0x2000,
                        count: 2
                    },
                    Record::ZeroPages {
                        gpa: 0x4000,
                        count: 1
                    },
                    Record::Pages {
                        gpa: 0x5000,
                        count: 1
                    },
                    Record::ZeroPages {
                        gpa: 0x6000,
                        count: 2
                    },
                    Record::ZeroPages {
                        gpa: 0x10000,
                        count: 8
                    },
                ]
            );
            let mut back = vec![0u8; 8 * PAGE];
            dst.read_slice(&mut back, GuestAddress(0)).unwrap();
            let mut want = vec![0u8; 8 * PAGE];
            src.read_slice(&mut want, GuestAddress(0)).unwrap();
            assert!(back == want);
        }
    }

    #[test]
    fn a_hole_filled_since_it_was_looked_up_is_sent_at_the_next_pass_or_last_stage() {
        let src = mem();
        let mut e = PageEncoder::new(&params(false), 1 << 20).unwrap();
        let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
        let zero = |n| RunSent {
            zero: n,
            ..Default::default()
        };
        let whole = |n| RunSent {
            whole: n,
            ..Default::default()
        };
        e.begin_pass(1);
        // All RAM a hole; then the guest writes pages 2 and 40.
        assert_eq!(e.encode_run(&mut w, &src, 0x10000, 4).unwrap(), zero(4));
        src.write_slice(&[1u8; PAGE], GuestAddress(0x2000)).unwrap();
        src.write_slice(&[1u8; PAGE], GuestAddress(0x28000))
            .unwrap();
        // Behind the lookup: looked up again.
        assert_eq!(e.encode_run(&mut w, &src, 0x2000, 1).unwrap(), whole(1));
        e.last_stage();
        assert_eq!(e.encode_run(&mut w, &src, 0x28000, 1).unwrap(), whole(1));
        src.write_slice(&[1u8; PAGE], GuestAddress(0x30000))
            .unwrap();
        e.begin_pass(2);
        assert_eq!(e.encode_run(&mut w, &src, 0x30000, 1).unwrap(), whole(1));
    }

    #[test]
    fn zero_records_leave_holes_as_holes_and_clear_what_is_not_zero() {
        let m = mem();
        m.write_slice(&[5u8; PAGE], GuestAddress(0x3000)).unwrap();
        let mut d = PageDecoder::default();
        d.zero_pages(&m, 0x1000, 4).unwrap();
        // Only the page that held data was written (before reading
        // through the mapping fills the holes).
        assert!(has_data(&m, 3));
        assert!(!has_data(&m, 1) && !has_data(&m, 2) && !has_data(&m, 4));
        let mut back = vec![1u8; 4 * PAGE];
        m.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert!(is_zero(&back));
    }

    #[test]
    fn bad_xbzrle_deltas_and_pages_outside_ram_are_errors() {
        let m = mem();
        m.write_slice(&[7u8; PAGE], GuestAddress(0)).unwrap();
        let mut d = PageDecoder::default();
        // An empty run where the format has none: the page is untouched.
        assert!(matches!(
            d.xbzrle(&m, 0, &[0, 0, 0]),
            Err(RamError::Xbzrle {
                gpa: 0,
                source: XbzrleError::EmptyRun { .. }
            })
        ));
        let mut back = vec![0u8; PAGE];
        m.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert_eq!(back, vec![7u8; PAGE]);
        // Past the end of RAM (a reader checks first; this still fails
        // cleanly).
        for m in [mem(), anonymous()] {
            assert!(matches!(
                d.zero_pages(&m, 1 << 20, 1),
                Err(RamError::Memory { gpa, .. }) if gpa == 1 << 20
            ));
        }
        let mut e = PageEncoder::new(&params(false), 1 << 20).unwrap();
        let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
        assert!(matches!(
            e.encode_run(&mut w, &m, (1 << 20) - PAGE as u64, 2),
            Err(RamError::Memory { .. })
        ));
    }

    #[test]
    fn with_xbzrle_pages_go_one_by_one_through_the_cache() {
        let src = mem();
        src.write_slice(&[3u8; 2 * PAGE], GuestAddress(0)).unwrap();
        let mut e = PageEncoder::new(&params(true), 1 << 20).unwrap();
        let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
        e.begin_pass(1);
        assert_eq!(
            e.encode_run(&mut w, &src, 0, 3).unwrap(),
            RunSent {
                zero: 1,
                whole: 2,
                ..Default::default()
            }
        );
        // Pass 2 fills the cache, pass 3 finds page 0 the same and one
        // byte changed in page 1.
        e.begin_pass(2);
        assert_eq!(
            e.encode_run(&mut w, &src, 0, 2).unwrap(),
            RunSent {
                whole: 2,
                ..Default::default()
            }
        );
        src.write_slice(&[4u8], GuestAddress(PAGE as u64 + 10))
            .unwrap();
        e.begin_pass(3);
        assert_eq!(
            e.encode_run(&mut w, &src, 0, 2).unwrap(),
            RunSent {
                delta: 1,
                unchanged: 1,
                ..Default::default()
            }
        );
        let dst = mem();
        let records = apply(&std::mem::take(w.get_mut()), &dst);
        assert_eq!(records.len(), 3 + 2 + 1);
        assert!(matches!(records[5], Record::Xbzrle { gpa: 0x1000, .. }));
        let (mut a, mut b) = (vec![0u8; 3 * PAGE], vec![1u8; 3 * PAGE]);
        src.read_slice(&mut a, GuestAddress(0)).unwrap();
        dst.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);
        // XBZRLE with a cache smaller than a page is refused.
        assert!(matches!(
            PageEncoder::new(
                &MigrationParams {
                    xbzrle_cache_size: 1,
                    ..params(true)
                },
                1 << 20
            ),
            Err(RamError::XbzrleCache(XbzrleError::CacheTooSmall { .. }))
        ));
    }
}
