//! One vCPU's registers as a core file carries them: Linux's x86-64
//! `elf_prstatus` (the `CORE`/`NT_PRSTATUS` note gdb and crash read) and
//! QEMU's `QEMU` note (`QEMUCPUState`: registers, segments with their
//! descriptor flags, GDT/IDT, control registers, KERNEL_GS_BASE).

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use super::DumpError;

const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `NT_PRSTATUS`.
pub const NT_PRSTATUS: u32 = 1;
/// Size of x86-64 Linux's `struct elf_prstatus`.
pub const PRSTATUS_SIZE: usize = 336;
/// `QEMUCPUSTATE_VERSION`.
const QEMU_NOTE_VERSION: u32 = 1;
/// Size of `QEMUCPUState` with its optional `kernel_gs_base`.
pub const QEMU_NOTE_SIZE: usize = 440;

/// The registers of one vCPU, read while it is parked.
#[derive(Debug, Clone, Default)]
pub struct CpuState {
    /// General registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER.
    pub sregs: kvm_sregs,
    /// MSR_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
}

impl CpuState {
    /// Reads `vcpu`'s state (it must not be inside `KVM_RUN`, or the
    /// ioctls wait for it to leave).
    pub fn capture(vcpu: &VcpuFd) -> Result<Self, DumpError> {
        let kvm = |what| move |e: kvm_ioctls::Error| DumpError::Registers(what, e);
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_KERNEL_GS_BASE,
            ..Default::default()
        }])
        .map_err(|_| DumpError::MsrList)?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        let kernel_gs_base = if n == 1 { msrs.as_slice()[0].data } else { 0 };
        Ok(CpuState {
            regs,
            sregs,
            kernel_gs_base,
        })
    }

    /// True when the vCPU runs in long mode (EFER.LMA).
    pub fn long_mode(&self) -> bool {
        self.sregs.efer & 0x400 != 0
    }

    /// True when paging is on (CR0.PG).
    pub fn paging(&self) -> bool {
        self.sregs.cr0 & 0x8000_0000 != 0
    }

    /// The descriptor of Linux's x86-64 `elf_prstatus` for CPU `index`:
    /// `pr_pid` is `index + 1` as in QEMU's dumps, `pr_reg` is
    /// `user_regs_struct` (orig_rax 0, as QEMU).
    pub fn prstatus(&self, index: u32) -> Vec<u8> {
        let r = &self.regs;
        let s = &self.sregs;
        let mut d = vec![0u8; PRSTATUS_SIZE];
        d[32..36].copy_from_slice(&(index + 1).to_le_bytes());
        let user_regs: [u64; 27] = [
            r.r15,
            r.r14,
            r.r13,
            r.r12,
            r.rbp,
            r.rbx,
            r.r11,
            r.r10,
            r.r9,
            r.r8,
            r.rax,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            0, // orig_rax
            r.rip,
            u64::from(s.cs.selector),
            r.rflags,
            r.rsp,
            u64::from(s.ss.selector),
            s.fs.base,
            s.gs.base,
            u64::from(s.ds.selector),
            u64::from(s.es.selector),
            u64::from(s.fs.selector),
            u64::from(s.gs.selector),
        ];
        // pr_reg starts at offset 112 of elf_prstatus on x86-64.
        for (i, v) in user_regs.iter().enumerate() {
            let at = 112 + 8 * i;
            d[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// The descriptor of QEMU's `QEMU` note (`QEMUCPUState`, version 1,
    /// with `kernel_gs_base`).
    pub fn qemu_state(&self) -> Vec<u8> {
        let r = &self.regs;
        let s = &self.sregs;
        let mut d = Vec::with_capacity(QEMU_NOTE_SIZE);
        d.extend_from_slice(&QEMU_NOTE_VERSION.to_le_bytes());
        d.extend_from_slice(&(QEMU_NOTE_SIZE as u32).to_le_bytes());
        for v in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
            segment(
                &mut d,
                u32::from(seg.selector),
                seg.limit,
                flags(seg),
                seg.base,
            );
        }
        segment(&mut d, 0, u32::from(s.gdt.limit), 0, s.gdt.base);
        segment(&mut d, 0, u32::from(s.idt.limit), 0, s.idt.base);
        // cr[0..5]: CR1 does not exist and is 0, as in QEMU's state.
        for v in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(&self.kernel_gs_base.to_le_bytes());
        debug_assert_eq!(d.len(), QEMU_NOTE_SIZE);
        d
    }
}

/// `QEMUCPUSegment`: selector, limit, flags, pad, base.
fn segment(d: &mut Vec<u8>, selector: u32, limit: u32, flags: u32, base: u64) {
    d.extend_from_slice(&selector.to_le_bytes());
    d.extend_from_slice(&limit.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&0u32.to_le_bytes());
    d.extend_from_slice(&base.to_le_bytes());
}

/// A segment's attributes in the layout of a descriptor's high dword (as
/// QEMU keeps them): type at bit 8, S 12, DPL 13, P 15, AVL 20, L 21,
/// D/B 22, G 23; an unusable segment has none.
fn flags(s: &kvm_segment) -> u32 {
    if s.unusable != 0 {
        return 0;
    }
    (u32::from(s.type_) << 8)
        | (u32::from(s.s) << 12)
        | (u32::from(s.dpl) << 13)
        | (u32::from(s.present) << 15)
        | (u32::from(s.avl) << 20)
        | (u32::from(s.l) << 21)
        | (u32::from(s.db) << 22)
        | (u32::from(s.g) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CpuState {
        let mut c = CpuState::default();
        c.regs.rip = 0x1234;
        c.regs.r12 = 0xaaaa;
        c.regs.rax = 7;
        c.sregs.cs = kvm_segment {
            selector: 0x10,
            type_: 0xb,
            s: 1,
            present: 1,
            l: 1,
            ..Default::default()
        };
        c.sregs.cr3 = 0x9000;
        c.kernel_gs_base = 0x55;
        c
    }

    fn u64_at(d: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn prstatus_puts_pid_and_registers_where_linux_has_them() {
        let d = state().prstatus(2);
        assert_eq!(d.len(), PRSTATUS_SIZE);
        assert_eq!(u32::from_le_bytes(d[32..36].try_into().unwrap()), 3);
        assert_eq!(u64_at(&d, 112 + 3 * 8), 0xaaaa); // r12
        assert_eq!(u64_at(&d, 112 + 10 * 8), 7); // rax
        assert_eq!(u64_at(&d, 112 + 16 * 8), 0x1234); // rip
        assert_eq!(u64_at(&d, 112 + 17 * 8), 0x10); // cs
    }

    #[test]
    fn qemu_note_has_version_size_flags_and_control_registers() {
        let d = state().qemu_state();
        assert_eq!(d.len(), QEMU_NOTE_SIZE);
        assert_eq!(&d[0..8], &[1, 0, 0, 0, 0xb8, 1, 0, 0]);
        assert_eq!(u64_at(&d, 8), 7); // rax
        assert_eq!(u64_at(&d, 8 + 16 * 8), 0x1234); // rip
        let cs = 8 + 18 * 8;
        let cs_flags = u32::from_le_bytes(d[cs + 8..cs + 12].try_into().unwrap());
        assert_eq!(cs_flags, 0x0020_9b00);
        let cr = cs + 10 * 24;
        assert_eq!(u64_at(&d, cr + 3 * 8), 0x9000);
        assert_eq!(u64_at(&d, QEMU_NOTE_SIZE - 8), 0x55);
    }

    #[test]
    fn unusable_segments_have_no_flags() {
        let s = kvm_segment {
            unusable: 1,
            present: 1,
            type_: 3,
            ..Default::default()
        };
        assert_eq!(flags(&s), 0);
    }
}
