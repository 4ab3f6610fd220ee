//! The `-smp` topology as the broker and vcpu-proc share it: the possible
//! CPUs (`maxcpus` slots), each slot's socket/die/core/thread ids and its
//! x86 APIC id, numbered as QEMU's pc machine numbers them
//! (`x86_topo_ids_from_idx`, `x86_apicid_from_topo_ids`): a slot index
//! counts threads fastest, then cores, dies, sockets; the APIC id packs
//! each level into ceil(log2(count)) bits.

use serde::{Deserialize, Serialize};

/// `-smp`'s hierarchy and the number of possible CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    /// `maxcpus`: the number of possible CPUs (slots).
    pub max_cpus: u32,
    /// `sockets`.
    pub sockets: u32,
    /// `dies` per socket.
    pub dies: u32,
    /// `cores` per die.
    pub cores: u32,
    /// `threads` per core.
    pub threads: u32,
}

/// Where one slot sits in the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopoIds {
    /// Socket.
    pub socket: u32,
    /// Die within the socket.
    pub die: u32,
    /// Core within the die.
    pub core: u32,
    /// Thread within the core.
    pub thread: u32,
}

/// Bits needed to number `n` items (ceil(log2(n))), QEMU's
/// `apicid_bitwidth_for_count`.
pub fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl CpuTopology {
    /// One socket of `cpus` cores, one thread each, no spare slots.
    pub fn flat(cpus: u32) -> Self {
        CpuTopology {
            max_cpus: cpus,
            sockets: 1,
            dies: 1,
            cores: cpus,
            threads: 1,
        }
    }

    /// Width of the thread field of the APIC id.
    pub fn smt_width(&self) -> u32 {
        bits_for(self.threads)
    }

    /// Width of the core field.
    pub fn core_width(&self) -> u32 {
        bits_for(self.cores)
    }

    /// Width of the die field.
    pub fn die_width(&self) -> u32 {
        bits_for(self.dies)
    }

    /// Offset of the core field.
    pub fn core_offset(&self) -> u32 {
        self.smt_width()
    }

    /// Offset of the die field.
    pub fn die_offset(&self) -> u32 {
        self.core_offset() + self.core_width()
    }

    /// Offset of the package (socket) field.
    pub fn pkg_offset(&self) -> u32 {
        self.die_offset() + self.die_width()
    }

    /// The ids of slot `index`.
    pub fn ids(&self, index: u32) -> CpuTopoIds {
        let threads = self.threads.max(1);
        let cores = self.cores.max(1);
        let dies = self.dies.max(1);
        CpuTopoIds {
            thread: index % threads,
            core: index / threads % cores,
            die: index / (threads * cores) % dies,
            socket: index / (threads * cores * dies),
        }
    }

    /// The APIC id of the CPU at `ids`.
    pub fn apic_id_of(&self, ids: CpuTopoIds) -> u32 {
        (ids.socket << self.pkg_offset())
            | (ids.die << self.die_offset())
            | (ids.core << self.core_offset())
            | ids.thread
    }

    /// The APIC id of slot `index`.
    pub fn apic_id(&self, index: u32) -> u32 {
        self.apic_id_of(self.ids(index))
    }

    /// The slot of the CPU at `ids`, if they are in range.
    pub fn index_of(&self, ids: CpuTopoIds) -> Option<u32> {
        (ids.socket < self.sockets
            && ids.die < self.dies
            && ids.core < self.cores
            && ids.thread < self.threads)
            .then(|| {
                ((ids.socket * self.dies + ids.die) * self.cores + ids.core) * self.threads
                    + ids.thread
            })
            .filter(|i| *i < self.max_cpus)
    }

    /// Logical processors per package (CPUID leaf 1 and 0xB level 2).
    pub fn threads_per_package(&self) -> u32 {
        self.dies * self.cores * self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(max_cpus: u32, sockets: u32, dies: u32, cores: u32, threads: u32) -> CpuTopology {
        CpuTopology {
            max_cpus,
            sockets,
            dies,
            cores,
            threads,
        }
    }

    #[test]
    fn flat_topology_numbers_apic_ids_like_slots() {
        let t = CpuTopology::flat(4);
        assert_eq!(
            (0..4).map(|i| t.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn apic_ids_leave_gaps_for_counts_that_are_not_powers_of_two() {
        // QEMU: -smp 6,sockets=2,cores=3 → APIC ids 0,1,2,4,5,6.
        let t = topo(6, 2, 1, 3, 1);
        assert_eq!(
            (0..6).map(|i| t.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 4, 5, 6]
        );
    }

    #[test]
    fn ids_and_index_round_trip_with_dies_and_threads() {
        let t = topo(16, 2, 2, 2, 2);
        for i in 0..16 {
            assert_eq!(t.index_of(t.ids(i)), Some(i));
        }
        let ids = t.ids(13);
        assert_eq!((ids.socket, ids.die, ids.core, ids.thread), (1, 1, 0, 1));
        assert_eq!(t.apic_id(13), 0b1101);
        assert_eq!(t.threads_per_package(), 8);
    }

    #[test]
    fn out_of_range_ids_have_no_slot() {
        let t = topo(4, 1, 1, 4, 1);
        let ids = |socket, core| CpuTopoIds {
            socket,
            die: 0,
            core,
            thread: 0,
        };
        assert_eq!(t.index_of(ids(0, 3)), Some(3));
        assert_eq!(t.index_of(ids(0, 4)), None);
        assert_eq!(t.index_of(ids(1, 0)), None);
    }
}
