//! One RAM page in and out of the stream: [`encode_page`] picks the record
//! for a page the source sends, [`decode_page`] applies a page record on
//! the target. (XBZRLE deltas plug in here: one arm each.)

use std::io::Write;

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

/// Writes the page at `gpa` (its bytes in `page`) as the record that
/// suits it.
pub fn encode_page<W: Write>(
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

/// Applies a page record to guest RAM; `page` is the reader's buffer
/// holding the record's bytes, and scratch for a zero page.
pub fn decode_page(
    mem: &GuestMemoryMmap,
    record: &Record,
    page: &mut [u8],
) -> Result<PageSent, RamError> {
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
}
