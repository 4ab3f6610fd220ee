//! Architectural state of a vCPU at boot: general registers, segment and
//! control registers, FPU, MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;

use crate::gdt::{self, BOOT_GDT, CODE64_SELECTOR, DATA_SELECTOR};
use crate::layout;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_MP: u64 = 0x2;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_NE: u64 = 0x20;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const X86_CR4_OSFXSR: u64 = 0x200;
const X86_CR4_OSXMMEXCPT: u64 = 0x400;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 0x800;
const MTRR_MEM_TYPE_WB: u64 = 0x6;
/// Paravirtual MSRs a previous boot may have enabled (kvm-clock, async PF,
/// steal time, PV EOI); zeroed on every (re)boot when KVM knows them.
const KVM_PV_MSRS: [u32; 7] = [
    0x11,        // MSR_KVM_WALL_CLOCK
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b56_4d00, // MSR_KVM_WALL_CLOCK_NEW
    0x4b56_4d01, // MSR_KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // MSR_KVM_ASYNC_PF_EN
    0x4b56_4d03, // MSR_KVM_STEAL_TIME
    0x4b56_4d04, // MSR_KVM_PV_EOI_EN
];

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors of setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set {set} of {wanted} boot MSRs")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// The MSR list could not be built.
    #[error("cannot build the MSR list")]
    MsrList,
}

/// Result of register setup.
pub type Result<T> = std::result::Result<T, RegsError>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Where the boot CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// RIP: the kernel's 64-bit entry.
    pub rip: u64,
    /// RSI: the zero page (Linux convention).
    pub rsi: u64,
}

/// Puts the boot CPU in 64-bit long mode at `entry` per the platform.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: EntryPoint) -> Result<()> {
    setup_fpu(vcpu)?;
    setup_sregs(vcpu)?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: entry.rsi,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

fn setup_sregs(vcpu: &VcpuFd) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = gdt::segment_from_gdt(BOOT_GDT[1], CODE64_SELECTOR);
    let data = gdt::segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    // A busy 64-bit TSS is required in IA-32e mode; the guest loads its own.
    sregs.tr.selector = 0;
    sregs.tr.base = 0;
    sregs.tr.limit = 0xffff;
    sregs.tr.type_ = 0xb;
    sregs.tr.present = 1;
    sregs.tr.s = 0;
    sregs.tr.unusable = 0;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs.cr2 = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// Sets the boot MSRs of any vCPU (as Firecracker does) and clears the
/// paravirtual MSRs a previous boot may have enabled.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    for idx in KVM_PV_MSRS {
        let one = Msrs::from_entries(&[entry(idx, 0)]).map_err(|_| RegsError::MsrList)?;
        // Ignoring the result: KVM may not know every paravirtual MSR.
        let _ = vcpu.set_msrs(&one);
    }
    Ok(())
}

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = *b as _;
    }
}

fn delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Configures LINT0 as ExtINT and LINT1 as NMI, like a PC BIOS.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, delivery_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_bits_8_to_10() {
        assert_eq!(delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(delivery_mode(0, APIC_MODE_EXTINT), 0x700);
    }

    #[test]
    fn lapic_registers_round_trip() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0xdead_beef);
    }
}
