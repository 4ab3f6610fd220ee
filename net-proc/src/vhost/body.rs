//! A frame's bytes where they lie: in a buffer (read from a TAP) or in a
//! guest's memory (the segments of a tx chain after its vnet header).
//! The switch reads the first bytes to classify a frame
//! ([`Body::gather`]) and an rx ring copies the body straight from where
//! it lies into its own guest's buffers ([`Body::chunks`]): guest A's
//! chain to guest B's chain in one copy, no buffer between.
//!
//! Every guest segment here was checked by [`super::ring::Ring::pop`] and
//! lies inside one memory region, so one region lookup gives its host
//! mapping ([`host`]): no per-byte iterator of `vm-memory`'s generic
//! accessors on the forwarding path.

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::memory::Mem;
use super::ring::Seg;

/// The bytes of one frame (without its vnet header).
#[derive(Clone, Copy)]
pub enum Body<'a> {
    /// Contiguous bytes.
    Bytes(&'a [u8]),
    /// Guest segments: `len` bytes from byte `skip` of `segs` on.
    Guest {
        /// The guest's memory.
        mem: &'a Mem,
        /// The chain's checked segments.
        segs: &'a [Seg],
        /// Bytes of the segments before the frame (its vnet header).
        skip: usize,
        /// The frame's length.
        len: usize,
    },
}

/// A piece of a [`Body`].
pub enum Chunk<'a> {
    /// Bytes in net-proc's memory.
    Bytes(&'a [u8]),
    /// Bytes in a guest's memory.
    Guest(VolatileSlice<'a>),
}

impl Chunk<'_> {
    /// Its length.
    pub fn len(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.len(),
            Chunk::Guest(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `at..at + n` of this chunk (within it).
    fn part(&self, at: usize, n: usize) -> Option<Chunk<'_>> {
        match self {
            Chunk::Bytes(b) => b.get(at..at + n).map(Chunk::Bytes),
            Chunk::Guest(v) => v.subslice(at, n).ok().map(Chunk::Guest),
        }
    }

    /// Copies the chunk into the guest slice `to` (same length).
    fn copy_into(&self, to: &VolatileSlice<'_>) {
        match self {
            Chunk::Bytes(b) => to.copy_from(b),
            Chunk::Guest(v) => v.copy_to_volatile_slice(*to),
        }
    }
}

/// The host mapping of checked segment `s` of `mem` (None: the memory
/// table no longer holds it).
pub fn host(mem: &Mem, s: Seg) -> Option<VolatileSlice<'_>> {
    mem.get_slice(GuestAddress(s.addr), s.len).ok()
}

impl Body<'_> {
    /// The frame's length.
    pub fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::Guest { len, .. } => *len,
        }
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each piece of the frame in order; false when a
    /// guest segment could not be mapped (nothing more is passed).
    pub fn chunks(&self, mut f: impl FnMut(Chunk<'_>)) -> bool {
        match *self {
            Body::Bytes(b) => {
                f(Chunk::Bytes(b));
                true
            }
            Body::Guest {
                mem,
                segs,
                skip,
                len,
            } => {
                let (mut skip, mut left) = (skip, len);
                for &s in segs {
                    if left == 0 {
                        break;
                    }
                    if skip >= s.len {
                        skip -= s.len;
                        continue;
                    }
                    let n = (s.len - skip).min(left);
                    let Some(v) = host(mem, s).and_then(|v| v.subslice(skip, n).ok()) else {
                        return false;
                    };
                    f(Chunk::Guest(v));
                    skip = 0;
                    left -= n;
                }
                true
            }
        }
    }

    /// Copies the frame's first `out.len()` bytes (all of it if shorter)
    /// into `out`; returns how many (0 when a segment could not be
    /// mapped).
    pub fn gather(&self, out: &mut [u8]) -> usize {
        let mut at = 0usize;
        let ok = self.chunks(|c| {
            let n = c.len().min(out.len() - at);
            if n == 0 {
                return;
            }
            match c {
                Chunk::Bytes(b) => out[at..at + n].copy_from_slice(&b[..n]),
                Chunk::Guest(v) => {
                    if let Ok(v) = v.subslice(0, n) {
                        v.copy_to(&mut out[at..at + n]);
                    }
                }
            }
            at += n;
        });
        if ok {
            at
        } else {
            0
        }
    }
}

/// Writes pieces one after another into checked guest segments.
pub struct Writer<'a> {
    mem: &'a Mem,
    segs: &'a [Seg],
    /// Segment being written, and bytes of it already written.
    at: (usize, usize),
    /// A segment could not be mapped or the segments are full.
    pub failed: bool,
    /// Called with each (guest address, length) written (dirty logging).
    log: &'a dyn Fn(u64, u64),
}

impl<'a> Writer<'a> {
    /// A writer at the start of `segs` in `mem`.
    pub fn new(mem: &'a Mem, segs: &'a [Seg], log: &'a dyn Fn(u64, u64)) -> Writer<'a> {
        Writer {
            mem,
            segs,
            at: (0, 0),
            failed: false,
            log,
        }
    }

    /// Appends `c`.
    pub fn put(&mut self, c: &Chunk<'_>) {
        let mut from = 0usize;
        while from < c.len() && !self.failed {
            let (i, off) = self.at;
            let Some(&s) = self.segs.get(i) else {
                self.failed = true;
                return;
            };
            let n = (s.len - off).min(c.len() - from);
            let to = host(self.mem, s).and_then(|v| v.subslice(off, n).ok());
            match (to, c.part(from, n)) {
                (Some(to), Some(piece)) => {
                    piece.copy_into(&to);
                    (self.log)(s.addr + off as u64, n as u64);
                }
                _ => {
                    self.failed = true;
                    return;
                }
            }
            from += n;
            self.at = if off + n == s.len {
                (i + 1, 0)
            } else {
                (i, off + n)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x4000), 0x4000)])
            .unwrap()
    }

    #[test]
    fn a_guest_body_skips_its_header_and_spans_segments() {
        let m = mem();
        m.write_slice(b"HHHHabc", GuestAddress(0x100)).unwrap();
        m.write_slice(b"defg", GuestAddress(0x5000)).unwrap();
        let segs = [
            Seg {
                addr: 0x100,
                len: 7,
            },
            Seg {
                addr: 0x5000,
                len: 4,
            },
        ];
        let b = Body::Guest {
            mem: &m,
            segs: &segs,
            skip: 4,
            len: 6,
        };
        let mut out = [0u8; 16];
        assert_eq!(b.gather(&mut out), 6);
        assert_eq!(&out[..6], b"abcdef");
        let mut short = [0u8; 2];
        assert_eq!(b.gather(&mut short), 2);
        assert_eq!(&short, b"ab");
    }

    #[test]
    fn a_writer_fills_segments_in_order_logs_each_piece_and_fails_when_full() {
        let m = mem();
        let segs = [
            Seg {
                addr: 0x200,
                len: 3,
            },
            Seg {
                addr: 0x6000,
                len: 5,
            },
        ];
        let logged = std::cell::RefCell::new(Vec::new());
        let log = |a, n| logged.borrow_mut().push((a, n));
        let mut w = Writer::new(&m, &segs, &log);
        w.put(&Chunk::Bytes(b"12"));
        w.put(&Chunk::Bytes(b"3456"));
        assert!(!w.failed);
        let mut got = [0u8; 8];
        m.read_slice(&mut got[..3], GuestAddress(0x200)).unwrap();
        m.read_slice(&mut got[3..], GuestAddress(0x6000)).unwrap();
        assert_eq!(&got[..6], b"123456");
        assert_eq!(*logged.borrow(), vec![(0x200, 2), (0x202, 1), (0x6000, 3)]);
        w.put(&Chunk::Bytes(b"789"));
        assert!(w.failed);
    }

    #[test]
    fn a_segment_the_memory_no_longer_holds_stops_the_body() {
        let m = mem();
        let segs = [Seg {
            addr: 0x9000,
            len: 8,
        }];
        let b = Body::Guest {
            mem: &m,
            segs: &segs,
            skip: 0,
            len: 8,
        };
        assert_eq!(b.gather(&mut [0u8; 8]), 0);
    }
}
