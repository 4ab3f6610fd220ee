//! Firmware tables built with rust-vmm `acpi_tables`: RSDP at 0xe0000, then
//! XSDT, FADT (hardware-reduced, with the sleep and reset registers), MADT
//! (a LAPIC per possible CPU — enabled if present, else online-capable —,
//! IOAPIC, the PIT's interrupt source override, LINT1 NMI) and a DSDT
//! holding COM1, the power button, the Generic Event Device, the CPU
//! hotplug registers and processor devices ([`crate::hotplug::aml`]), the
//! `_S5_` package and the virtio-mmio devices (`LNRO0005`).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::hotplug::PossibleCpus;
use crate::layout;
use crate::memory::GuestMemoryMmap;

const OEM_ID: [u8; 6] = *b"BLKHD ";
const OEM_TABLE_ID: [u8; 8] = *b"BULKHEAD";
const OEM_REVISION: u32 = 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const MADT_PCAT_COMPAT: u32 = 1;
const IOAPIC_ID: u8 = 0;
const LAPIC_ENABLED: u8 = 1 << 0;
/// ACPI 6.3: a disabled LAPIC that can be brought online (hot-plugged);
/// Linux ignores disabled LAPICs without it in a MADT of revision 5.
const LAPIC_ONLINE_CAPABLE: u8 = 1 << 1;

/// A virtio-mmio device to declare in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// MMIO base.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Interrupt (GSI).
    pub gsi: u32,
}

/// Errors of building or writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables of {0} bytes do not fit below 1 MiB")]
    TooLarge(u64),
    /// Writing guest memory failed.
    #[error("cannot write the ACPI tables")]
    Memory(#[source] GuestMemoryError),
}

/// Result of ACPI operations.
pub type Result<T> = std::result::Result<T, AcpiError>;

/// One table and where it goes.
#[derive(Debug, Clone)]
pub struct Table {
    /// The signature (`RSDP` for the root pointer).
    pub name: String,
    /// Guest-physical address.
    pub addr: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

/// The DSDT body (AML) for `cpus` and `devices`.
pub fn dsdt_aml(cpus: &PossibleCpus, devices: &[VirtioMmioDevice]) -> Vec<u8> {
    let mut out = Vec::new();
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ONE),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(layout::COM1_PORT, layout::COM1_PORT, 0, 8),
                    &aml::Interrupt::new(true, true, false, false, layout::COM1_GSI),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut out);

    aml::Device::new(
        "_SB_.PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut out);

    let ged_base = layout::GED_ADDR as usize;
    let ged_size = layout::GED_SIZE as usize;
    let power_button = crate::devices::ged::EVENT_POWER_BUTTON;
    let cpu_hotplug = crate::devices::ged::EVENT_CPU_HOTPLUG;
    let scan = aml::MethodCall::new(crate::hotplug::aml::SCAN_METHOD.into(), vec![]);
    aml::Device::new(
        "_SB_.GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                    true,
                    true,
                    false,
                    false,
                    layout::GED_GSI,
                )]),
            ),
            &aml::OpRegion::new(
                "GDST".into(),
                aml::OpRegionSpace::SystemMemory,
                &ged_base,
                &ged_size,
            ),
            &aml::Field::new(
                "GDST".into(),
                aml::FieldAccessType::Byte,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::WriteAsZeroes,
                vec![aml::FieldEntry::Named(*b"GDAT", 8)],
            ),
            // _EVT: Local0 = GDAT (read-to-clear); if the power-button bit
            // is set, Notify(\_SB_.PWRB, 0x80); if the CPU hotplug bit is
            // set, \_SB_.CPUS.CSCN().
            &aml::Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    &aml::Store::new(&aml::Local(0), &aml::Path::new("GDAT")),
                    &aml::And::new(&aml::Local(1), &aml::Local(0), &power_button),
                    &aml::If::new(
                        &aml::Equal::new(&aml::Local(1), &power_button),
                        vec![&aml::Notify::new(&aml::Path::new("\\_SB_.PWRB"), &0x80u8)],
                    ),
                    &aml::And::new(&aml::Local(1), &aml::Local(0), &cpu_hotplug),
                    &aml::If::new(&aml::Equal::new(&aml::Local(1), &cpu_hotplug), vec![&scan]),
                ],
            ),
        ],
    )
    .to_aml_bytes(&mut out);

    out.extend_from_slice(&crate::hotplug::aml::cpus_aml(&cpus.apic_ids));

    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&layout::ACPI_S5_SLP_TYP]),
    )
    .to_aml_bytes(&mut out);

    for (i, d) in devices.iter().enumerate() {
        out.extend_from_slice(&virtio_mmio_aml(i, d));
    }
    out
}

/// AML of virtio-mmio device `index` (`\_SB_.VRxx`, `LNRO0005`); the hook
/// through which transports are declared to the guest.
pub fn virtio_mmio_aml(index: usize, d: &VirtioMmioDevice) -> Vec<u8> {
    let path = format!("_SB_.VR{:02X}", index & 0xff);
    let uid = index as u32;
    let mut out = Vec::new();
    aml::Device::new(
        path.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CCA".into(), &aml::ONE),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::Memory32Fixed::new(true, d.base as u32, d.size as u32),
                    &aml::Interrupt::new(true, true, false, false, d.gsi),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

fn sdt(sig: &[u8; 4], revision: u8) -> Sdt {
    Sdt::new(*sig, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION)
}

fn dsdt(cpus: &PossibleCpus, devices: &[VirtioMmioDevice]) -> Vec<u8> {
    let mut t = sdt(b"DSDT", 6);
    t.append_slice(&dsdt_aml(cpus, devices));
    t.update_checksum();
    t.as_slice().to_vec()
}

fn madt(cpus: &PossibleCpus) -> Vec<u8> {
    let mut t = sdt(b"APIC", 5);
    t.append_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
    t.append_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for (i, (&apic_id, &present)) in cpus.apic_ids.iter().zip(&cpus.present).enumerate() {
        // Processor Local APIC: uid (= slot, the processor device's
        // _UID), APIC id, flags.
        let flags = if present {
            LAPIC_ENABLED
        } else {
            LAPIC_ONLINE_CAPABLE
        };
        t.append_slice(&[0, 8, i as u8, apic_id as u8, flags, 0, 0, 0]);
    }
    let mut ioapic = vec![1, 12, IOAPIC_ID, 0];
    ioapic.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    // Interrupt source override: ISA IRQ 0 (PIT) is GSI 2, as on QEMU.
    let mut iso = vec![2, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&0u16.to_le_bytes());
    t.append_slice(&iso);
    // Local APIC NMI: all processors, LINT1, conforming flags.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_reg = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.reset_reg = io_reg(layout::ACPI_RESET_PORT);
    b.reset_value = layout::ACPI_RESET_VALUE;
    b.sleep_control_reg = io_reg(layout::ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_reg(layout::ACPI_SLEEP_STATUS_PORT);
    b.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"BULKHEAD").into();
    aml_bytes(&b.finalize())
}

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}

/// Builds every table with its address (RSDP first).
pub fn build_tables(cpus: &PossibleCpus, devices: &[VirtioMmioDevice]) -> Result<Vec<Table>> {
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_addr = align16(layout::RSDP_START + rsdp_len);
    let xsdt_len = 36 + 3 * 8;
    let dsdt_addr = align16(xsdt_addr + xsdt_len);
    let dsdt = dsdt(cpus, devices);
    let fadt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align16(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus);
    let end = madt_addr + madt.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooLarge(end - layout::RSDP_START));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(dsdt_addr);
    let xsdt = aml_bytes(&xsdt);
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    let t = |name: &str, addr, bytes| Table {
        name: name.into(),
        addr,
        bytes,
    };
    Ok(vec![
        t("RSDP", layout::RSDP_START, rsdp),
        t("XSDT", xsdt_addr, xsdt),
        t("DSDT", dsdt_addr, dsdt),
        t("FACP", fadt_addr, fadt),
        t("APIC", madt_addr, madt),
    ])
}

/// Writes the tables into guest memory.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    cpus: &PossibleCpus,
    devices: &[VirtioMmioDevice],
) -> Result<()> {
    for t in build_tables(cpus, devices)? {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(AcpiError::Memory)?;
    }
    Ok(())
}

/// Writes each table to `dir/<NAME>.dat` (for `iasl -d`).
pub fn dump_tables(
    dir: &std::path::Path,
    cpus: &PossibleCpus,
    devices: &[VirtioMmioDevice],
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let tables = build_tables(cpus, devices).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for t in tables {
        let p = dir.join(format!("{}.dat", t.name.to_lowercase()));
        std::fs::write(&p, &t.bytes)?;
        paths.push(p);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let dev = [VirtioMmioDevice {
            base: layout::VIRTIO_MMIO_BASE,
            size: layout::VIRTIO_MMIO_SIZE,
            gsi: layout::VIRTIO_MMIO_GSI_BASE,
        }];
        for t in build_tables(&PossibleCpus::flat(4), &dev).unwrap() {
            if t.name == "RSDP" {
                assert!(checksum_ok(&t.bytes[..20]));
                assert!(checksum_ok(&t.bytes));
                continue;
            }
            assert_eq!(&t.bytes[..4], t.name.as_bytes());
            let len = u32::from_le_bytes(t.bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.bytes.len(), "{}", t.name);
            assert!(checksum_ok(&t.bytes), "{}", t.name);
        }
    }

    fn lapics(m: &[u8]) -> Vec<(u8, u8, u8)> {
        let mut off = 44;
        let mut out = Vec::new();
        while off < m.len() {
            if m[off] == 0 {
                out.push((m[off + 2], m[off + 3], m[off + 4]));
            }
            off += m[off + 1] as usize;
        }
        out
    }

    #[test]
    fn madt_has_one_lapic_per_cpu() {
        assert_eq!(lapics(&madt(&PossibleCpus::flat(4))).len(), 4);
    }

    #[test]
    fn madt_lists_possible_cpus_online_capable_with_topology_apic_ids() {
        let t = ipc_proto::cpu_topology::CpuTopology {
            max_cpus: 6,
            sockets: 2,
            dies: 1,
            cores: 3,
            threads: 1,
        };
        let l = lapics(&madt(&PossibleCpus::at_start(&t, 2)));
        assert_eq!(
            l,
            [
                (0, 0, 1),
                (1, 1, 1),
                (2, 2, 2),
                (3, 4, 2),
                (4, 5, 2),
                (5, 6, 2)
            ]
        );
    }

    #[test]
    fn dsdt_declares_ged_power_button_and_virtio() {
        let dev = [VirtioMmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            gsi: 5,
        }];
        let d = dsdt_aml(&PossibleCpus::flat(1), &dev);
        let has = |s: &[u8]| d.windows(s.len()).any(|w| w == s);
        assert!(has(b"ACPI0013"));
        assert!(has(b"LNRO0005"));
        assert!(has(b"_S5_"));
        assert!(has(b"_EVT"));
    }

    #[test]
    fn tables_fit_for_many_cpus() {
        assert!(build_tables(&PossibleCpus::flat(254), &[]).is_ok());
    }
}
