//! `cpuid`: prints the CPUID values `-cpu` decides (vendor, signature,
//! the feature words of leaves 1, 7 and 0x80000001, the brand string), one
//! `key=value` per line, so a test can compare bulkhead's `-cpu` with
//! QEMU's on the same command line.

#![no_std]
#![no_main]

use guest_rt::println;

guest_rt::guest!("cpuid", main);

fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

fn print_str(key: &str, words: &[u32]) {
    guest_rt::print!("{key}=");
    for w in words {
        for b in w.to_le_bytes() {
            if b != 0 {
                guest_rt::print!("{}", b as char);
            }
        }
    }
    println!();
}

fn main() -> ! {
    let (max, b, c, d) = cpuid(0, 0);
    print_str("vendor", &[b, d, c]);
    let (sig, _, ecx1, edx1) = cpuid(1, 0);
    println!("signature={sig:#x}");
    println!("leaf1.ecx={:#010x}", ecx1 & !(1 << 27)); // OSXSAVE follows CR4
    println!("leaf1.edx={edx1:#010x}");
    if max >= 7 {
        let (_, b7, c7, _) = cpuid(7, 0);
        println!("leaf7.ebx={b7:#010x}");
        println!("leaf7.ecx={:#010x}", c7 & !(1 << 4)); // OSPKE follows CR4
    }
    let (xmax, ..) = cpuid(0x8000_0000, 0);
    if xmax >= 0x8000_0001 {
        let (_, _, c, d) = cpuid(0x8000_0001, 0);
        println!("ext1.ecx={c:#010x}");
        println!("ext1.edx={d:#010x}");
    }
    if xmax >= 0x8000_0004 {
        let mut brand = [0u32; 12];
        for (i, leaf) in (0x8000_0002..=0x8000_0004).enumerate() {
            let (a, b, c, d) = cpuid(leaf, 0);
            brand[i * 4..i * 4 + 4].copy_from_slice(&[a, b, c, d]);
        }
        print_str("brand", &brand);
    }
    guest_rt::exit::pass()
}
