//! The self-describing page: every 4 KiB page of the dirtied area holds
//!
//! | word (u64) | value |
//! |------------|-------|
//! | 0 | the page's guest-physical address |
//! | 1 | its generation (the round that wrote it, from 1) |
//! | 2 | [`MAGIC`] |
//! | 3..511 | `seed(addr, gen) + i * STEP` (wrapping), i counted from 3 |
//! | 511 | checksum: `c = c.rotl(5) ^ word` over words 0..511 |
//!
//! so a page can be checked on its own at any time: a page that was not
//! transferred by a migration shows an old generation, one copied to the
//! wrong place a wrong address, a torn or damaged one a wrong word or sum.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// Bytes per page.
pub const PAGE_SIZE: u64 = 4096;
const WORDS: usize = (PAGE_SIZE / 8) as usize;
/// Word 2 of every written page ("DRTYPG01").
pub const MAGIC: u64 = 0x4452_5459_5047_3031;
const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

fn seed(addr: u64, gen: u64) -> u64 {
    (addr ^ gen.rotate_left(32) ^ MAGIC).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

fn fold(sum: u64, word: u64) -> u64 {
    sum.rotate_left(5) ^ word
}

/// What is wrong with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Word 0 is not the page's address (a page from elsewhere, or never
    /// written).
    Address { found: u64 },
    /// Word 1 is not the expected generation (a stale page).
    Generation { found: u64, expected: u64 },
    /// A pattern word differs.
    Word {
        index: usize,
        found: u64,
        expected: u64,
    },
    /// The checksum word differs.
    Checksum { found: u64, expected: u64 },
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bad::Address { found } => write!(f, "holds address {found:#x}"),
            Bad::Generation { found, expected } => {
                write!(f, "stale: generation {found}, expected {expected}")
            }
            Bad::Word {
                index,
                found,
                expected,
            } => write!(
                f,
                "word {index} is {found:#018x}, expected {expected:#018x}"
            ),
            Bad::Checksum { found, expected } => {
                write!(f, "checksum {found:#018x}, expected {expected:#018x}")
            }
        }
    }
}

/// Writes generation `gen` of the page at `addr`.
///
/// # Safety
/// `addr` must be a page-aligned, identity-mapped RAM page that nothing
/// else in the guest uses.
pub unsafe fn write(addr: u64, gen: u64) {
    let p = addr as *mut u64;
    let mut sum = 0;
    for (i, w) in [addr, gen, MAGIC].into_iter().enumerate() {
        // SAFETY: i < WORDS, inside the page the caller vouches for.
        unsafe { write_volatile(p.add(i), w) };
        sum = fold(sum, w);
    }
    let mut w = seed(addr, gen);
    for i in 3..WORDS - 1 {
        // SAFETY: as above.
        unsafe { write_volatile(p.add(i), w) };
        sum = fold(sum, w);
        w = w.wrapping_add(STEP);
    }
    // SAFETY: as above.
    unsafe { write_volatile(p.add(WORDS - 1), sum) };
}

/// Checks that the page at `addr` holds generation `gen`.
///
/// # Safety
/// As for [`write`] (the page is only read).
pub unsafe fn verify(addr: u64, gen: u64) -> Result<(), Bad> {
    let p = addr as *const u64;
    // SAFETY: i < WORDS, inside the page the caller vouches for.
    let word = |i: usize| unsafe { read_volatile(p.add(i)) };
    let found = word(0);
    if found != addr {
        return Err(Bad::Address { found });
    }
    let found = word(1);
    if found != gen {
        return Err(Bad::Generation {
            found,
            expected: gen,
        });
    }
    let mut sum = fold(fold(fold(0, addr), gen), MAGIC);
    let found = word(2);
    if found != MAGIC {
        return Err(Bad::Word {
            index: 2,
            found,
            expected: MAGIC,
        });
    }
    let mut expected = seed(addr, gen);
    for index in 3..WORDS - 1 {
        let found = word(index);
        if found != expected {
            return Err(Bad::Word {
                index,
                found,
                expected,
            });
        }
        sum = fold(sum, found);
        expected = expected.wrapping_add(STEP);
    }
    let found = word(WORDS - 1);
    if found != sum {
        return Err(Bad::Checksum {
            found,
            expected: sum,
        });
    }
    Ok(())
}
