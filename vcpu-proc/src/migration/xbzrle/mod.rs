//! XBZRLE (the `xbzrle` migration capability): pages already sent are
//! kept in a cache (`cache.rs`, QEMU's `page_cache.c`) and a page sent
//! again goes as a delta against its cached copy (`codec.rs`, QEMU's
//! `xbzrle.c`) when that is shorter than the page.
//!
//! The sender keeps one [`XbzrleEncoder`] per migration and hands it every
//! page of a pass ([`XbzrleEncoder::encode`], or
//! [`XbzrleEncoder::zero_page`] for a page it sends as a zero page), so
//! the cache always holds what the target holds. The receiver applies a
//! delta to its page with [`apply`]. As in QEMU, the first pass sends
//! every page whole and caches nothing; the cache fills from the second
//! pass on (a page re-dirtied pass after pass is cached on its second
//! send and goes as a delta from its third), and the last stage (guest
//! stopped) no longer updates it.

use ipc_proto::migration::XbzrleStats;

pub mod cache;
pub mod codec;

pub use cache::PageCache;

/// The page size XBZRLE works on (the guest's).
pub const PAGE_SIZE: usize = 4096;

/// Errors of the XBZRLE cache and decoder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XbzrleError {
    /// A delta of no bytes (the encoder never sends one).
    #[error("XBZRLE: empty delta")]
    EmptyDelta,
    /// A delta longer than the page.
    #[error("XBZRLE: delta of {len} bytes for a page of {page}")]
    DeltaTooLong {
        /// Its length.
        len: usize,
        /// The page size.
        page: usize,
    },
    /// The delta ends inside a run.
    #[error("XBZRLE: delta truncated at byte {at}")]
    Truncated {
        /// Where.
        at: usize,
    },
    /// A run length longer than two ULEB128 bytes.
    #[error("XBZRLE: bad run length at byte {at}")]
    BadLength {
        /// Where.
        at: usize,
    },
    /// A run of length zero where the format has none.
    #[error("XBZRLE: empty run at byte {at}")]
    EmptyRun {
        /// Where.
        at: usize,
    },
    /// A run that reaches past the end of the page.
    #[error("XBZRLE: run at byte {at} ends at page offset {end}, past the page")]
    OutsidePage {
        /// Where in the delta.
        at: usize,
        /// The page offset it would end at.
        end: usize,
    },
    /// `xbzrle-cache-size` smaller than a page.
    #[error("XBZRLE cache of {size} bytes is smaller than a page ({page})")]
    CacheTooSmall {
        /// The size asked for.
        size: u64,
        /// The page size.
        page: usize,
    },
    /// The cache's slots could not be allocated.
    #[error("XBZRLE cache: out of memory")]
    CacheAlloc,
}

/// Applies a received delta to the target's copy of the page (see
/// [`codec::decode`]: checked whole first, the page untouched on error).
pub fn apply(delta: &[u8], page: &mut [u8]) -> Result<(), XbzrleError> {
    codec::decode(delta, page)
}

/// Why [`XbzrleEncoder::encode`] gives a page whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeReason {
    /// The first pass (XBZRLE starts with the second).
    FirstPass,
    /// The page was not in the cache (it is now, unless its slot was
    /// taken or this is the last stage).
    CacheMiss,
    /// The delta would have been longer than the page.
    Overflow,
}

/// What to send for a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// The target already has these bytes: send nothing.
    Unchanged,
    /// Send `out` as an XBZRLE delta.
    Delta,
    /// Send `out` (a copy of the page taken once, the same bytes the
    /// cache now holds) as a whole page.
    Whole(WholeReason),
}

/// Counters of the pass being sent, for the rates of [`XbzrleStats`].
#[derive(Debug, Default, Clone, Copy)]
struct Period {
    looked_up: u64,
    misses: u64,
    pages: u64,
    bytes: u64,
}

/// The sender's XBZRLE state of one migration.
#[derive(Debug)]
pub struct XbzrleEncoder {
    cache: PageCache,
    ram_pages: u64,
    cache_size: u64,
    generation: u64,
    passes: u64,
    last_stage: bool,
    stats: XbzrleStats,
    period: Period,
    /// The page as read once, before anything is compared or cached.
    current: Vec<u8>,
    zero: Vec<u8>,
}

impl XbzrleEncoder {
    /// A cache of `cache_size` bytes (`xbzrle-cache-size`) for a guest
    /// of `ram_size` bytes.
    pub fn new(cache_size: u64, ram_size: u64) -> Result<Self, XbzrleError> {
        let ram_pages = ram_size.div_ceil(PAGE_SIZE as u64);
        Ok(XbzrleEncoder {
            cache: PageCache::new(cache_size, PAGE_SIZE, ram_pages)?,
            ram_pages,
            cache_size,
            generation: 0,
            passes: 0,
            last_stage: false,
            stats: XbzrleStats {
                cache_size,
                ..XbzrleStats::default()
            },
            period: Period::default(),
            current: vec![0; PAGE_SIZE],
            zero: vec![0; PAGE_SIZE],
        })
    }

    /// `xbzrle-cache-size` changed during the migration: a new, empty
    /// cache (as QEMU's `xbzrle_cache_resize`); the counters carry on.
    pub fn resize(&mut self, cache_size: u64) -> Result<(), XbzrleError> {
        if cache_size == self.cache_size {
            return Ok(());
        }
        self.cache = PageCache::new(cache_size, PAGE_SIZE, self.ram_pages)?;
        self.cache_size = cache_size;
        self.stats.cache_size = cache_size;
        Ok(())
    }

    /// A new pass begins (the dirty log was synchronised; `generation`
    /// is the pass number, `dirty-sync-count`). Call it before the first
    /// pass too. The rates of the pass that ended are computed here.
    pub fn begin_pass(&mut self, generation: u64) {
        let p = std::mem::take(&mut self.period);
        if p.looked_up > 0 {
            self.stats.cache_miss_rate = p.misses as f64 / p.looked_up as f64;
        }
        self.stats.encoding_rate = if p.pages == 0 || p.bytes == 0 {
            0.0
        } else {
            (p.pages * PAGE_SIZE as u64) as f64 / p.bytes as f64
        };
        self.generation = generation;
        self.passes += 1;
    }

    /// The guest is stopped and the last dirty pages go out: the cache
    /// is no longer updated.
    pub fn last_stage(&mut self) {
        self.last_stage = true;
    }

    fn started(&self) -> bool {
        self.passes >= 2
    }

    /// Decides how page `addr` (guest-physical address or RAM offset,
    /// page aligned; the same key for the same page throughout) goes out.
    /// `page` is read once; `out` gets the delta or the page to send.
    /// A `page` of the wrong length is given back whole and not cached.
    pub fn encode(&mut self, addr: u64, page: &[u8], out: &mut Vec<u8>) -> Encoded {
        out.clear();
        if page.len() != PAGE_SIZE {
            out.extend_from_slice(page);
            return Encoded::Whole(WholeReason::Overflow);
        }
        self.current.copy_from_slice(page);
        if !self.started() {
            out.extend_from_slice(&self.current);
            return Encoded::Whole(WholeReason::FirstPass);
        }
        self.period.looked_up += 1;
        let generation = self.generation;
        let last_stage = self.last_stage;
        let Some(cached) = self.cache.lookup(addr, generation) else {
            self.stats.cache_miss += 1;
            self.period.misses += 1;
            if !last_stage {
                self.cache.insert(addr, &self.current, generation);
            }
            out.extend_from_slice(&self.current);
            return Encoded::Whole(WholeReason::CacheMiss);
        };
        self.stats.pages += 1;
        self.period.pages += 1;
        let delta = codec::encode(cached, &self.current, PAGE_SIZE, out);
        if !last_stage && delta != codec::Delta::Unchanged {
            // The cache holds what the target will hold.
            cached.copy_from_slice(&self.current);
        }
        match delta {
            codec::Delta::Unchanged => Encoded::Unchanged,
            codec::Delta::Encoded(n) => {
                self.add_bytes(n as u64);
                Encoded::Delta
            }
            codec::Delta::Overflow => {
                self.stats.overflow += 1;
                self.add_bytes(PAGE_SIZE as u64);
                out.clear();
                out.extend_from_slice(&self.current);
                Encoded::Whole(WholeReason::Overflow)
            }
        }
    }

    /// Page `addr` went out as a zero page: the target now holds zeros
    /// there, so does the cache (QEMU's `xbzrle_cache_zero_page`).
    pub fn zero_page(&mut self, addr: u64) {
        if !self.started() || self.last_stage {
            return;
        }
        self.period.looked_up += 1;
        self.cache.insert(addr, &self.zero, self.generation);
    }

    /// Counts `n` more bytes sent for deltas (the stream's record header
    /// of a delta; the delta bytes themselves are counted by `encode`).
    pub fn add_bytes(&mut self, n: u64) {
        self.stats.bytes += n;
        self.period.bytes += n;
    }

    /// The statistics so far (`query-migrate`'s `xbzrle-cache`).
    pub fn stats(&self) -> XbzrleStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
