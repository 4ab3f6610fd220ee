//! The guest-visible memory and port map (see `docs/platform.md`).

/// Global descriptor table of the boot CPU.
pub const GDT_START: u64 = 0x500;
/// Placeholder interrupt descriptor table.
pub const IDT_START: u64 = 0x520;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page map of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages covering 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest kernel command line, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1000;
/// MP floating pointer and MP configuration table.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// End of the low RAM below the EBDA / VGA hole as the e820 map reports it.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI RSDP; the other tables follow it.
pub const RSDP_START: u64 = 0xe_0000;
/// End of the region reserved for ACPI tables.
pub const ACPI_END: u64 = 0x10_0000;
/// Kernel / test guest load address and start of high memory.
pub const HIMEM_START: u64 = 0x10_0000;
/// Top of the RAM that sits below the 32-bit MMIO hole.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Where RAM resumes above the hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// Base of virtio-mmio device 0.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of each virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u32 = 8;
/// GSI of virtio-mmio device 0 (device i uses `VIRTIO_MMIO_GSI_BASE + i`).
pub const VIRTIO_MMIO_GSI_BASE: u32 = 5;
/// Generic Event Device register.
pub const GED_ADDR: u64 = 0xd010_0000;
/// Size of the GED register window.
pub const GED_SIZE: u64 = 0x4;
/// GED interrupt.
pub const GED_GSI: u32 = 13;
/// IOAPIC base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// LAPIC base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS (three pages below the identity map page).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt.
pub const COM1_GSI: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_CMD_PORT: u16 = 0x64;
/// Debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// QEMU's ACPI CPU hotplug register block (12 bytes; ICH9's port).
pub const CPU_HOTPLUG_PORT: u16 = 0x0cd8;
/// ACPI sleep control register.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value written to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0x0f;
/// SLP_TYP value of S5 (soft off); `_S5_` returns it.
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// Splits `mem_size` bytes of RAM into the region below the 32-bit hole
/// and the region above 4 GiB: `(low_size, high_size)`.
pub fn split_ram(mem_size: u64) -> (u64, u64) {
    let low = mem_size.min(MEM_32BIT_GAP_START);
    (low, mem_size - low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_stays_below_the_hole() {
        assert_eq!(split_ram(256 << 20), (256 << 20, 0));
    }

    #[test]
    fn large_ram_continues_above_4g() {
        assert_eq!(split_ram(4 << 30), (0xc000_0000, 0x4000_0000));
    }
}
