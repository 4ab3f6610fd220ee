//! Identity-mapped boot page tables (first 4 GiB, 2 MiB pages) and a
//! software page walk used to read the instruction bytes of a crashed guest.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::memory::GuestMemoryMmap;

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_BIT: u64 = 0x80;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Writes the PML4, the PDPT and four page directories.
pub fn write_boot_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))?;
    for pd in 0..4u64 {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPTE_START + pd * 8))?;
        let mut entries = [0u8; 4096];
        for i in 0..512u64 {
            let phys = ((pd << 9) + i) << 21;
            let e = phys | PRESENT_RW | PAGE_SIZE_BIT;
            let off = (i * 8) as usize;
            entries[off..off + 8].copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd_addr))?;
    }
    Ok(())
}

/// Translates a 4-level-paged linear address through the tables at `cr3`;
/// `None` when an entry is missing or outside memory.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, linear: u64) -> Option<u64> {
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4u32).rev() {
        let idx = (linear >> (12 + 9 * level)) & 0x1ff;
        let e: u64 = mem.read_obj(GuestAddress(table + idx * 8)).ok()?;
        if e & 1 == 0 {
            return None;
        }
        if (level == 1 || level == 2) && e & PAGE_SIZE_BIT != 0 {
            let page_bits = 12 + 9 * level;
            let mask = (1u64 << page_bits) - 1;
            return Some((e & ADDR_MASK & !mask) | (linear & mask));
        }
        table = e & ADDR_MASK;
    }
    Some(table | (linear & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_tables_identity_map_the_first_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_page_tables(&mem).unwrap();
        for a in [0u64, 0x10_0123, 0x4000_0000, 0xfee0_0010, 0xffff_fff0] {
            assert_eq!(translate(&mem, PML4_START, a), Some(a));
        }
        assert_eq!(translate(&mem, PML4_START, 0x1_0000_0000), None);
    }
}
