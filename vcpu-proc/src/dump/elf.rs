//! The ELF64 core's layout, as QEMU's `dump-guest-memory` writes it:
//! ELF header, program headers (PT_NOTE first, then one PT_LOAD per memory
//! mapping), a section header only when there are too many program
//! headers for `e_phnum`, the notes, then guest memory — every dumped RAM
//! block in guest-physical order. Written by hand: the ELF crates in
//! reach read ELF files but do not build core files.

/// A piece of guest RAM that goes into the file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A PT_LOAD: guest-virtual `vaddr` maps guest-physical `paddr` for `len`
/// bytes (`vaddr` 0 for a physical-only mapping, shown as `paddr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Guest-virtual start (0 when not paging).
    pub vaddr: u64,
    /// Guest-physical start.
    pub paddr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One ELF note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Owner name (without NUL).
    pub name: &'static str,
    /// Note type.
    pub kind: u32,
    /// Descriptor.
    pub desc: Vec<u8>,
}

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
/// `PN_XNUM`: e_phnum's escape; the real count is in section 0's sh_info.
const PN_XNUM: u64 = 0xffff;

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// The notes as the PT_NOTE segment holds them.
pub fn encode_notes(notes: &[Note]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in notes {
        let namesz = n.name.len() + 1;
        out.extend_from_slice(&(namesz as u32).to_le_bytes());
        out.extend_from_slice(&(n.desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&n.kind.to_le_bytes());
        let start = out.len();
        out.extend_from_slice(n.name.as_bytes());
        out.resize(start + pad4(namesz), 0);
        let start = out.len();
        out.extend_from_slice(&n.desc);
        out.resize(start + pad4(n.desc.len()), 0);
    }
    out
}

/// RAM `ram` (guest-physical blocks) limited to `[begin, begin + length)`
/// when filtered; empty pieces dropped.
pub fn filter_blocks(ram: &[Block], filter: Option<(i64, i64)>) -> Vec<Block> {
    let Some((begin, length)) = filter else {
        return ram.to_vec();
    };
    let (lo, hi) = (i128::from(begin), i128::from(begin) + i128::from(length));
    ram.iter()
        .filter_map(|b| {
            let start = lo.max(i128::from(b.gpa));
            let end = hi.min(i128::from(b.gpa) + i128::from(b.len));
            (end > start).then(|| Block {
                gpa: start as u64,
                len: (end - start) as u64,
            })
        })
        .collect()
}

/// Mappings limited to guest-physical `[begin, begin + length)` (QEMU's
/// `memory_mapping_filter`): clipped, the virtual start moved with the
/// physical one.
pub fn filter_mappings(maps: &[Mapping], filter: Option<(i64, i64)>) -> Vec<Mapping> {
    let Some((begin, length)) = filter else {
        return maps.to_vec();
    };
    let (lo, hi) = (i128::from(begin), i128::from(begin) + i128::from(length));
    maps.iter()
        .filter_map(|m| {
            let start = lo.max(i128::from(m.paddr));
            let end = hi.min(i128::from(m.paddr) + i128::from(m.len));
            (end > start).then(|| {
                let skip = (start - i128::from(m.paddr)) as u64;
                Mapping {
                    vaddr: if m.vaddr == 0 { 0 } else { m.vaddr + skip },
                    paddr: start as u64,
                    len: (end - start) as u64,
                }
            })
        })
        .collect()
}

/// The file's start: everything before the memory, and where each block's
/// bytes go.
#[derive(Debug, Clone)]
pub struct Layout {
    /// ELF header, program headers, section header (if any) and notes.
    pub head: Vec<u8>,
    /// The blocks written after `head`, in order.
    pub blocks: Vec<Block>,
}

impl Layout {
    /// Lays out a core of `blocks` (already filtered), described by
    /// `maps`, with `notes`.
    pub fn new(blocks: Vec<Block>, maps: &[Mapping], notes: &[Note]) -> Self {
        let notes = encode_notes(notes);
        let phnum = 1 + maps.len() as u64;
        let have_section = phnum >= PN_XNUM;
        let phoff = EHDR_SIZE;
        let shoff = phoff + PHDR_SIZE * phnum;
        let note_offset = shoff + if have_section { SHDR_SIZE } else { 0 };
        let memory_offset = note_offset + notes.len() as u64;

        let mut h = Vec::with_capacity(memory_offset as usize);
        // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, SysV ABI.
        h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&ET_CORE.to_le_bytes());
        h.extend_from_slice(&EM_X86_64.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // e_version
        h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
        h.extend_from_slice(&phoff.to_le_bytes());
        h.extend_from_slice(&(if have_section { shoff } else { 0 }).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        h.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        h.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        h.extend_from_slice(&(phnum.min(PN_XNUM) as u16).to_le_bytes());
        h.extend_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        h.extend_from_slice(&u16::from(have_section).to_le_bytes()); // e_shnum
        h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        debug_assert_eq!(h.len() as u64, EHDR_SIZE);

        phdr(
            &mut h,
            PT_NOTE,
            note_offset,
            0,
            0,
            notes.len() as u64,
            notes.len() as u64,
        );
        for m in maps {
            let (offset, filesz) = file_range(&blocks, memory_offset, m);
            let vaddr = if m.vaddr == 0 { m.paddr } else { m.vaddr };
            phdr(&mut h, PT_LOAD, offset, vaddr, m.paddr, filesz, m.len);
        }
        if have_section {
            // Section 0 (SHT_NULL) with the real program header count.
            let mut s = [0u8; SHDR_SIZE as usize];
            s[44..48].copy_from_slice(&(phnum.min(u64::from(u32::MAX)) as u32).to_le_bytes());
            h.extend_from_slice(&s);
        }
        h.extend_from_slice(&notes);
        Layout { head: h, blocks }
    }

    /// Guest memory bytes after the head.
    pub fn total(&self) -> u64 {
        self.blocks.iter().map(|b| b.len).sum()
    }
}

fn phdr(h: &mut Vec<u8>, kind: u32, offset: u64, vaddr: u64, paddr: u64, filesz: u64, memsz: u64) {
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // p_flags, 0 as in QEMU's cores
    h.extend_from_slice(&offset.to_le_bytes());
    h.extend_from_slice(&vaddr.to_le_bytes());
    h.extend_from_slice(&paddr.to_le_bytes());
    h.extend_from_slice(&filesz.to_le_bytes());
    h.extend_from_slice(&memsz.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // p_align
}

/// Where mapping `m`'s physical start lies in the file and how much of it
/// the file holds (clamped to its block; the rest reads as zeros). A
/// mapping outside every dumped block has no bytes in the file (offset 0,
/// size 0; QEMU writes offset -1 there).
fn file_range(blocks: &[Block], memory_offset: u64, m: &Mapping) -> (u64, u64) {
    let mut offset = memory_offset;
    for b in blocks {
        if m.paddr >= b.gpa && m.paddr - b.gpa < b.len {
            let within = m.paddr - b.gpa;
            return (offset + within, m.len.min(b.len - within));
        }
        offset += b.len;
    }
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(d: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn notes_are_padded_to_four_bytes() {
        let n = encode_notes(&[Note {
            name: "CORE",
            kind: 1,
            desc: vec![9; 5],
        }]);
        // 12-byte header, "CORE\0" padded to 8, 5 bytes padded to 8.
        assert_eq!(n.len(), 28);
        assert_eq!(&n[0..12], &[5, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&n[12..17], b"CORE\0");
        assert_eq!(&n[20..25], &[9; 5]);
    }

    #[test]
    fn layout_puts_note_first_and_each_load_at_its_block() {
        let blocks = vec![
            Block {
                gpa: 0,
                len: 0x1000,
            },
            Block {
                gpa: 0x1_0000_0000,
                len: 0x2000,
            },
        ];
        let maps: Vec<Mapping> = blocks
            .iter()
            .map(|b| Mapping {
                vaddr: 0,
                paddr: b.gpa,
                len: b.len,
            })
            .collect();
        let l = Layout::new(blocks, &maps, &[]);
        let h = &l.head;
        assert_eq!(&h[0..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([h[56], h[57]]), 3); // e_phnum
        let mem = h.len() as u64;
        // PT_NOTE, then the loads.
        assert_eq!(u32::from_le_bytes(h[64..68].try_into().unwrap()), PT_NOTE);
        let load2 = 64 + 2 * 56;
        assert_eq!(u64_at(h, load2 + 8), mem + 0x1000); // p_offset
        assert_eq!(u64_at(h, load2 + 16), 0x1_0000_0000); // p_vaddr = p_paddr
        assert_eq!(u64_at(h, load2 + 32), 0x2000); // p_filesz
        assert_eq!(l.total(), 0x3000);
    }

    #[test]
    fn filters_clip_blocks_and_mappings_and_drop_what_is_outside() {
        let ram = [Block {
            gpa: 0,
            len: 0x10000,
        }];
        assert_eq!(
            filter_blocks(&ram, Some((0x1000, 0x2000))),
            vec![Block {
                gpa: 0x1000,
                len: 0x2000
            }]
        );
        assert!(filter_blocks(&ram, Some((0x20000, 0x1000))).is_empty());
        assert!(filter_blocks(&ram, Some((0x1000, -5))).is_empty());
        let maps = [Mapping {
            vaddr: 0xffff_8000_0000_0000,
            paddr: 0,
            len: 0x10000,
        }];
        let m = filter_mappings(&maps, Some((0x3000, 0x1000)));
        assert_eq!(
            m,
            vec![Mapping {
                vaddr: 0xffff_8000_0000_3000,
                paddr: 0x3000,
                len: 0x1000
            }]
        );
    }

    #[test]
    fn a_mapping_outside_the_dumped_blocks_has_no_file_bytes() {
        let blocks = vec![Block {
            gpa: 0,
            len: 0x1000,
        }];
        let m = Mapping {
            vaddr: 0x5000,
            paddr: 0x8000,
            len: 0x1000,
        };
        assert_eq!(file_range(&blocks, 100, &m), (0, 0));
        let m = Mapping {
            vaddr: 0x5000,
            paddr: 0x800,
            len: 0x1000,
        };
        assert_eq!(file_range(&blocks, 100, &m), (100 + 0x800, 0x800));
    }
}
