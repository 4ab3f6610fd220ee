//! The CPUID each vCPU sees: KVM's supported set, with this vCPU's APIC id
//! and the `-smp` topology as QEMU describes it (leaf 1's logical count,
//! leaf 4's core and cache-sharing counts, leaf 0xB's SMT and core levels,
//! leaf 0x1F's die level when there is more than one die), the hypervisor
//! bit, and no PMU.

use ipc_proto::cpu_topology::CpuTopology;
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
const LEVEL_TYPE_DIE: u32 = 5;

/// Leaf 0xB (`extended` false) or 0x1F sub-leaf `e.index`: (shift to the
/// next level's id, logical processors at this level, level type).
fn topology_level(t: &CpuTopology, extended: bool, level: u32) -> Option<(u32, u32, u32)> {
    let threads = t.threads;
    let per_die = t.cores * t.threads;
    match (extended, level) {
        (_, 0) => Some((t.core_offset(), threads, LEVEL_TYPE_SMT)),
        // Leaf 0xB has no die level: its core level spans the package.
        (false, 1) => Some((t.pkg_offset(), t.threads_per_package(), LEVEL_TYPE_CORE)),
        (true, 1) => Some((t.die_offset(), per_die, LEVEL_TYPE_CORE)),
        (true, 2) => Some((t.pkg_offset(), t.threads_per_package(), LEVEL_TYPE_DIE)),
        _ => None,
    }
}

fn topology_leaf(e: &mut kvm_cpuid_entry2, apic_id: u32, t: &CpuTopology) {
    let extended = e.function == 0x1f;
    if extended && t.dies <= 1 {
        // QEMU exposes leaf 0x1F only for a topology leaf 0xB cannot say.
        (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        return;
    }
    let level = e.index;
    e.edx = apic_id;
    e.ecx = level & 0xff;
    match topology_level(t, extended, level) {
        Some((shift, count, kind)) => {
            e.eax = shift;
            e.ebx = count;
            e.ecx |= kind << 8;
        }
        None => {
            e.eax = 0;
            e.ebx = 0;
        }
    }
}

/// Adjusts `entries` (KVM_GET_SUPPORTED_CPUID) for the vCPU with
/// `apic_id` in topology `t`.
pub fn filter_entries(entries: &mut [kvm_cpuid_entry2], apic_id: u32, t: &CpuTopology) {
    let per_pkg = t.threads_per_package();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (apic_id << 24) | (per_pkg.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= HYPERVISOR_BIT;
                if per_pkg > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            4 => {
                // QEMU: L1/L2 shared by a core's threads, L3 by a die;
                // EAX[31:26] = addressable core ids in the package - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let share_bits = if cache_level >= 3 {
                    t.die_offset()
                } else {
                    t.core_offset()
                };
                let sharing = (1u32 << share_bits) - 1;
                let cores = (1u32 << (t.pkg_offset() - t.core_offset())) - 1;
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((cores & 0x3f) << 26);
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
            0xb | 0x1f => topology_leaf(e, apic_id, t),
            _ => {}
        }
    }
}

/// Filters `cpuid` in place for the vCPU with `apic_id` in topology `t`.
pub fn filter(cpuid: &mut CpuId, apic_id: u32, t: &CpuTopology) {
    filter_entries(cpuid.as_mut_slice(), apic_id, t);
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
        filter_entries(&mut e, 3, &CpuTopology::flat(4));
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e[0].edx & HTT_BIT, 0);
    }

    #[test]
    fn topology_leaf_describes_one_core_per_vcpu() {
        let mut e = [leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        filter_entries(&mut e, 2, &CpuTopology::flat(4));
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx >> 8), (0, 1, 1));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (2, 4, 2));
        assert_eq!((e[2].ebx, e[2].ecx >> 8), (0, 0));
        assert!(e.iter().all(|x| x.edx == 2));
    }

    fn topo(sockets: u32, dies: u32, cores: u32, threads: u32) -> CpuTopology {
        CpuTopology {
            max_cpus: sockets * dies * cores * threads,
            sockets,
            dies,
            cores,
            threads,
        }
    }

    #[test]
    fn topology_leaves_describe_threads_cores_and_dies() {
        // 2 sockets x 2 dies x 3 cores x 2 threads: SMT 1 bit, core 2, die 1.
        let t = topo(2, 2, 3, 2);
        let mut b = [leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        filter_entries(&mut b, 9, &t);
        assert_eq!((b[0].eax, b[0].ebx, b[0].ecx >> 8), (1, 2, 1));
        assert_eq!((b[1].eax, b[1].ebx, b[1].ecx >> 8), (4, 12, 2));
        let mut f = [leaf(0x1f, 0), leaf(0x1f, 1), leaf(0x1f, 2), leaf(0x1f, 3)];
        filter_entries(&mut f, 9, &t);
        assert_eq!((f[1].eax, f[1].ebx, f[1].ecx >> 8), (3, 6, 2));
        assert_eq!((f[2].eax, f[2].ebx, f[2].ecx >> 8), (4, 12, 5));
        assert_eq!((f[3].ebx, f[3].ecx), (0, 3));
        let mut one = [leaf(1, 0)];
        filter_entries(&mut one, 9, &t);
        assert_eq!((one[0].ebx >> 24, (one[0].ebx >> 16) & 0xff), (9, 12));
    }

    #[test]
    fn leaf_0x1f_is_empty_with_one_die_and_leaf4_counts_core_ids() {
        let t = topo(1, 1, 4, 1);
        let mut e = [leaf(0x1f, 0), leaf(4, 0)];
        e[0].eax = 7;
        e[1].eax = 3 << 5; // an L3 cache
        filter_entries(&mut e, 1, &t);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (0, 0, 0, 0));
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[1].eax >> 14) & 0xfff, 3);
    }
}
