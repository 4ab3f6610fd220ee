//! One dirty bitmap: a granule per bit, in memory the broker owns
//! ([`SharedWords`]), marked lock-free with atomic ORs.
//!
//! A mirror or backup job can use the same type for its own tracking: a
//! [`DirtyBitmap`] over an anonymous memfd, [`DirtyBitmap::mark`] from
//! the write path and [`DirtyBitmap::next_dirty`] plus
//! [`DirtyBitmap::clear_range`] to walk and consume what was written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::shm::SharedWords;

/// Words of bitmap memory for a node of `size` bytes at `granularity`.
pub fn words_for(size: u64, granularity: u32) -> u64 {
    size.div_ceil(u64::from(granularity)).div_ceil(64)
}

/// One dirty bitmap of a node.
pub struct DirtyBitmap {
    /// Bitmap name.
    pub name: String,
    /// Granularity in bytes (a power of two).
    pub granularity: u32,
    /// Node size in bytes when the bitmap was made.
    pub size: u64,
    /// Stored in the image when the node closes.
    pub persistent: bool,
    /// Loaded with the in-use flag set (content lost; only removable).
    pub inconsistent: bool,
    /// Loaded from a read-only image: cannot be cleared, merged into or
    /// removed.
    pub readonly: bool,
    recording: AtomicBool,
    /// Clears so far (bumped after the bits are cleared).
    epoch: AtomicU64,
    /// `epoch + 1` as of which [`DirtyBitmap::fill`] set every bit (and
    /// nothing was cleared since): a repeated fill costs two loads.
    full_at: AtomicU64,
    shift: u32,
    bits: u64,
    mem: SharedWords,
}

impl DirtyBitmap {
    /// A bitmap over `mem` (at least [`words_for`] words).
    pub fn new(
        name: String,
        granularity: u32,
        size: u64,
        persistent: bool,
        recording: bool,
        mem: SharedWords,
    ) -> Self {
        DirtyBitmap {
            name,
            granularity,
            size,
            persistent,
            inconsistent: false,
            readonly: false,
            recording: AtomicBool::new(recording),
            epoch: AtomicU64::new(0),
            full_at: AtomicU64::new(0),
            shift: granularity.trailing_zeros(),
            bits: size.div_ceil(u64::from(granularity)),
            mem,
        }
    }

    fn words(&self) -> &[AtomicU64] {
        self.mem.words()
    }

    /// Whether guest writes are marked.
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// `block-dirty-bitmap-enable` / `-disable`.
    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    /// Number of granules.
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// Marks the granules `[offset, offset + len)` touches, if recording.
    pub fn mark(&self, offset: u64, len: u64) {
        if self.recording() {
            self.set_bytes(offset, len);
        }
    }

    /// Marks the granules `[offset, offset + len)` touches.
    pub fn set_bytes(&self, offset: u64, len: u64) {
        if len == 0 || self.bits == 0 {
            return;
        }
        let first = offset >> self.shift;
        if first >= self.bits {
            return;
        }
        let last = (offset.saturating_add(len - 1) >> self.shift).min(self.bits - 1);
        self.set_bits(first, last);
    }

    /// Sets bits `first..=last`.
    fn set_bits(&self, first: u64, last: u64) {
        let words = self.words();
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        for (w, word) in words.iter().enumerate().take(lw + 1).skip(fw) {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::Relaxed);
            }
        }
    }

    /// Clears bits `first..=last`.
    pub fn clear_range(&self, first: u64, last: u64) {
        let words = self.words();
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        for (w, word) in words.iter().enumerate().take(lw + 1).skip(fw) {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            word.fetch_and(!mask, Ordering::Relaxed);
        }
        // After the bits: a fill racing with this is not taken as full.
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether granule `i` is dirty.
    pub fn get(&self, i: u64) -> bool {
        self.words()
            .get((i / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
    }

    /// The first dirty granule at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let words = self.words();
        let mut w = (from / 64) as usize;
        let mut mask = u64::MAX << (from % 64);
        while w < words.len() {
            let v = words[w].load(Ordering::Relaxed) & mask;
            if v != 0 {
                let i = w as u64 * 64 + u64::from(v.trailing_zeros());
                return (i < self.bits).then_some(i);
            }
            w += 1;
            mask = u64::MAX;
        }
        None
    }

    /// Dirty bytes, as QEMU counts them: dirty granules × granularity.
    pub fn count(&self) -> u64 {
        let granules: u64 = self
            .words()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        granules << self.shift
    }

    /// `block-dirty-bitmap-clear`.
    pub fn clear(&self) {
        for w in self.words() {
            w.store(0, Ordering::Relaxed);
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Sets every granule (a bitmap whose content is unknown).
    pub fn fill(&self) {
        // Full as of the epoch read before the bits were set: a clear
        // finishing meanwhile bumps the epoch, so this is not believed.
        let e = self.epoch.load(Ordering::SeqCst);
        if self.bits == 0 || self.full_at.load(Ordering::SeqCst) == e + 1 {
            return;
        }
        self.set_bits(0, self.bits - 1);
        self.full_at.store(e + 1, Ordering::SeqCst);
    }

    /// `self |= src` (of the same node size; any granularity).
    pub fn merge_from(&self, src: &DirtyBitmap) {
        if src.granularity == self.granularity {
            for (d, s) in self.words().iter().zip(src.words()) {
                let v = s.load(Ordering::Relaxed);
                if v != 0 {
                    d.fetch_or(v, Ordering::Relaxed);
                }
            }
            return;
        }
        let g = u64::from(src.granularity);
        let mut i = 0;
        while let Some(d) = src.next_dirty(i) {
            self.set_bytes(d * g, g);
            i = d + 1;
        }
    }

    /// The content in the qcow2 serialisation (little-endian words).
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.bits.div_ceil(8) as usize;
        let mut out: Vec<u8> = self
            .words()
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect();
        out.truncate(n);
        out
    }

    /// ORs serialised content into the bitmap from byte `at` on (bits past
    /// the last granule are ignored).
    pub fn or_bytes(&self, at: u64, data: &[u8]) {
        for (k, &b) in data.iter().enumerate() {
            if b == 0 {
                continue;
            }
            for bit in 0..8u64 {
                if b & (1 << bit) != 0 {
                    let i = (at + k as u64) * 8 + bit;
                    if i < self.bits {
                        self.set_bits(i, i);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    pub(crate) fn memfd(words: u64) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, (words * 8) as i64).unwrap();
        fd
    }

    fn bm(size: u64, g: u32) -> DirtyBitmap {
        let w = words_for(size, g);
        let fd = memfd(w);
        DirtyBitmap::new(
            "b".into(),
            g,
            size,
            false,
            true,
            SharedWords::map(&fd, w as usize).unwrap(),
        )
    }

    #[test]
    fn a_write_marks_every_granule_it_touches_and_no_other() {
        let b = bm(1 << 20, 4096);
        b.mark(4095, 2);
        assert!(b.get(0) && b.get(1) && !b.get(2));
        assert_eq!(b.count(), 2 * 4096);
        b.mark(64 * 4096 - 1, 4096 * 70);
        assert_eq!(b.next_dirty(2), Some(63));
        assert!(b.get(63 + 70) && !b.get(64 + 70));
        b.clear();
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn the_last_partial_granule_counts_whole_and_writes_past_the_end_are_clamped() {
        let b = bm(1_049_088, 65536);
        b.mark(1_048_576, 512);
        b.mark(1000, 10);
        assert_eq!(b.count(), 131072);
        b.mark(10 << 20, 4096);
        assert_eq!(b.count(), 131072);
    }

    #[test]
    fn a_fill_after_a_clear_sets_the_bits_again() {
        let b = bm(1 << 20, 65536);
        b.fill();
        assert_eq!(b.count(), 1 << 20);
        b.clear();
        b.fill();
        assert_eq!(b.count(), 1 << 20);
        b.clear_range(0, 3);
        assert_eq!(b.count(), (1 << 20) - 4 * 65536);
        b.fill();
        assert_eq!(b.count(), 1 << 20);
    }

    #[test]
    fn disabled_bitmaps_do_not_record() {
        let b = bm(1 << 20, 65536);
        b.set_recording(false);
        b.mark(0, 1);
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn merge_across_granularities_covers_the_source_bytes() {
        let small = bm(1 << 20, 512);
        let big = bm(1 << 20, 65536);
        small.mark(70_000, 1);
        big.merge_from(&small);
        assert!(big.get(1) && big.count() == 65536);
        let other = bm(1 << 20, 512);
        other.merge_from(&small);
        assert_eq!(other.count(), 512);
    }

    #[test]
    fn serialisation_round_trips_in_qcow2_bit_order() {
        let b = bm(1 << 20, 512);
        b.mark(0, 512);
        b.mark(9 * 512, 512);
        let s = b.to_bytes();
        assert_eq!(s.len(), 256);
        assert_eq!(&s[..2], &[0x01, 0x02]);
        let c = bm(1 << 20, 512);
        c.or_bytes(0, &s);
        assert_eq!(c.to_bytes(), s);
    }
}
