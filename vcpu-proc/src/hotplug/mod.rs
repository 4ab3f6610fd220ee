//! CPU hotplug through QEMU's ACPI CPU hotplug interface: the register
//! block at [`crate::layout::CPU_HOTPLUG_PORT`] ([`registers`]), its AML
//! and the processor devices of every possible CPU ([`aml`]), and adding
//! and removing vCPUs while the guest runs ([`vcpus`]). A plug raises the
//! GED's CPU hotplug event, whose `_EVT` calls `\_SB.CPUS.CSCN`, as
//! QEMU's arm `virt` machine does (QEMU's microvm has no CPU hotplug).

pub mod aml;
pub mod registers;
pub mod vcpus;

use ipc_proto::cpu_topology::CpuTopology;

pub use registers::CpuHotplugRegs;
pub use vcpus::{spawn_eject_thread, Unplug};

/// The possible CPUs as the firmware tables list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PossibleCpus {
    /// APIC id of each slot.
    pub apic_ids: Vec<u32>,
    /// Whether each slot holds a CPU now.
    pub present: Vec<bool>,
}

impl PossibleCpus {
    /// The slots of `topology`, the first `present` of which are plugged.
    pub fn at_start(topology: &CpuTopology, present: u32) -> Self {
        PossibleCpus {
            apic_ids: (0..topology.max_cpus)
                .map(|i| topology.apic_id(i))
                .collect(),
            present: (0..topology.max_cpus).map(|i| i < present).collect(),
        }
    }

    /// `cpus` CPUs, all present, one core each (tests, `--dump-acpi`).
    pub fn flat(cpus: u32) -> Self {
        Self::at_start(&CpuTopology::flat(cpus), cpus)
    }

    /// What the register block says now.
    pub fn from_regs(regs: &CpuHotplugRegs) -> Self {
        PossibleCpus {
            apic_ids: regs.slots().iter().map(|s| s.apic_id).collect(),
            present: regs.slots().iter().map(|s| s.present).collect(),
        }
    }
}
