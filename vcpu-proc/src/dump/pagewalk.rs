//! `paging: true`: the guest's virtual mappings, found by walking its
//! 4-level page tables from CR3 (as QEMU's x86 `cpu_get_memory_mapping`),
//! kept where they land in RAM and merged where both addresses continue.

use vm_memory::{Bytes, GuestAddress};

use super::elf::{Block, Mapping};
use crate::memory::GuestMemoryMmap;

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Most page-table entries one walk reads: tables that point at each
/// other can make a walk arbitrarily long, and the guest is stopped
/// while it runs.
pub const WALK_BUDGET: u64 = 1 << 26;

/// The guest's tables need more than [`WALK_BUDGET`] entry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Appends the mappings of the 4-level tables at `cr3` to `out`, skipping
/// pages outside `ram` (device memory is not dumped).
pub fn walk_4level(
    mem: &GuestMemoryMmap,
    ram: &[Block],
    cr3: u64,
    out: &mut Vec<Mapping>,
) -> Result<(), TooLarge> {
    walk_with_budget(mem, ram, cr3, out, WALK_BUDGET)
}

/// Most mappings a dump keeps (each is a program header).
pub const MAX_MAPPINGS: usize = 1 << 20;

fn walk_with_budget(
    mem: &GuestMemoryMmap,
    ram: &[Block],
    cr3: u64,
    out: &mut Vec<Mapping>,
    mut budget: u64,
) -> Result<(), TooLarge> {
    let mut w = Walk {
        mem,
        ram,
        out,
        budget: &mut budget,
    };
    w.walk(cr3 & ADDR_MASK, 4, 0)
}

struct Walk<'a> {
    mem: &'a GuestMemoryMmap,
    ram: &'a [Block],
    out: &'a mut Vec<Mapping>,
    budget: &'a mut u64,
}

fn level_shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

/// Sign-extends a 48-bit linear address.
fn canonical(va: u64) -> u64 {
    (((va << 16) as i64) >> 16) as u64
}

impl Walk<'_> {
    fn walk(&mut self, table: u64, level: u32, va_base: u64) -> Result<(), TooLarge> {
        let shift = level_shift(level);
        for i in 0..512u64 {
            *self.budget = self.budget.checked_sub(1).ok_or(TooLarge)?;
            let Ok(entry) = self.mem.read_obj::<u64>(GuestAddress(table + i * 8)) else {
                return Ok(());
            };
            if entry & PRESENT == 0 {
                continue;
            }
            let va = va_base | (i << shift);
            let leaf = level == 1 || (level <= 3 && entry & PAGE_SIZE_BIT != 0);
            if !leaf {
                self.walk(entry & ADDR_MASK, level - 1, va)?;
                continue;
            }
            let size = 1u64 << shift;
            let pa = entry & ADDR_MASK & !(size - 1);
            if !in_ram(self.ram, pa, size) {
                continue;
            }
            if self.out.len() >= MAX_MAPPINGS {
                return Err(TooLarge);
            }
            add_merged(
                self.out,
                Mapping {
                    vaddr: canonical(va),
                    paddr: pa,
                    len: size,
                },
            );
        }
        Ok(())
    }
}

fn in_ram(ram: &[Block], pa: u64, size: u64) -> bool {
    ram.iter()
        .any(|b| pa >= b.gpa && pa - b.gpa < b.len && size <= b.len - (pa - b.gpa))
}

/// Adds `m`, extending the last mapping when both its virtual and
/// physical ends meet `m` (the walk goes in virtual order).
fn add_merged(out: &mut Vec<Mapping>, m: Mapping) {
    if let Some(last) = out.last_mut() {
        if last.vaddr.wrapping_add(last.len) == m.vaddr && last.paddr + last.len == m.paddr {
            last.len += m.len;
            return;
        }
    }
    out.push(m);
}

/// Sorts by physical address (QEMU's list order) and drops exact
/// duplicates (several vCPUs sharing tables).
pub fn finish(mut maps: Vec<Mapping>) -> Vec<Mapping> {
    maps.sort_by_key(|m| (m.paddr, m.vaddr, m.len));
    maps.dedup();
    maps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    #[test]
    fn walk_finds_a_2mib_identity_page_and_merges_4k_pages() {
        let m = mem();
        let ram = [Block {
            gpa: 0,
            len: 0x100_0000,
        }];
        // PML4 at 0x1000 → PDPT 0x2000 → PD 0x3000.
        m.write_obj(0x2000u64 | 3, GuestAddress(0x1000)).unwrap();
        m.write_obj(0x3000u64 | 3, GuestAddress(0x2000)).unwrap();
        // PD[0]: 2 MiB page at 0.
        m.write_obj(0x83u64, GuestAddress(0x3000)).unwrap();
        // PD[1] → PT at 0x4000 with two adjacent 4K pages mapping 0x60_0000..
        m.write_obj(0x4000u64 | 3, GuestAddress(0x3008)).unwrap();
        m.write_obj(0x60_0000u64 | 3, GuestAddress(0x4000)).unwrap();
        m.write_obj(0x60_1000u64 | 3, GuestAddress(0x4008)).unwrap();
        // PD[2]: a 2 MiB page outside RAM, skipped.
        m.write_obj(0x4000_0000u64 | 0x83, GuestAddress(0x3010))
            .unwrap();
        let mut out = Vec::new();
        walk_4level(&m, &ram, 0x1000, &mut out).unwrap();
        let out = finish(out);
        assert_eq!(
            out,
            vec![
                Mapping {
                    vaddr: 0,
                    paddr: 0,
                    len: 0x20_0000
                },
                Mapping {
                    vaddr: 0x20_0000,
                    paddr: 0x60_0000,
                    len: 0x2000
                },
            ]
        );
    }

    #[test]
    fn self_referencing_tables_end_the_walk_with_an_error() {
        let m = mem();
        let ram = [Block {
            gpa: 0,
            len: 0x100_0000,
        }];
        // Every entry of every level points back at the same table.
        for i in 0..512u64 {
            m.write_obj(0x1000u64 | 3, GuestAddress(0x1000 + i * 8))
                .unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(
            walk_with_budget(&m, &ram, 0x1000, &mut out, 10_000),
            Err(TooLarge)
        );
    }

    #[test]
    fn upper_half_addresses_are_canonical() {
        assert_eq!(canonical(0x8000_0000_0000), 0xffff_8000_0000_0000);
        assert_eq!(canonical(0x7fff_ffff_f000), 0x7fff_ffff_f000);
    }
}
