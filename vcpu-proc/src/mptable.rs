//! The Intel MultiProcessor table (spec 1.4) for kernels without ACPI:
//! floating pointer at 0x9fc00, then the configuration table with one
//! processor entry per possible CPU (enabled if present, with its
//! topology APIC id), the ISA bus, the IOAPIC, the ISA interrupts
//! (IRQ 0 on IOAPIC pin 2, like the MADT's override) and the LINT pins.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::hotplug::PossibleCpus;
use crate::layout;
use crate::memory::GuestMemoryMmap;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ID: u8 = 0;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201; // FPU, APIC
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const ISA_IRQS: u8 = 16;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

fn intsrc(kind: u8, entry_type: u8, src_irq: u8, dst_apic: u8, dst_pin: u8) -> [u8; 8] {
    [kind, entry_type, 0, 0, 0, src_irq, dst_apic, dst_pin]
}

/// The floating pointer followed by the configuration table, for `cpus`.
pub fn build(cpus: &PossibleCpus) -> Vec<u8> {
    let table_addr = layout::MPTABLE_START + 16;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for (i, (&apic_id, &present)) in cpus.apic_ids.iter().zip(&cpus.present).enumerate() {
        let flags = if present { CPU_ENABLED } else { 0 } | if i == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[0, apic_id as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, IOAPIC_ID, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        let (kind, pin) = match irq {
            0 => (MP_INT, 2),
            2 => (MP_EXTINT, 0),
            n => (MP_INT, n),
        };
        entries.extend_from_slice(&intsrc(3, kind, irq, IOAPIC_ID, pin));
        count += 1;
    }
    entries.extend_from_slice(&intsrc(4, MP_EXTINT, 0, 0xff, 0));
    entries.extend_from_slice(&intsrc(4, MP_NMI, 0, 0xff, 1));
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum
    table.extend_from_slice(b"BULKHEAD");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    mpf
}

/// Writes the MP table for `cpus` at its platform address.
pub fn write(mem: &GuestMemoryMmap, cpus: &PossibleCpus) -> Result<(), GuestMemoryError> {
    mem.write_slice(&build(cpus), GuestAddress(layout::MPTABLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn pointer_and_table_checksum_to_zero() {
        let t = build(&PossibleCpus::flat(4));
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(16 + len, t.len());
        assert_eq!(sum(&t[16..]), 0);
    }

    #[test]
    fn one_processor_entry_per_cpu_and_only_cpu0_is_bsp() {
        let t = build(&PossibleCpus::at_start(
            &ipc_proto::cpu_topology::CpuTopology::flat(4),
            3,
        ));
        let procs: Vec<&[u8]> = t[16 + 44..16 + 44 + 80].chunks(20).collect();
        assert!(procs.iter().all(|p| p[0] == 0));
        assert_eq!(
            procs.iter().map(|p| p[3]).collect::<Vec<_>>(),
            vec![3, 1, 1, 0],
            "the fourth, possible but absent, is disabled"
        );
    }
}
