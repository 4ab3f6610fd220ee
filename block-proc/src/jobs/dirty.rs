//! A mirror's own dirty bitmap: one bit per `granularity` bytes, set by
//! guest writes (after they completed), taken (cleared) by the copier
//! before it reads the source, so a write racing a copy leaves its bit
//! set and is copied again.

use std::sync::atomic::{AtomicU64, Ordering};

/// The bitmap.
pub struct Dirty {
    words: Vec<AtomicU64>,
    granularity: u64,
    bits: u64,
}

impl Dirty {
    /// A clear bitmap over `size` bytes.
    pub fn new(size: u64, granularity: u64) -> Self {
        let granularity = granularity.max(512);
        let bits = size.div_ceil(granularity);
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Dirty {
            words,
            granularity,
            bits,
        }
    }

    /// Bytes per bit.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Marks `[offset, offset + len)`.
    pub fn set(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / self.granularity;
        let last = ((offset + len - 1) / self.granularity).min(self.bits.saturating_sub(1));
        for b in first..=last {
            self.words[(b / 64) as usize].fetch_or(1 << (b % 64), Ordering::SeqCst);
        }
    }

    /// Number of set bits times the granularity.
    pub fn dirty_bytes(&self) -> u64 {
        let n: u64 = self
            .words
            .iter()
            .map(|w| u64::from(w.load(Ordering::SeqCst).count_ones()))
            .sum();
        n * self.granularity
    }

    /// Takes (clears) the first run of set bits at or after `from` bytes,
    /// at most `max` bytes long: its byte range.
    pub fn take(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        let mut b = from / self.granularity;
        let max_bits = (max / self.granularity).max(1);
        while b < self.bits {
            let w = self.words[(b / 64) as usize].load(Ordering::SeqCst) >> (b % 64);
            if w == 0 {
                b = (b / 64 + 1) * 64;
                continue;
            }
            b += u64::from(w.trailing_zeros());
            break;
        }
        if b >= self.bits {
            return None;
        }
        let start = b;
        while b < self.bits && b - start < max_bits {
            let mask = 1u64 << (b % 64);
            let old = self.words[(b / 64) as usize].fetch_and(!mask, Ordering::SeqCst);
            if old & mask == 0 {
                break;
            }
            b += 1;
        }
        Some((start * self.granularity, (b - start) * self.granularity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_taken_in_order_and_cleared() {
        let d = Dirty::new(1 << 20, 65536);
        d.set(70000, 1);
        d.set(200_000, 100_000);
        // Bits 1, 3 and 4.
        assert_eq!(d.dirty_bytes(), 3 * 65536);
        assert_eq!(d.take(0, 1 << 20), Some((65536, 65536)));
        assert_eq!(d.take(0, 65536), Some((196608, 65536)));
        assert_eq!(d.take(0, 1 << 20), Some((262144, 65536)));
        assert_eq!(d.take(0, 1 << 20), None);
        d.set((1 << 20) - 1, 1);
        assert_eq!(d.take(500_000, 1 << 20), Some(((1 << 20) - 65536, 65536)));
    }
}
