//! QEMU's XBZRLE page encoding (`migration/xbzrle.c`), written by hand
//! (no crate implements it): the XOR of the old and the new page cut into
//! alternating runs — a zero run (bytes that did not change, given by its
//! length only) then a non-zero run (bytes that changed, given by its
//! length and the new bytes) — with every length in ULEB128 of one or two
//! bytes. A zero run that ends the page is not written.
//!
//! ```text
//! delta  = zrun nzrun [delta]
//! zrun   = length                 (0 only as the very first run)
//! nzrun  = length byte{length}    (length >= 1)
//! length = ULEB128, 1 or 2 bytes  (< 2^14)
//! ```
//!
//! The encoder gives the bytes QEMU's gives, including where it gives up
//! (`Overflow`: the delta would not fit in `limit` bytes, the page is sent
//! whole). The decoder takes the delta as untrusted input: every length is
//! checked against the delta and the page, and the page is written only
//! once the whole delta has been checked, so a bad delta is an error and
//! leaves the page as it was.

use super::XbzrleError;

/// Largest run length the two-byte ULEB128 of the format holds.
pub const MAX_RUN: usize = 0x3fff;

/// What [`encode`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// The pages are equal: nothing to send.
    Unchanged,
    /// `out` holds a delta of this many bytes.
    Encoded(usize),
    /// The delta would be longer than the limit: send the page whole.
    Overflow,
}

/// Appends `n` (at most [`MAX_RUN`]) as ULEB128 to `out`.
fn put_length(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        out.push((n & 0x7f) as u8 | 0x80);
        out.push((n >> 7) as u8);
    }
}

/// Reads a one- or two-byte ULEB128 length at the start of `bytes`, as
/// QEMU's `uleb128_decode_small`: (value, bytes used), or None when it
/// is cut short or longer than two bytes.
fn get_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let first = *bytes.first()?;
    if first & 0x80 == 0 {
        return Some((usize::from(first), 1));
    }
    let second = *bytes.get(1)?;
    if second & 0x80 != 0 {
        return None;
    }
    Some((usize::from(first & 0x7f) | usize::from(second) << 7, 2))
}

/// Length of the run of positions from `from` where `old` and `new` are
/// equal (`same`) or differ (`!same`). Equal runs, the long ones, are
/// compared eight bytes at a time first.
fn run(old: &[u8], new: &[u8], from: usize, same: bool) -> usize {
    let (a, b) = (&old[from..], &new[from..]);
    let mut n = 0;
    if same {
        n = a
            .chunks_exact(8)
            .zip(b.chunks_exact(8))
            .take_while(|(x, y)| x == y)
            .count()
            * 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| (x == y) == same)
        .count()
}

/// Encodes `new` against `old` into `out` (cleared first) as QEMU's
/// `xbzrle_encode_buffer(old, new, len, out, limit)` does. Pages of
/// different lengths, or longer than [`MAX_RUN`] (the format cannot
/// describe their runs), give `Overflow`.
pub fn encode(old: &[u8], new: &[u8], limit: usize, out: &mut Vec<u8>) -> Delta {
    out.clear();
    let len = new.len();
    if old.len() != len || len > MAX_RUN {
        return Delta::Overflow;
    }
    let mut i = 0;
    while i < len {
        if out.len() + 2 > limit {
            return Delta::Overflow;
        }
        let zrun = run(old, new, i, true);
        if zrun == len {
            return Delta::Unchanged;
        }
        i += zrun;
        if i == len {
            // The trailing zero run is left out.
            return Delta::Encoded(out.len());
        }
        put_length(out, zrun);
        if out.len() + 2 > limit {
            return Delta::Overflow;
        }
        let nzrun = run(old, new, i, false);
        put_length(out, nzrun);
        if out.len() + nzrun > limit {
            return Delta::Overflow;
        }
        out.extend_from_slice(&new[i..i + nzrun]);
        i += nzrun;
    }
    Delta::Encoded(out.len())
}

/// Walks the runs of `delta` for a page of `page_len` bytes, calling
/// `write(offset, bytes)` for each non-zero run, after checking it lies
/// inside the delta and the page. Returns the bytes of page the delta
/// covers (up to the end of its last non-zero run).
fn walk(
    delta: &[u8],
    page_len: usize,
    mut write: impl FnMut(usize, &[u8]),
) -> Result<usize, XbzrleError> {
    if delta.is_empty() {
        return Err(XbzrleError::EmptyDelta);
    }
    if delta.len() > page_len {
        return Err(XbzrleError::DeltaTooLong {
            len: delta.len(),
            page: page_len,
        });
    }
    let (mut i, mut d) = (0usize, 0usize);
    while i < delta.len() {
        // A zero run is followed by a non-zero run's length: 2 bytes at least.
        if delta.len() - i < 2 {
            return Err(XbzrleError::Truncated { at: i });
        }
        let (zrun, used) = get_length(&delta[i..]).ok_or(XbzrleError::BadLength { at: i })?;
        if i != 0 && zrun == 0 {
            return Err(XbzrleError::EmptyRun { at: i });
        }
        i += used;
        d += zrun;
        if d > page_len {
            return Err(XbzrleError::OutsidePage { at: i, end: d });
        }
        // A non-zero run has a length and one byte at least.
        if delta.len() - i < 2 {
            return Err(XbzrleError::Truncated { at: i });
        }
        let (nzrun, used) = get_length(&delta[i..]).ok_or(XbzrleError::BadLength { at: i })?;
        if nzrun == 0 {
            return Err(XbzrleError::EmptyRun { at: i });
        }
        i += used;
        if d + nzrun > page_len {
            return Err(XbzrleError::OutsidePage {
                at: i,
                end: d + nzrun,
            });
        }
        if i + nzrun > delta.len() {
            return Err(XbzrleError::Truncated { at: i });
        }
        write(d, &delta[i..i + nzrun]);
        d += nzrun;
        i += nzrun;
    }
    Ok(d)
}

/// Checks `delta` (received from the stream) against a page of
/// `page_len` bytes without applying it.
pub fn check(delta: &[u8], page_len: usize) -> Result<(), XbzrleError> {
    walk(delta, page_len, |_, _| {}).map(|_| ())
}

/// Applies `delta` to `page` (the target's copy of the page the sender
/// encoded against). The delta is checked whole first: on error `page`
/// is unchanged. QEMU accepts an empty delta as "no change"; bulkhead's
/// encoder never sends one, so it is refused here.
pub fn decode(delta: &[u8], page: &mut [u8]) -> Result<(), XbzrleError> {
    check(delta, page.len())?;
    walk(delta, page.len(), |at, bytes| {
        page[at..at + bytes.len()].copy_from_slice(bytes)
    })
    .map(|_| ())
}

#[cfg(test)]
#[path = "codec_tests.rs"]
pub(super) mod tests;
