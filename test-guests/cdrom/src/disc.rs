//! The content of a test disc, derived from `(block, tag)`, so that the
//! guest and a host test (which writes the disc image) compute it alike.
//!
//! A 2048-byte block is 256 little-endian u64 words: word 0 = [`MAGIC`],
//! word 1 = block number, word 2 = the disc's tag, word 3 = the disc's
//! flags ([`LAST`], [`KEEP_LOCKED`], [`REREAD`]), words 4..255 = `mix(block, tag, i)`.
//! Every block of a disc carries the same tag and flags, so the guest
//! knows from block 0 what the test wants it to do with this disc.

/// CD-ROM logical block size.
pub const BLOCK: usize = 2048;
/// Words per block.
pub const WORDS: usize = BLOCK / 8;
/// First word of every block ("BKHDCD01").
pub const MAGIC: u64 = 0x3130_4443_4448_4b42;
/// Flag: the guest ends with its verdict after reading this disc.
pub const LAST: u64 = 1;
/// Flag: the guest ignores eject requests while this disc is in (the tray
/// stays locked, so only a forced eject takes the disc out).
pub const KEEP_LOCKED: u64 = 2;
/// Flag: the guest reads this disc again and again (`disc N pass P ok`),
/// polling media events between passes, until the first media event.
pub const REREAD: u64 = 4;

/// Word `i` (4..255) of `(block, tag)`.
pub fn mix(block: u64, tag: u64, i: u64) -> u64 {
    let mut x = block
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(tag.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .wrapping_add(i);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 29)
}

/// Expected word `i` of block `block` of disc `(tag, flags)`.
pub fn word(block: u64, tag: u64, flags: u64, i: usize) -> u64 {
    match i {
        0 => MAGIC,
        1 => block,
        2 => tag,
        3 => flags,
        _ => mix(block, tag, i as u64),
    }
}

/// Fills `b` with block `block` of disc `(tag, flags)` (the host tests
/// write the disc images with it).
#[allow(dead_code)]
pub fn fill(b: &mut [u64; WORDS], block: u64, tag: u64, flags: u64) {
    for (i, w) in b.iter_mut().enumerate() {
        *w = word(block, tag, flags, i);
    }
}

/// Where a block differs from what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Word index.
    pub word: usize,
    /// Expected value.
    pub want: u64,
    /// Value read.
    pub got: u64,
}

/// Checks that `b` is block `block` of disc `(tag, flags)`.
pub fn check(b: &[u64; WORDS], block: u64, tag: u64, flags: u64) -> Result<(), Mismatch> {
    for (i, &got) in b.iter().enumerate() {
        let want = word(block, tag, flags, i);
        if got != want {
            return Err(Mismatch { word: i, want, got });
        }
    }
    Ok(())
}
