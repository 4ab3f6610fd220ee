//! One RAM page in and out of the stream: [`PageEncoder::encode`] picks
//! the record for a page the source sends, [`PageDecoder::decode`] applies
//! a page record on the target. With the `xbzrle` capability the encoder
//! holds an [`XbzrleEncoder`] (`super::xbzrle`) every page goes through,
//! and a page sent before may go as a delta against it.

use std::io::Write;

use ipc_proto::migration::{MigrationParams, XbzrleStats};
use ipc_proto::migstream::{Record, StreamError, StreamWriter};
use vm_memory::{Bytes, GuestAddress};

use super::xbzrle::{self, Encoded, XbzrleEncoder, XbzrleError};
use crate::memory::GuestMemoryMmap;

/// Why a page could not be applied.
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
    /// Not a RAM record (caller bug).
    #[error("record '{0}' is not a RAM page")]
    NotAPage(&'static str),
    /// The XBZRLE cache could not be made (`xbzrle-cache-size`).
    #[error("cannot set up XBZRLE")]
    XbzrleCache(#[source] XbzrleError),
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

/// A page of zeros to compare with.
static ZEROS: [u8; 4096] = [0; 4096];

/// True when `page` is all zeros (a `memcmp` against a zero page: the
/// C library's vectorised compare, fast even in a debug build).
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The source's side of pages.
#[derive(Debug)]
pub struct PageEncoder {
    /// The `xbzrle` capability's cache and counters, when it is on.
    xbzrle: Option<XbzrleEncoder>,
    /// XBZRLE's output: a delta, or the page as cached.
    delta: Vec<u8>,
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
        })
    }

    /// Pass `n` begins (XBZRLE's cache generation).
    pub fn begin_pass(&mut self, n: u64) {
        if let Some(x) = self.xbzrle.as_mut() {
            x.begin_pass(n);
        }
    }

    /// The guest is stopped: the last pages go out, the cache is no
    /// longer updated.
    pub fn last_stage(&mut self) {
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
            w.zero_page(gpa)?;
            if let Some(x) = self.xbzrle.as_mut() {
                x.zero_page(gpa);
            }
            return Ok(PageSent::Zero);
        }
        let Some(x) = self.xbzrle.as_mut() else {
            w.page(gpa, page)?;
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
                w.page(gpa, &self.delta)?;
                Ok(PageSent::Whole)
            }
        }
    }
}

/// The target's side of pages.
#[derive(Debug, Default)]
pub struct PageDecoder {}

impl PageDecoder {
    /// Applies a page record to guest RAM; `page` is the reader's
    /// page-sized buffer holding the record's bytes, and scratch for a
    /// zero page.
    pub fn decode(
        &mut self,
        mem: &GuestMemoryMmap,
        record: &Record,
        page: &mut [u8],
    ) -> Result<PageSent, RamError> {
        decode(mem, record, page)
    }
}

fn decode(mem: &GuestMemoryMmap, record: &Record, page: &mut [u8]) -> Result<PageSent, RamError> {
    let access = |gpa: u64| move |source| RamError::Memory { gpa, source };
    match *record {
        Record::ZeroPage { gpa } => {
            // A page already zero is left alone (not written, so a memfd
            // hole stays a hole).
            mem.read_slice(page, GuestAddress(gpa))
                .map_err(access(gpa))?;
            if !is_zero(page) {
                page.fill(0);
                mem.write_slice(page, GuestAddress(gpa))
                    .map_err(access(gpa))?;
            }
            Ok(PageSent::Zero)
        }
        Record::Page { gpa } => {
            mem.write_slice(page, GuestAddress(gpa))
                .map_err(access(gpa))?;
            Ok(PageSent::Whole)
        }
        Record::Xbzrle { gpa, len } => {
            // The delta is checked whole before the page is written.
            let mut target = [0u8; 4096];
            mem.read_slice(&mut target, GuestAddress(gpa))
                .map_err(access(gpa))?;
            let delta = page.get(..len).ok_or(RamError::Xbzrle {
                gpa,
                source: XbzrleError::DeltaTooLong {
                    len,
                    page: page.len(),
                },
            })?;
            xbzrle::apply(delta, &mut target).map_err(|source| RamError::Xbzrle { gpa, source })?;
            mem.write_slice(&target, GuestAddress(gpa))
                .map_err(access(gpa))?;
            Ok(PageSent::Delta)
        }
        Record::Pass { .. } | Record::EndOfRam | Record::DeviceState(_) | Record::End => {
            Err(RamError::NotAPage(record.name()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero(&p));
        for i in [0, 7, 8, 2048, 4095] {
            p[i] = 1;
            assert!(!is_zero(&p), "byte {i}");
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

    #[test]
    fn a_zero_record_clears_a_page_and_a_page_record_writes_it() {
        let m = mem();
        let mut d = PageDecoder::default();
        m.write_slice(&[5u8; 4096], GuestAddress(0x3000)).unwrap();
        let mut buf = vec![0xaau8; 4096];
        let sent = d
            .decode(&m, &Record::ZeroPage { gpa: 0x3000 }, &mut buf)
            .unwrap();
        assert_eq!(sent, PageSent::Zero);
        let mut back = vec![1u8; 4096];
        m.read_slice(&mut back, GuestAddress(0x3000)).unwrap();
        assert!(is_zero(&back));

        let mut buf = vec![9u8; 4096];
        d.decode(&m, &Record::Page { gpa: 0x5000 }, &mut buf)
            .unwrap();
        m.read_slice(&mut back, GuestAddress(0x5000)).unwrap();
        assert_eq!(back, vec![9u8; 4096]);
    }

    #[test]
    fn non_page_records_and_xbzrle_are_refused_by_the_decoder() {
        let m = mem();
        let mut d = PageDecoder::default();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            d.decode(&m, &Record::Xbzrle { gpa: 0, len: 3 }, &mut buf),
            Err(RamError::Xbzrle {
                gpa: 0,
                source: XbzrleError::EmptyRun { at: 1 }
            })
        ));
        assert!(matches!(
            d.decode(&m, &Record::EndOfRam, &mut buf),
            Err(RamError::NotAPage("end of RAM"))
        ));
        // Past the end of RAM (a reader checks first; this still fails
        // cleanly).
        assert!(matches!(
            d.decode(&m, &Record::Page { gpa: 1 << 20 }, &mut buf),
            Err(RamError::Memory { .. })
        ));
    }

    #[test]
    fn the_encoder_writes_zero_pages_as_zero_records() {
        let p = MigrationParams {
            downtime_limit_ms: 300,
            max_bandwidth: 0,
            xbzrle: false,
            xbzrle_cache_size: 0,
        };
        let mut e = PageEncoder::new(&p, 1 << 20).unwrap();
        let layout = ipc_proto::migstream::Layout {
            page_size: 4096,
            regions: vec![ipc_proto::migstream::Region {
                start: 0,
                len: 1 << 20,
            }],
        };
        let header = ipc_proto::migstream::Header { flags: 0, layout };
        let mut w = StreamWriter::start(Vec::new(), &header).unwrap();
        let start = w.written();
        assert_eq!(e.encode(&mut w, 0, &[0u8; 4096]).unwrap(), PageSent::Zero);
        assert_eq!(w.written() - start, 9);
        let mut page = [0u8; 4096];
        page[4095] = 1;
        assert_eq!(e.encode(&mut w, 0x1000, &page).unwrap(), PageSent::Whole);
        assert_eq!(w.written() - start, 9 + 9 + 4096);
        // XBZRLE with a cache smaller than a page is refused.
        assert!(matches!(
            PageEncoder::new(&MigrationParams { xbzrle: true, ..p }, 1 << 20),
            Err(RamError::XbzrleCache(XbzrleError::CacheTooSmall { .. }))
        ));
    }
}
