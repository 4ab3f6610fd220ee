//! The XBZRLE page cache, as QEMU's (`migration/page_cache.c`): a
//! direct-mapped cache of `cache_size / page_size` slots rounded down to a
//! power of two, a page's slot being `(addr / page_size) & (slots - 1)`.
//! Each slot remembers the address it holds and its age: the generation
//! (dirty-log pass) it was last inserted or hit in. A page may take the
//! slot of another page only once that page has not been used for
//! [`CACHED_PAGE_LIFETIME`] generations, so a page being re-sent pass
//! after pass is not pushed out by one sent once. A slot's bytes are
//! allocated on first use; an allocation that fails leaves the page out
//! of the cache (it is then sent whole), it never aborts the process.

use super::XbzrleError;

/// Generations a cached page keeps its slot against other pages.
pub const CACHED_PAGE_LIFETIME: u64 = 2;

#[derive(Debug)]
struct Slot {
    /// The page address held, or None.
    addr: Option<u64>,
    /// The generation of the last insert or hit.
    age: u64,
    /// The page's bytes (allocated on first insert).
    data: Option<Box<[u8]>>,
}

/// A direct-mapped page cache keyed by page address.
#[derive(Debug)]
pub struct PageCache {
    page_size: usize,
    slots: Vec<Slot>,
}

/// The largest power of two not above `n` (`n` > 0).
fn pow2floor(n: u64) -> u64 {
    1 << (63 - n.leading_zeros())
}

impl PageCache {
    /// A cache of `cache_size` bytes for pages of `page_size` bytes:
    /// `cache_size / page_size` slots rounded down to a power of two, but
    /// no more than the power of two covering `max_pages` (the pages that
    /// can ever be looked up: more slots would stay empty; QEMU allocates
    /// them anyway).
    pub fn new(cache_size: u64, page_size: usize, max_pages: u64) -> Result<Self, XbzrleError> {
        let page = page_size as u64;
        if page_size == 0 || cache_size < page {
            return Err(XbzrleError::CacheTooSmall {
                size: cache_size,
                page: page_size,
            });
        }
        let wanted = pow2floor(cache_size / page);
        let cap = max_pages
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 63);
        let count = usize::try_from(wanted.min(cap)).map_err(|_| XbzrleError::CacheAlloc)?;
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(count)
            .map_err(|_| XbzrleError::CacheAlloc)?;
        slots.extend((0..count).map(|_| Slot {
            addr: None,
            age: 0,
            data: None,
        }));
        Ok(PageCache { page_size, slots })
    }

    /// Number of slots (a power of two).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    fn pos(&self, addr: u64) -> usize {
        // The slot count is a power of two that fits in usize.
        ((addr / self.page_size as u64) & (self.slots.len() as u64 - 1)) as usize
    }

    /// QEMU's `cache_is_cached` + `get_cached_data`: the cached bytes of
    /// page `addr`, renewing its age to `generation` on a hit.
    pub fn lookup(&mut self, addr: u64, generation: u64) -> Option<&mut [u8]> {
        let pos = self.pos(addr);
        let slot = &mut self.slots[pos];
        if slot.addr != Some(addr) {
            return None;
        }
        slot.age = generation;
        slot.data.as_deref_mut()
    }

    /// The cached bytes of page `addr`, without touching its age.
    pub fn get(&self, addr: u64) -> Option<&[u8]> {
        let slot = &self.slots[self.pos(addr)];
        if slot.addr != Some(addr) {
            return None;
        }
        slot.data.as_deref()
    }

    /// QEMU's `cache_insert`: caches `data` (one page) as page `addr` of
    /// `generation`. False, and nothing cached, when the slot holds
    /// another page used within [`CACHED_PAGE_LIFETIME`] generations, or
    /// when the slot's memory cannot be allocated.
    pub fn insert(&mut self, addr: u64, data: &[u8], generation: u64) -> bool {
        if data.len() != self.page_size {
            return false;
        }
        let pos = self.pos(addr);
        let slot = &mut self.slots[pos];
        if slot.data.is_some()
            && slot.addr != Some(addr)
            && slot.age.saturating_add(CACHED_PAGE_LIFETIME) > generation
        {
            return false;
        }
        let bytes = match &mut slot.data {
            Some(b) => b,
            None => {
                let mut v = Vec::new();
                if v.try_reserve_exact(self.page_size).is_err() {
                    return false;
                }
                v.resize(self.page_size, 0);
                slot.data.insert(v.into_boxed_slice())
            }
        };
        bytes.copy_from_slice(data);
        slot.addr = Some(addr);
        slot.age = generation;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    #[test]
    fn slots_are_cache_size_over_page_size_rounded_down_to_a_power_of_two() {
        assert_eq!(
            PageCache::new(64 << 20, PAGE, 1 << 30).unwrap().slots(),
            16384
        );
        // 5 pages → 4 slots; 7.9 pages → 4 slots.
        assert_eq!(PageCache::new(5 * 4096, PAGE, 1 << 30).unwrap().slots(), 4);
        assert_eq!(
            PageCache::new(8 * 4096 - 1, PAGE, 1 << 30).unwrap().slots(),
            4
        );
        assert_eq!(PageCache::new(4096, PAGE, 1 << 30).unwrap().slots(), 1);
        // No more slots than the pages that exist (rounded up to a power of two).
        assert_eq!(PageCache::new(1 << 40, PAGE, 1000).unwrap().slots(), 1024);
    }

    #[test]
    fn a_cache_smaller_than_a_page_is_refused() {
        assert!(matches!(
            PageCache::new(4095, PAGE, 100),
            Err(XbzrleError::CacheTooSmall { .. })
        ));
        assert!(PageCache::new(0, PAGE, 100).is_err());
    }

    #[test]
    fn pages_are_keyed_by_address_in_a_direct_mapped_slot() {
        let mut c = PageCache::new(4 * 4096, PAGE, 1 << 20).unwrap();
        let a = vec![1u8; PAGE];
        assert!(c.lookup(0x1000, 1).is_none());
        assert!(c.insert(0x1000, &a, 1));
        assert_eq!(c.lookup(0x1000, 1).unwrap(), &a[..]);
        // 0x5000 maps to the same slot (4 slots): not 0x1000's bytes.
        assert!(c.lookup(0x5000, 1).is_none());
        assert!(c.get(0x2000).is_none());
    }

    #[test]
    fn a_fresh_page_keeps_its_slot_for_two_generations() {
        let mut c = PageCache::new(4 * 4096, PAGE, 1 << 20).unwrap();
        let (a, b) = (vec![1u8; PAGE], vec![2u8; PAGE]);
        assert!(c.insert(0x1000, &a, 5));
        // Same slot, another page, generations 5 and 6: refused.
        assert!(!c.insert(0x5000, &b, 5));
        assert!(!c.insert(0x5000, &b, 6));
        assert_eq!(c.get(0x1000).unwrap(), &a[..]);
        // A hit in generation 6 renews it: still refused in 7.
        assert!(c.lookup(0x1000, 6).is_some());
        assert!(!c.insert(0x5000, &b, 7));
        // Unused for two generations: replaced.
        assert!(c.insert(0x5000, &b, 8));
        assert!(c.get(0x1000).is_none());
        assert_eq!(c.get(0x5000).unwrap(), &b[..]);
        // The same page may always be updated.
        assert!(c.insert(0x5000, &a, 8));
        assert_eq!(c.get(0x5000).unwrap(), &a[..]);
    }

    #[test]
    fn an_insert_of_the_wrong_length_is_refused() {
        let mut c = PageCache::new(4 * 4096, PAGE, 1 << 20).unwrap();
        assert!(!c.insert(0, &[0u8; 100], 1));
        assert!(c.get(0).is_none());
    }
}
