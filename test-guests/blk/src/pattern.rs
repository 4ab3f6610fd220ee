//! Sector contents derived from `(sector, pass)`, so that any verifier
//! (this guest, or a host test reading the image) can recompute them.
//!
//! A 512-byte sector is 64 little-endian u64 words:
//! word 0 = `MAGIC`, word 1 = sector, word 2 = pass,
//! words 3..63 = `mix(sector, pass, i)`, word 63 = the wrapping sum of
//! words 0..63 (a checksum that also catches torn sectors).

/// Sector size.
pub const SECTOR: usize = 512;
/// Words per sector.
pub const WORDS: usize = SECTOR / 8;
/// First word of every pattern sector ("BKHDBLK1").
pub const MAGIC: u64 = 0x314b_4c42_4448_4b42;

/// The word `i` (3..63) of `(sector, pass)`: a cheap xorshift-multiply mix.
pub fn mix(sector: u64, pass: u64, i: u64) -> u64 {
    let mut x = sector
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(pass.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .wrapping_add(i);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 32)
}

/// Expected word `i` of `(sector, pass)`.
pub fn word(sector: u64, pass: u64, i: usize) -> u64 {
    match i {
        0 => MAGIC,
        1 => sector,
        2 => pass,
        _ => mix(sector, pass, i as u64),
    }
}

/// Fills `out` (one sector) with the pattern of `(sector, pass)`.
pub fn fill(out: &mut [u64; WORDS], sector: u64, pass: u64) {
    let mut sum = 0u64;
    for (i, w) in out.iter_mut().enumerate().take(WORDS - 1) {
        *w = word(sector, pass, i);
        sum = sum.wrapping_add(*w);
    }
    out[WORDS - 1] = sum;
}

/// Where a sector differs from its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Word `index` is `found`, `expected` was wanted.
    Word {
        /// Word index.
        index: usize,
        /// Found value.
        found: u64,
        /// Expected value.
        expected: u64,
    },
    /// The checksum word is wrong.
    Checksum,
}

/// Checks one sector against the pattern of `(sector, pass)`.
pub fn check(data: &[u64; WORDS], sector: u64, pass: u64) -> Result<(), Mismatch> {
    let mut sum = 0u64;
    for (i, &found) in data.iter().enumerate().take(WORDS - 1) {
        let expected = word(sector, pass, i);
        if found != expected {
            return Err(Mismatch::Word {
                index: i,
                found,
                expected,
            });
        }
        sum = sum.wrapping_add(found);
    }
    if data[WORDS - 1] != sum {
        return Err(Mismatch::Checksum);
    }
    Ok(())
}
