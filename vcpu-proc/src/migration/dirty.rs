//! Which guest pages a migration must (re)send: a bitmap per RAM region,
//! filled from KVM's dirty log (`KVM_MEM_LOG_DIRTY_PAGES` on every RAM
//! memslot, read and cleared with `KVM_GET_DIRTY_LOG`) and from the
//! vhost-user dirty log the backends write ([`VhostLog`]).

use std::sync::Arc;

use ipc_proto::migstream::{Layout, Region};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{self, GuestMemoryMmap};
use crate::virtio::dirty_log::{VhostLog, DIRTY_LOG_PAGE};

/// The page size of guest RAM, KVM's dirty log and the stream.
pub const PAGE: u64 = 4096;

// The vhost-user log and KVM's log count the same pages.
const _: () = assert!(DIRTY_LOG_PAGE == PAGE);

/// Why the dirty log failed.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// Turning KVM's logging on or off failed.
    #[error("cannot switch KVM dirty logging")]
    Slots(#[source] memory::MemoryError),
    /// `KVM_GET_DIRTY_LOG` failed.
    #[error("KVM_GET_DIRTY_LOG of slot {slot} failed")]
    Get {
        /// The memslot.
        slot: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The RAM layout of `mem` as the stream describes it.
pub fn layout(mem: &GuestMemoryMmap) -> Layout {
    Layout {
        page_size: PAGE as u32,
        regions: mem
            .iter()
            .map(|r| Region {
                start: r.start_addr().raw_value(),
                len: r.len(),
            })
            .collect(),
    }
}

/// A set of dirty pages, one bit per page of each region.
#[derive(Debug, Clone)]
pub struct DirtyPages {
    regions: Vec<(Region, Vec<u64>)>,
    count: u64,
    /// Where [`Self::take_run`] looks first: (region, word).
    cursor: (usize, usize),
}

impl DirtyPages {
    /// No page of `layout` dirty.
    pub fn empty(layout: &Layout) -> Self {
        DirtyPages {
            regions: layout
                .regions
                .iter()
                .map(|r| (*r, vec![0u64; (r.len / PAGE).div_ceil(64) as usize]))
                .collect(),
            count: 0,
            cursor: (0, 0),
        }
    }

    /// Every page of `layout` dirty (the first pass).
    pub fn all(layout: &Layout) -> Self {
        let mut d = Self::empty(layout);
        for i in 0..d.regions.len() {
            let pages = d.regions[i].0.len / PAGE;
            d.or_words(i, &vec![u64::MAX; pages.div_ceil(64) as usize]);
        }
        d
    }

    /// Pages in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds the page holding `gpa` (ignored outside RAM).
    pub fn mark(&mut self, gpa: u64) {
        for (r, bits) in &mut self.regions {
            if gpa >= r.start && gpa - r.start < r.len {
                let page = (gpa - r.start) / PAGE;
                let (w, b) = ((page / 64) as usize, page % 64);
                if bits[w] & (1 << b) == 0 {
                    bits[w] |= 1 << b;
                    self.count += 1;
                }
                return;
            }
        }
    }

    /// Adds a bitmap of region `i` (bit n = page n), such as KVM returns;
    /// bits past the region's end are ignored.
    pub fn or_words(&mut self, i: usize, words: &[u64]) {
        let Some((r, bits)) = self.regions.get_mut(i) else {
            return;
        };
        let pages = r.len / PAGE;
        for (w, (dst, src)) in bits.iter_mut().zip(words).enumerate() {
            let mut src = *src;
            let first = w as u64 * 64;
            if first + 64 > pages {
                src &= (1u64 << (pages - first)) - 1;
            }
            self.count += u64::from((src & !*dst).count_ones());
            *dst |= src;
        }
    }

    /// Adds every page of `other`.
    pub fn merge(&mut self, other: &DirtyPages) {
        for i in 0..other.regions.len() {
            self.or_words(i, &other.regions[i].1);
        }
    }

    /// Removes and returns the next run of consecutive dirty pages, at
    /// most `max` (at least 1) and never across regions, as its first
    /// page's address and its length; None when the set is empty. Runs
    /// come in ascending order from where the last one ended, wrapping
    /// around to pages added behind it.
    pub fn take_run(&mut self, max: u32) -> Option<(u64, u32)> {
        if self.count == 0 {
            return None;
        }
        let max = u64::from(max.max(1));
        let (ri, wi) = self.find().or_else(|| {
            self.cursor = (0, 0);
            self.find()
        })?;
        let (r, bits) = &mut self.regions[ri];
        let first = u64::from(bits[wi].trailing_zeros());
        let start = wi as u64 * 64 + first;
        let mut taken = 0u64;
        let mut w = wi;
        while w < bits.len() && taken < max {
            let bit = (start + taken) % 64;
            let ones = u64::from((!(bits[w] >> bit)).trailing_zeros()).min(64 - bit);
            let n = ones.min(max - taken);
            if n == 0 {
                break;
            }
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            bits[w] &= !mask;
            taken += n;
            if bit + n < 64 {
                break;
            }
            w += 1;
        }
        self.cursor = (ri, w.min(bits.len().saturating_sub(1)));
        self.count -= taken;
        Some((r.start + start * PAGE, taken as u32))
    }

    /// The first non-empty word from the cursor on.
    fn find(&self) -> Option<(usize, usize)> {
        let (r0, w0) = self.cursor;
        self.regions
            .iter()
            .enumerate()
            .skip(r0)
            .find_map(|(ri, (_, bits))| {
                let from = if ri == r0 { w0 } else { 0 };
                bits.iter()
                    .skip(from)
                    .position(|&w| w != 0)
                    .map(|i| (ri, from + i))
            })
    }
}

/// KVM's and the backends' dirty logs of a VM, on while this lives.
pub struct DirtyLog {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    vhost: Arc<VhostLog>,
    on: bool,
}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog").field("on", &self.on).finish()
    }
}

impl DirtyLog {
    /// Turns KVM's dirty logging on for every RAM slot (the vhost-user
    /// log is handed to the devices by the caller).
    pub fn start(
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        vhost: Arc<VhostLog>,
    ) -> Result<Self, DirtyError> {
        memory::set_dirty_logging(&vm, &mem, true).map_err(DirtyError::Slots)?;
        Ok(DirtyLog {
            vm,
            mem,
            vhost,
            on: true,
        })
    }

    /// Moves every page written since the last sync (by the guest or by a
    /// backend) into `into`; returns how many were new there.
    pub fn sync(&self, into: &mut DirtyPages) -> Result<u64, DirtyError> {
        let before = into.count();
        for (slot, region) in self.mem.iter().enumerate() {
            let slot = slot as u32;
            let words = self
                .vm
                .get_dirty_log(slot, region.len() as usize)
                .map_err(|source| DirtyError::Get { slot, source })?;
            into.or_words(slot as usize, &words);
        }
        self.vhost.take(|page| into.mark(page * PAGE));
        Ok(into.count() - before)
    }

    /// Turns KVM's dirty logging off (also done on drop).
    pub fn stop(&mut self) -> Result<(), DirtyError> {
        if self.on {
            self.on = false;
            memory::set_dirty_logging(&self.vm, &self.mem, false).map_err(DirtyError::Slots)?;
        }
        Ok(())
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(
                "cannot turn KVM dirty logging off: {}",
                ipc_proto::envelope::error_chain(&e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Layout {
        Layout {
            page_size: 4096,
            regions: vec![
                Region {
                    start: 0,
                    len: 100 * PAGE,
                },
                Region {
                    start: 1 << 32,
                    len: 3 * PAGE,
                },
            ],
        }
    }

    /// Every page of `d`'s runs, in order, and the runs.
    fn drain(d: &mut DirtyPages, max: u32) -> (Vec<u64>, Vec<(u64, u32)>) {
        let (mut pages, mut runs) = (Vec::new(), Vec::new());
        while let Some((gpa, n)) = d.take_run(max) {
            assert!((1..=max).contains(&n), "run of {n}");
            pages.extend((0..u64::from(n)).map(|i| gpa + i * PAGE));
            runs.push((gpa, n));
        }
        assert_eq!(d.count(), 0);
        (pages, runs)
    }

    #[test]
    fn all_pages_are_every_page_of_every_region_once() {
        let mut d = DirtyPages::all(&l());
        assert_eq!(d.count(), 103);
        let (got, runs) = drain(&mut d, 7);
        assert_eq!(got.len(), 103);
        assert_eq!(got[99], 99 * PAGE);
        assert_eq!(
            got[100..],
            [1 << 32, (1 << 32) + PAGE, (1 << 32) + 2 * PAGE]
        );
        // Runs of 7 that stop at the end of region 0 (100 = 14 * 7 + 2).
        assert_eq!(runs.len(), 15 + 1);
        assert_eq!(runs[14], (98 * PAGE, 2));
        assert_eq!(runs[15], (1 << 32, 3));
        // A run across word boundaries, longer than a word.
        let mut d = DirtyPages::all(&l());
        assert_eq!(d.take_run(90), Some((0, 90)));
        assert_eq!(d.take_run(90), Some((90 * PAGE, 10)));
    }

    #[test]
    fn runs_end_at_a_clean_page_and_wrap_to_pages_added_behind() {
        let mut d = DirtyPages::empty(&l());
        for p in [3, 4, 5, 63, 64, 65, 66, 90] {
            d.mark(p * PAGE);
        }
        assert_eq!(d.take_run(256), Some((3 * PAGE, 3)));
        assert_eq!(d.take_run(256), Some((63 * PAGE, 4)));
        // Marked behind the cursor: found after the rest.
        d.mark(PAGE);
        assert_eq!(d.take_run(256), Some((90 * PAGE, 1)));
        assert_eq!(d.take_run(256), Some((PAGE, 1)));
        assert_eq!(d.take_run(256), None);
        assert_eq!(d.count(), 0);
    }

    #[test]
    fn marks_and_kvm_words_merge_and_count_each_page_once() {
        let mut d = DirtyPages::empty(&l());
        d.mark(5 * PAGE + 12);
        d.mark(5 * PAGE);
        d.mark((1 << 32) + 2 * PAGE);
        d.mark(200 * PAGE); // outside RAM
        d.or_words(0, &[1 << 5 | 1 << 6, u64::MAX]); // bits past page 99 dropped
        assert_eq!(d.count(), 1 + 1 + 1 + 36);
        let mut other = DirtyPages::empty(&l());
        other.mark((1 << 32) + PAGE);
        d.merge(&other);
        assert_eq!(d.count(), 40);
        let (pages, _) = drain(&mut d, 1000);
        assert_eq!(pages.len(), 40);
    }
}
