//! One RAM page in and out of the stream: [`PageEncoder::encode`] picks
//! the record for a page the source sends, [`PageDecoder::decode`] applies
//! a page record on the target. XBZRLE plugs in here: its page cache is a
//! field of each, its delta one arm of each function.

use std::io::Write;

use ipc_proto::migration::MigrationParams;
use ipc_proto::migstream::{Record, StreamError, StreamWriter};
use vm_memory::{Bytes, GuestAddress};

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
    /// An XBZRLE page, which this build does not decode.
    #[error("the stream holds an XBZRLE page ({gpa:#x}), which this vcpu-proc cannot decode")]
    Xbzrle {
        /// The page.
        gpa: u64,
    },
    /// Not a RAM record (caller bug).
    #[error("record '{0}' is not a RAM page")]
    NotAPage(&'static str),
    /// The `xbzrle` capability, which this build cannot honour.
    #[error("XBZRLE is not available in this vcpu-proc")]
    XbzrleUnavailable,
}

/// How a page went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSent {
    /// As a zero-page record.
    Zero,
    /// Whole.
    Whole,
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
pub struct PageEncoder {}

impl PageEncoder {
    /// An encoder for a migration with `params` (refuses what it cannot
    /// do rather than ignore it).
    pub fn new(params: &MigrationParams) -> Result<Self, RamError> {
        if params.xbzrle {
            return Err(RamError::XbzrleUnavailable);
        }
        Ok(PageEncoder {})
    }

    /// Writes the page at `gpa` (its bytes in `page`) as the record that
    /// suits it.
    pub fn encode<W: Write>(
        &mut self,
        w: &mut StreamWriter<W>,
        gpa: u64,
        page: &[u8],
    ) -> Result<PageSent, StreamError> {
        if is_zero(page) {
            w.zero_page(gpa)?;
            Ok(PageSent::Zero)
        } else {
            w.page(gpa, page)?;
            Ok(PageSent::Whole)
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
        Record::Xbzrle { gpa, .. } => Err(RamError::Xbzrle { gpa }),
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
            Err(RamError::Xbzrle { gpa: 0 })
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
        let mut e = PageEncoder::new(&p).unwrap();
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
        assert!(PageEncoder::new(&MigrationParams { xbzrle: true, ..p }).is_err());
    }
}
