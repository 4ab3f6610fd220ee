//! The boot GDT (null, code64 0x08, data 0x10, code32 0x18) and the KVM
//! segment descriptors that match its entries.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;

/// Packs a GDT entry from flags (the 0xF0F0 nibbles), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, in the order of `docs/platform.md`.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),            // null
    gdt_entry(0xa09b, 0, 0xfffff), // code64: L, P, S, execute/read, accessed
    gdt_entry(0xc093, 0, 0xfffff), // data: D/B, G, P, S, read/write, accessed
    gdt_entry(0xc09b, 0, 0xfffff), // code32
];

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32
}

/// The KVM segment register value for GDT entry `entry` at `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = limit(entry);
    kvm_segment {
        base: base(entry),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_long_mode_present_code() {
        let s = segment_from_gdt(BOOT_GDT[1], CODE64_SELECTOR);
        assert_eq!((s.l, s.db, s.present, s.s, s.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn data_segment_is_flat_read_write() {
        let s = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
        assert_eq!((s.l, s.db, s.type_, s.g), (0, 1, 3, 1));
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn entries_match_the_guest_runtime_gdt() {
        assert_eq!(BOOT_GDT[1] & !0x100_0000_0000, 0x00af_9a00_0000_ffff);
        assert_eq!(BOOT_GDT[2] & !0x100_0000_0000, 0x00cf_9200_0000_ffff);
    }
}
