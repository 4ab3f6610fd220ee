//! The CPUID each vCPU sees: KVM's supported set, with the APIC id and
//! topology of this vCPU (one core per vCPU, one socket), the hypervisor
//! bit, and no PMU.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn topology_leaf(e: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32) {
    let level = e.index;
    e.edx = apic_id;
    e.ecx = level & 0xff;
    match level {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx |= LEVEL_TYPE_SMT << 8;
        }
        1 => {
            e.eax = bits_for(cpus);
            e.ebx = cpus;
            e.ecx |= LEVEL_TYPE_CORE << 8;
        }
        _ => {
            e.eax = 0;
            e.ebx = 0;
        }
    }
}

/// Adjusts `entries` (KVM_GET_SUPPORTED_CPUID) for vCPU `index` of `cpus`.
pub fn filter_entries(entries: &mut [kvm_cpuid_entry2], index: u32, cpus: u32) {
    let apic_id = index;
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (apic_id << 24) | (cpus.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= HYPERVISOR_BIT;
                if cpus > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            4 => {
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cpus - 1) & 0x3f) << 26);
            }
            6 => {
                // No power management interfaces (EPB, HWP).
                e.ecx &= !(1 << 3);
            }
            0xa => {
                // No architectural PMU.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => topology_leaf(e, apic_id, cpus),
            _ => {}
        }
    }
}

/// Filters `cpuid` in place for vCPU `index` of `cpus`.
pub fn filter(cpuid: &mut CpuId, index: u32, cpus: u32) {
    filter_entries(cpuid.as_mut_slice(), index, cpus);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = [leaf(1, 0)];
        filter_entries(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e[0].edx & HTT_BIT, 0);
    }

    #[test]
    fn topology_leaf_describes_one_core_per_vcpu() {
        let mut e = [leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        filter_entries(&mut e, 2, 4);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx >> 8), (0, 1, 1));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (2, 4, 2));
        assert_eq!((e[2].ebx, e[2].ecx >> 8), (0, 0));
        assert!(e.iter().all(|x| x.edx == 2));
    }

    #[test]
    fn bits_for_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(bits_for), [0, 1, 2, 2, 3, 3, 4]);
    }
}
