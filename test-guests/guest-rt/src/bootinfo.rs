//! What the loader tells the guest: the kernel command line and the RAM
//! map, from the Linux zero page (`boot_params`, RSI at the 64-bit entry:
//! Bulkhead) or the PVH `hvm_start_info` (EBX at the PVH entry: QEMU).
//! The entry code stores both pointers (`guest_rt_zero_page`,
//! `guest_rt_pvh_start_info`) before anything else touches memory.

use core::ptr::{addr_of, read_unaligned, read_volatile};

extern "C" {
    static guest_rt_zero_page: u64;
    static guest_rt_pvh_start_info: u64;
}

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// `boot_params.e820_entries` (u8).
const ZP_E820_ENTRIES: u64 = 0x1e8;
/// `boot_params.hdr.cmd_line_ptr` (u32).
const ZP_CMD_LINE_PTR: u64 = 0x228;
/// `boot_params.e820_table` (20-byte entries).
const ZP_E820_TABLE: u64 = 0x2d0;
/// Entries of `boot_params.e820_table`.
const ZP_E820_MAX: u8 = 128;
/// E820 / PVH memory map type of usable RAM.
const E820_RAM: u32 = 1;
/// Longest command line read (Bulkhead's `CMDLINE_MAX_SIZE`).
const CMDLINE_MAX: usize = 4096;

/// Where the boot information came from.
#[derive(Clone, Copy, Debug)]
enum Source {
    ZeroPage(u64),
    Pvh(u64),
    None,
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: only called with addresses inside the zero page or the PVH
    // start info and the tables they point to, which the loader placed in
    // identity-mapped low RAM.
    unsafe { read_unaligned(addr as *const T) }
}

fn source() -> Source {
    // SAFETY: plain reads of two u64 the entry code wrote before Rust ran.
    let (zp, pvh) = unsafe {
        (
            read_volatile(addr_of!(guest_rt_zero_page)),
            read_volatile(addr_of!(guest_rt_pvh_start_info)),
        )
    };
    if pvh != 0 && read::<u32>(pvh) == PVH_MAGIC {
        Source::Pvh(pvh)
    } else if zp != 0 {
        Source::ZeroPage(zp)
    } else {
        Source::None
    }
}

/// The kernel command line (empty if the loader gave none or it is not
/// ASCII).
pub fn cmdline() -> &'static str {
    let ptr = match source() {
        Source::ZeroPage(zp) => u64::from(read::<u32>(zp + ZP_CMD_LINE_PTR)),
        Source::Pvh(si) => read::<u64>(si + 24),
        Source::None => 0,
    };
    if ptr == 0 {
        return "";
    }
    let mut len = 0;
    while len < CMDLINE_MAX && read::<u8>(ptr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes at `ptr` are the loader's NUL-terminated command
    // line, which nothing writes afterwards.
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// The value of `key=value` on the command line, if present (last wins).
pub fn param(key: &str) -> Option<&'static str> {
    let mut found = None;
    for word in cmdline().split_ascii_whitespace() {
        if let Some((k, v)) = word.split_once('=') {
            if k == key {
                found = Some(v);
            }
        }
    }
    found
}

/// Usable RAM regions `(start, length)` from the loader's memory map.
pub fn ram_regions() -> RamRegions {
    let (table, count, stride) = match source() {
        Source::ZeroPage(zp) => (
            zp + ZP_E820_TABLE,
            u32::from(read::<u8>(zp + ZP_E820_ENTRIES).min(ZP_E820_MAX)),
            20,
        ),
        Source::Pvh(si) if read::<u32>(si + 4) >= 1 => {
            (read::<u64>(si + 40), read::<u32>(si + 48), 24)
        }
        Source::Pvh(_) | Source::None => (0, 0, 0),
    };
    RamRegions {
        table,
        count,
        stride,
        next: 0,
    }
}

/// Iterator over the usable RAM of the memory map (see [`ram_regions`]).
pub struct RamRegions {
    table: u64,
    count: u32,
    stride: u64,
    next: u32,
}

impl Iterator for RamRegions {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        while self.next < self.count {
            let e = self.table + u64::from(self.next) * self.stride;
            self.next += 1;
            if read::<u32>(e + 16) == E820_RAM {
                return Some((read::<u64>(e), read::<u64>(e + 8)));
            }
        }
        None
    }
}
