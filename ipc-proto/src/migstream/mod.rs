//! The live-migration stream (`docs/migration-stream.md`): a header that
//! describes the guest RAM layout, then RAM page records, pass markers,
//! the end of RAM, the device state (a VM-state file, [`crate::vmstate`])
//! and the end of the stream. vcpu-proc writes it on the source and reads
//! it on the target; it lives here, as pure code over `Read`/`Write`, so
//! the fuzz crate can reach it without KVM.
//!
//! A stream is untrusted input: [`StreamReader`] checks every length and
//! address before it uses one, never allocates more than the bytes that
//! actually arrived (plus one chunk), and enforces the record order.
//!
//! Runs of pages go as one record each ([`Record::Pages`],
//! [`Record::ZeroPages`]): the source writes a run's bytes straight from
//! guest RAM ([`StreamWriter::pages_with`]) and the target reads them
//! straight into it ([`StreamReader::read_pages_with`]), without a copy.

use std::io::{Read, Write};

/// The first bytes of every stream.
pub const MAGIC: [u8; 8] = *b"BHMIGSTR";
/// The stream format version this build writes and reads.
pub const VERSION: u32 = 2;
/// Header flag: the source waits for [`ACK`] once the target loaded the
/// device state (set when the stream is a socket, which has a way back).
pub const FLAG_ACK: u32 = 1;
/// The byte the target sends back once RAM and device state are loaded.
pub const ACK: u8 = 0x06;
/// The most RAM regions a header may list.
pub const MAX_REGIONS: u32 = 16;
/// The largest device state a reader accepts (bytes).
pub const MAX_DEVICE_STATE: u64 = 64 << 20;
/// Page sizes a header may declare.
pub const PAGE_SIZES: [u32; 1] = [4096];
/// The most pages one page or zero-page record holds (1 MiB of 4 KiB
/// pages).
pub const MAX_RUN: u32 = 256;

const KIND_ZERO_PAGES: u8 = 1;
const KIND_PAGES: u8 = 2;
const KIND_XBZRLE: u8 = 3;
const KIND_PASS: u8 = 4;
const KIND_END_OF_RAM: u8 = 5;
const KIND_DEVICE_STATE: u8 = 6;
const KIND_END: u8 = 7;

/// Bytes the device state is read in (the buffer grows only as data
/// arrives).
const STATE_CHUNK: usize = 64 << 10;

/// Why a stream cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing the fd failed.
    #[error("migration stream I/O failed")]
    Io(#[source] std::io::Error),
    /// The stream ended inside something.
    #[error("the migration stream ended inside {what} (at byte {offset})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Stream offset where it was read.
        offset: u64,
    },
    /// Not a Bulkhead migration stream.
    #[error("not a Bulkhead migration stream (bad magic)")]
    Magic,
    /// Another format version.
    #[error("migration stream format version {0} is not supported (this build reads {VERSION})")]
    Version(u32),
    /// Unknown header flags.
    #[error("unknown migration stream flags {0:#x}")]
    Flags(u32),
    /// A page size this build does not use.
    #[error("migration stream page size {0} is not supported")]
    PageSize(u32),
    /// Zero or too many RAM regions.
    #[error("migration stream lists {0} RAM regions (1..={MAX_REGIONS} allowed)")]
    RegionCount(u32),
    /// A region that is empty, unaligned, wraps or overlaps another.
    #[error("migration stream RAM region {start:#x}+{len:#x} is invalid")]
    BadRegion {
        /// Guest-physical start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// The source's RAM is laid out differently from this VM's.
    #[error("the source's guest RAM ({theirs}) does not match this VM's ({ours})")]
    LayoutMismatch {
        /// The stream's layout.
        theirs: String,
        /// This VM's layout.
        ours: String,
    },
    /// An unknown record kind.
    #[error("unknown migration stream record {kind} at byte {offset}")]
    UnknownRecord {
        /// The kind byte.
        kind: u8,
        /// Stream offset.
        offset: u64,
    },
    /// A record where the stream's order does not allow it.
    #[error(
        "migration stream record '{record}' is out of order at byte {offset} (expected {expected})"
    )]
    OutOfOrder {
        /// The record found.
        record: &'static str,
        /// What may come here.
        expected: &'static str,
        /// Stream offset.
        offset: u64,
    },
    /// A page address that is unaligned, or a run of pages not inside
    /// one region of guest RAM.
    #[error(
        "migration stream pages {gpa:#x}+{pages} are not aligned pages of one guest RAM region (at byte {offset})"
    )]
    PageOutside {
        /// The address.
        gpa: u64,
        /// Pages from there.
        pages: u32,
        /// Stream offset.
        offset: u64,
    },
    /// A run of pages of impossible length.
    #[error("migration stream run of {count} pages (1..={MAX_RUN} allowed) at byte {offset}")]
    RunLength {
        /// The length.
        count: u32,
        /// Stream offset.
        offset: u64,
    },
    /// The bytes of the last page record were not read before the next
    /// record (caller bug).
    #[error("the {0} page bytes of the last record were not read")]
    PagesPending(u64),
    /// No page bytes are due, or not that many (caller bug).
    #[error("{have} page bytes were offered where {want} are due")]
    PagesLength {
        /// Bytes offered.
        have: u64,
        /// Bytes due.
        want: u64,
    },
    /// An XBZRLE delta of impossible length.
    #[error("migration stream XBZRLE delta of {len} bytes (1..=page size allowed)")]
    DeltaLength {
        /// The length.
        len: u32,
    },
    /// A device state larger than any this build writes.
    #[error("migration stream device state of {len} bytes exceeds {MAX_DEVICE_STATE}")]
    StateTooLarge {
        /// The length.
        len: u64,
    },
    /// A page buffer smaller than a page was passed (caller bug).
    #[error("a page buffer of {have} bytes is smaller than the {want}-byte page")]
    Buffer {
        /// Bytes given.
        have: usize,
        /// Bytes needed.
        want: usize,
    },
}

/// Result of stream operations.
pub type Result<T> = std::result::Result<T, StreamError>;

/// One region of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The guest RAM layout a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Page size in bytes.
    pub page_size: u32,
    /// The regions, in guest-physical order.
    pub regions: Vec<Region>,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "page size {}:", self.page_size)?;
        for r in &self.regions {
            write!(f, " {:#x}+{:#x}", r.start, r.len)?;
        }
        Ok(())
    }
}

impl Layout {
    /// Checks the layout is one a VM can have: a known page size, 1 to
    /// [`MAX_REGIONS`] page-aligned, non-empty regions in ascending order
    /// that neither wrap nor overlap.
    pub fn check(&self) -> Result<()> {
        if !PAGE_SIZES.contains(&self.page_size) {
            return Err(StreamError::PageSize(self.page_size));
        }
        let n = u32::try_from(self.regions.len()).unwrap_or(u32::MAX);
        if n == 0 || n > MAX_REGIONS {
            return Err(StreamError::RegionCount(n));
        }
        let ps = u64::from(self.page_size);
        let mut end_of_last = 0u64;
        for (i, r) in self.regions.iter().enumerate() {
            let bad = || StreamError::BadRegion {
                start: r.start,
                len: r.len,
            };
            let end = r.start.checked_add(r.len).ok_or_else(bad)?;
            if r.len == 0
                || !r.start.is_multiple_of(ps)
                || !r.len.is_multiple_of(ps)
                || (i > 0 && r.start < end_of_last)
            {
                return Err(bad());
            }
            end_of_last = end;
        }
        Ok(())
    }

    /// True when `gpa` starts a whole page inside one region.
    pub fn holds_page(&self, gpa: u64) -> bool {
        self.holds_run(gpa, 1)
    }

    /// True when `gpa` starts `pages` whole pages inside one region.
    pub fn holds_run(&self, gpa: u64, pages: u32) -> bool {
        let ps = u64::from(self.page_size);
        let len = u64::from(pages) * ps;
        gpa.is_multiple_of(ps)
            && self
                .regions
                .iter()
                .any(|r| gpa >= r.start && gpa - r.start < r.len && r.len - (gpa - r.start) >= len)
    }

    /// Total bytes of RAM.
    pub fn total(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }
}

/// What a stream's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`FLAG_ACK`] and future flags.
    pub flags: u32,
    /// The source's guest RAM.
    pub layout: Layout,
}

impl Header {
    /// True when the source waits for [`ACK`].
    pub fn wants_ack(&self) -> bool {
        self.flags & FLAG_ACK != 0
    }
}

/// One record after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The `count` pages from `gpa` are all zeros.
    ZeroPages {
        /// Guest-physical address of the first.
        gpa: u64,
        /// Pages (1..=[`MAX_RUN`], inside one region).
        count: u32,
    },
    /// The `count` pages from `gpa`; their bytes follow and must be read
    /// ([`StreamReader::read_pages`] or [`StreamReader::read_pages_with`])
    /// before the next record.
    Pages {
        /// Guest-physical address of the first.
        gpa: u64,
        /// Pages (1..=[`MAX_RUN`], inside one region).
        count: u32,
    },
    /// An XBZRLE delta against the page the target holds at `gpa`; its
    /// `len` bytes are at the start of the reader's page buffer.
    Xbzrle {
        /// Guest-physical address.
        gpa: u64,
        /// Delta length (1..=page size).
        len: usize,
    },
    /// The source began dirty pass `count`.
    Pass {
        /// Pass number.
        count: u64,
    },
    /// No RAM follows.
    EndOfRam,
    /// The VM-state file.
    DeviceState(Vec<u8>),
    /// The stream is complete.
    End,
}

impl Record {
    /// The record's name (for errors of its consumer).
    pub fn name(&self) -> &'static str {
        match self {
            Record::ZeroPages { .. } => "zero pages",
            Record::Pages { .. } => "pages",
            Record::Xbzrle { .. } => "xbzrle page",
            Record::Pass { .. } => "pass",
            Record::EndOfRam => "end of RAM",
            Record::DeviceState(_) => "device state",
            Record::End => "end",
        }
    }
}

/// Where a reader is in the stream's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ram,
    DeviceState,
    End,
    Done,
}

impl Phase {
    fn expected(self) -> &'static str {
        match self {
            Phase::Ram => "RAM records or end of RAM",
            Phase::DeviceState => "the device state",
            Phase::End => "the end of the stream",
            Phase::Done => "nothing (the stream ended)",
        }
    }
}

/// Writes a stream, counting the bytes.
#[derive(Debug)]
pub struct StreamWriter<W> {
    inner: W,
    written: u64,
    page_size: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the header.
    pub fn start(mut inner: W, header: &Header) -> Result<Self> {
        header.layout.check()?;
        let mut h = Vec::with_capacity(24 + 16 * header.layout.regions.len());
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&header.flags.to_le_bytes());
        h.extend_from_slice(&header.layout.page_size.to_le_bytes());
        h.extend_from_slice(&(header.layout.regions.len() as u32).to_le_bytes());
        for r in &header.layout.regions {
            h.extend_from_slice(&r.start.to_le_bytes());
            h.extend_from_slice(&r.len.to_le_bytes());
        }
        inner.write_all(&h).map_err(StreamError::Io)?;
        Ok(StreamWriter {
            inner,
            written: h.len() as u64,
            page_size: u64::from(header.layout.page_size),
        })
    }

    fn put(&mut self, parts: &[&[u8]]) -> Result<()> {
        for p in parts {
            self.inner.write_all(p).map_err(StreamError::Io)?;
            self.written += p.len() as u64;
        }
        Ok(())
    }

    /// `count` zero pages from `gpa` (1..=[`MAX_RUN`]).
    pub fn zero_pages(&mut self, gpa: u64, count: u32) -> Result<()> {
        run_length(count, self.written)?;
        self.put(&[&[KIND_ZERO_PAGES], &gpa.to_le_bytes(), &count.to_le_bytes()])
    }

    /// Whole pages from `gpa`: `bytes` holds 1..=[`MAX_RUN`] of them.
    pub fn pages(&mut self, gpa: u64, bytes: &[u8]) -> Result<()> {
        let count = self.count_of(bytes.len() as u64)?;
        self.put(&[
            &[KIND_PAGES],
            &gpa.to_le_bytes(),
            &count.to_le_bytes(),
            bytes,
        ])
    }

    /// `count` whole pages from `gpa` (1..=[`MAX_RUN`]), their bytes
    /// written by `payload`, which gets the inner writer and must write
    /// exactly that many (`count` × page size) bytes to it: the source
    /// hands them from guest RAM to the fd without a copy.
    pub fn pages_with<F>(&mut self, gpa: u64, count: u32, payload: F) -> Result<()>
    where
        F: FnOnce(&mut W, usize) -> std::io::Result<()>,
    {
        run_length(count, self.written)?;
        self.put(&[&[KIND_PAGES], &gpa.to_le_bytes(), &count.to_le_bytes()])?;
        let len = u64::from(count) * self.page_size;
        payload(&mut self.inner, len as usize).map_err(StreamError::Io)?;
        self.written += len;
        Ok(())
    }

    /// The page count of `len` bytes of whole pages.
    fn count_of(&self, len: u64) -> Result<u32> {
        let count = u32::try_from(len / self.page_size).unwrap_or(u32::MAX);
        if !len.is_multiple_of(self.page_size) {
            return Err(StreamError::PagesLength {
                have: len,
                want: u64::from(count) * self.page_size,
            });
        }
        run_length(count, self.written)?;
        Ok(count)
    }

    /// An XBZRLE delta (1..=page size bytes).
    pub fn xbzrle(&mut self, gpa: u64, delta: &[u8]) -> Result<()> {
        let len = u32::try_from(delta.len()).unwrap_or(u32::MAX);
        self.put(&[
            &[KIND_XBZRLE],
            &gpa.to_le_bytes(),
            &len.to_le_bytes(),
            delta,
        ])
    }

    /// The start of dirty pass `count`.
    pub fn pass(&mut self, count: u64) -> Result<()> {
        self.put(&[&[KIND_PASS], &count.to_le_bytes()])
    }

    /// The end of RAM.
    pub fn end_of_ram(&mut self) -> Result<()> {
        self.put(&[&[KIND_END_OF_RAM]])
    }

    /// The device state (a VM-state file).
    pub fn device_state(&mut self, state: &[u8]) -> Result<()> {
        self.put(&[
            &[KIND_DEVICE_STATE],
            &(state.len() as u64).to_le_bytes(),
            state,
        ])
    }

    /// The end of the stream, then a flush.
    pub fn end(&mut self) -> Result<()> {
        self.put(&[&[KIND_END]])?;
        self.flush()
    }

    /// Flushes what is buffered.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush().map_err(StreamError::Io)
    }

    /// Bytes written so far, header included.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The writer inside.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Checks a run's page count on the writer's side (the record would
/// start at `offset`).
fn run_length(count: u32, offset: u64) -> Result<()> {
    if count == 0 || count > MAX_RUN {
        return Err(StreamError::RunLength { count, offset });
    }
    Ok(())
}

/// Reads and checks a stream.
#[derive(Debug)]
pub struct StreamReader<R> {
    inner: R,
    header: Header,
    phase: Phase,
    offset: u64,
    /// Bytes of the last [`Record::Pages`] not read yet.
    pending: u64,
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str, offset: u64) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StreamError::Truncated { what, offset },
        _ => StreamError::Io(e),
    })
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the header.
    pub fn open(mut inner: R) -> Result<Self> {
        let mut fixed = [0u8; 24];
        read_exact(&mut inner, &mut fixed, "the header", 0)?;
        if fixed[..8] != MAGIC {
            return Err(StreamError::Magic);
        }
        let word =
            |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        let (version, flags, page_size, count) = (word(8), word(12), word(16), word(20));
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        if flags & !FLAG_ACK != 0 {
            return Err(StreamError::Flags(flags));
        }
        if !PAGE_SIZES.contains(&page_size) {
            return Err(StreamError::PageSize(page_size));
        }
        if count == 0 || count > MAX_REGIONS {
            return Err(StreamError::RegionCount(count));
        }
        let mut offset = 24u64;
        let mut regions = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let mut r = [0u8; 16];
            read_exact(&mut inner, &mut r, "the RAM layout", offset)?;
            offset += 16;
            let (s, l) = r.split_at(8);
            regions.push(Region {
                start: u64::from_le_bytes(s.try_into().unwrap_or_default()),
                len: u64::from_le_bytes(l.try_into().unwrap_or_default()),
            });
        }
        let layout = Layout { page_size, regions };
        layout.check()?;
        Ok(StreamReader {
            inner,
            header: Header { flags, layout },
            phase: Phase::Ram,
            offset,
            pending: 0,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The reader inside (for the acknowledgement on the same socket).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn bytes(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        read_exact(&mut self.inner, buf, what, self.offset)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.bytes(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn gpa(&mut self, at: u64) -> Result<u64> {
        let gpa = self.u64("a page address")?;
        if !self.header.layout.holds_page(gpa) {
            return Err(StreamError::PageOutside {
                gpa,
                pages: 1,
                offset: at,
            });
        }
        Ok(gpa)
    }

    /// A run's address and page count, checked against the layout.
    fn run(&mut self, at: u64) -> Result<(u64, u32)> {
        let gpa = self.u64("a page address")?;
        let mut c = [0u8; 4];
        self.bytes(&mut c, "a page count")?;
        let count = u32::from_le_bytes(c);
        if count == 0 || count > MAX_RUN {
            return Err(StreamError::RunLength { count, offset: at });
        }
        if !self.header.layout.holds_run(gpa, count) {
            return Err(StreamError::PageOutside {
                gpa,
                pages: count,
                offset: at,
            });
        }
        Ok((gpa, count))
    }

    /// Reads the bytes of the last [`Record::Pages`] into `dst`, which
    /// must be exactly their length.
    pub fn read_pages(&mut self, dst: &mut [u8]) -> Result<()> {
        self.read_pages_with(dst.len(), |r, _| r.read_exact(dst))
    }

    /// Reads the `len` bytes of the last [`Record::Pages`] with `read`,
    /// which gets the inner reader and must read exactly `len` bytes from
    /// it (the target reads them straight into guest RAM); `len` must be
    /// their length.
    pub fn read_pages_with<F>(&mut self, len: usize, read: F) -> Result<()>
    where
        F: FnOnce(&mut R, usize) -> std::io::Result<()>,
    {
        let want = self.pending;
        if len as u64 != want || want == 0 {
            return Err(StreamError::PagesLength {
                have: len as u64,
                want,
            });
        }
        let offset = self.offset;
        read(&mut self.inner, len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => StreamError::Truncated {
                what: "the pages",
                offset,
            },
            _ => StreamError::Io(e),
        })?;
        self.offset += want;
        self.pending = 0;
        Ok(())
    }

    /// Reads the next record; an XBZRLE delta goes to the start of
    /// `page`, which must hold a whole page. The bytes of a
    /// [`Record::Pages`] are left for [`Self::read_pages`].
    pub fn next(&mut self, page: &mut [u8]) -> Result<Record> {
        let ps = self.header.layout.page_size as usize;
        if page.len() < ps {
            return Err(StreamError::Buffer {
                have: page.len(),
                want: ps,
            });
        }
        if self.pending != 0 {
            return Err(StreamError::PagesPending(self.pending));
        }
        let at = self.offset;
        let mut kind = [0u8; 1];
        self.bytes(&mut kind, "a record kind")?;
        let phase = self.phase;
        let order = |record: &'static str| StreamError::OutOfOrder {
            record,
            expected: phase.expected(),
            offset: at,
        };
        let record = match kind[0] {
            KIND_ZERO_PAGES | KIND_PAGES | KIND_XBZRLE | KIND_PASS if phase != Phase::Ram => {
                return Err(order(match kind[0] {
                    KIND_PASS => "pass",
                    _ => "page",
                }));
            }
            KIND_ZERO_PAGES => {
                let (gpa, count) = self.run(at)?;
                Record::ZeroPages { gpa, count }
            }
            KIND_PAGES => {
                let (gpa, count) = self.run(at)?;
                self.pending = u64::from(count) * ps as u64;
                Record::Pages { gpa, count }
            }
            KIND_XBZRLE => {
                let gpa = self.gpa(at)?;
                let mut l = [0u8; 4];
                self.bytes(&mut l, "an XBZRLE length")?;
                let len = u32::from_le_bytes(l);
                if len == 0 || len as usize > ps {
                    return Err(StreamError::DeltaLength { len });
                }
                self.bytes(&mut page[..len as usize], "an XBZRLE delta")?;
                Record::Xbzrle {
                    gpa,
                    len: len as usize,
                }
            }
            KIND_PASS => Record::Pass {
                count: self.u64("a pass number")?,
            },
            KIND_END_OF_RAM if phase == Phase::Ram => {
                self.phase = Phase::DeviceState;
                Record::EndOfRam
            }
            KIND_END_OF_RAM => return Err(order("end of RAM")),
            KIND_DEVICE_STATE if phase == Phase::DeviceState => {
                let len = self.u64("a device state length")?;
                if len > MAX_DEVICE_STATE {
                    return Err(StreamError::StateTooLarge { len });
                }
                let state = self.blob(len)?;
                self.phase = Phase::End;
                Record::DeviceState(state)
            }
            KIND_DEVICE_STATE => return Err(order("device state")),
            KIND_END if phase == Phase::End => {
                self.phase = Phase::Done;
                Record::End
            }
            KIND_END => return Err(order("end")),
            kind => return Err(StreamError::UnknownRecord { kind, offset: at }),
        };
        Ok(record)
    }

    /// Reads `len` bytes, growing the buffer only as they arrive.
    fn blob(&mut self, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(STATE_CHUNK);
            let start = out.len();
            out.resize(start + n, 0);
            self.bytes(&mut out[start..], "the device state")?;
            left -= n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
