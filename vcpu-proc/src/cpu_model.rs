//! `-cpu`'s model applied to the CPUID a vCPU sees (after [`crate::cpuid`]
//! has fitted KVM's supported set to the topology): `host` keeps KVM's
//! set; `qemu64` is QEMU's model of that name as QEMU builds it under KVM
//! (`target/i386/cpu.c`: family 15 model 107 stepping 1, the
//! Pentium Pro feature set plus SSE3, CX16, LM, SYSCALL, NX, LAHF_LM, and
//! KVM's x2apic and hypervisor bits; the host's vendor, as QEMU gives a
//! named model under KVM in `x86_cpu_load_model`, not the model's
//! AuthenticAMD); then each `+feat`/`-feat`. A bit is
//! only ever cleared or kept, never set beyond what KVM supports (QEMU
//! warns and drops such a feature too).

use ipc_proto::vcpu::{CpuBase, CpuModel, CpuidReg};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Family 15, model 107 (extended 6, base 0xb), stepping 1.
const QEMU64_FMS: u32 = (6 << 16) | (0xf << 8) | (0xb << 4) | 1;
/// qemu64's leaf 1 EDX: QEMU's `PPRO_FEATURES` plus MTRR, CLFLUSH, MCA,
/// PSE36, and HTT (which the topology sets).
const QEMU64_1_EDX: u32 = (1 << 0)
    | (1 << 12)
    | (1 << 14)
    | (1 << 17)
    | (1 << 19)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26)
    | (1 << 28);
/// SSE3, CX16, x2APIC, hypervisor.
const QEMU64_1_ECX: u32 = (1 << 0) | (1 << 13) | (1 << 21) | (1 << 31);
/// SYSCALL, NX, LM, plus the leaf-1 bits AMD mirrors (`CPUID_EXT2_AMD_ALIASES`).
const QEMU64_81_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29) | (QEMU64_1_EDX & 0x0183_f3ff);
/// LAHF_LM (SVM is off under KVM, as QEMU's KVM defaults have it).
const QEMU64_81_ECX: u32 = 1;
const QEMU64_LEVEL: u32 = 0xd;
const QEMU64_XLEVEL: u32 = 0x8000_000a;
const QEMU64_BRAND: &[u8; 48] =
    b"QEMU Virtual CPU version 2.5+\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// Applies `model` to `cpuid` in place; returns QEMU's warning for each
/// `+feat` KVM does not support (the feature stays off).
pub fn apply(cpuid: &mut CpuId, model: &CpuModel) -> Vec<String> {
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid.as_slice().to_vec();
    let warnings = apply_entries(&mut entries, model);
    if let Ok(c) = CpuId::from_entries(&entries) {
        *cpuid = c;
    }
    warnings
}

/// The CPUID leaves of `model` for one vCPU, by the code vCPUs are built
/// with, from KVM's supported set (a fresh `/dev/kvm`). With `as_defined`,
/// the model as QEMU's `query-cpu-model-expansion` reports it: qemu64's
/// leaf-1 and 0x8000_0001 features as the model defines them, even those
/// KVM lacks (which a vCPU does not get); without, what a vCPU sees.
pub fn expand(model: &CpuModel, as_defined: bool) -> std::io::Result<Vec<kvm_cpuid_entry2>> {
    let os = |e: kvm_ioctls::Error| std::io::Error::from_raw_os_error(e.errno());
    let kvm = kvm_ioctls::Kvm::new().map_err(os)?;
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(os)?;
    let mut entries = supported.as_slice().to_vec();
    if as_defined && model.base == CpuBase::Qemu64 {
        for e in entries
            .iter_mut()
            .filter(|e| e.function == 1 || e.function == 0x8000_0001)
        {
            (e.ecx, e.edx) = (!0, !0);
        }
    }
    crate::cpuid::filter_entries(
        &mut entries,
        0,
        &ipc_proto::cpu_topology::CpuTopology::flat(1),
    );
    apply_entries(&mut entries, model);
    Ok(entries)
}

/// Whether CPUID `leaf` (subleaf 0) has bit `bit` of `r` set in `entries`.
pub fn has(entries: &[kvm_cpuid_entry2], leaf: u32, r: CpuidReg, bit: u8) -> bool {
    entries
        .iter()
        .find(|e| e.function == leaf && e.index == 0)
        .is_some_and(|e| {
            let mut e = *e;
            *reg(&mut e, r) & (1 << bit) != 0
        })
}

fn reg(e: &mut kvm_cpuid_entry2, r: CpuidReg) -> &mut u32 {
    match r {
        CpuidReg::Eax => &mut e.eax,
        CpuidReg::Ebx => &mut e.ebx,
        CpuidReg::Ecx => &mut e.ecx,
        CpuidReg::Edx => &mut e.edx,
    }
}

fn apply_entries(entries: &mut Vec<kvm_cpuid_entry2>, model: &CpuModel) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut kvm = entries.clone();
    if model.base == CpuBase::Qemu64 {
        qemu64(entries);
    }
    for f in &model.features {
        let mask = 1u32 << f.bit;
        // `+feat` sets the bit only where KVM supports it.
        let supported = kvm
            .iter_mut()
            .find(|e| e.function == f.leaf && e.index == f.subleaf)
            .is_some_and(|e| *reg(e, f.reg) & mask != 0);
        if f.on && !supported {
            warnings.push(format!(
                "host doesn't support requested feature: CPUID.{:02X}H:{} [bit {}]",
                f.leaf,
                match f.reg {
                    CpuidReg::Eax => "EAX",
                    CpuidReg::Ebx => "EBX",
                    CpuidReg::Ecx => "ECX",
                    CpuidReg::Edx => "EDX",
                },
                f.bit
            ));
        }
        for e in entries
            .iter_mut()
            .filter(|e| e.function == f.leaf && e.index == f.subleaf)
        {
            let r = reg(e, f.reg);
            if f.on && supported {
                *r |= mask;
            } else if !f.on {
                *r &= !mask;
            }
        }
    }
    warnings
}

fn qemu64(entries: &mut Vec<kvm_cpuid_entry2>) {
    entries.retain(|e| {
        let f = e.function;
        f <= QEMU64_LEVEL
            || (0x4000_0000..0x8000_0000).contains(&f)
            || (0x8000_0000..=QEMU64_XLEVEL).contains(&f)
    });
    // The host's vendor (KVM's leaf 0 is the host's), in leaf 0x8000_0000
    // too, where Intel hosts have zeros.
    let vendor = entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| [e.ebx, e.edx, e.ecx]);
    for e in entries.iter_mut() {
        match e.function {
            0 | 0x8000_0000 => {
                e.eax = if e.function == 0 {
                    e.eax.min(QEMU64_LEVEL)
                } else {
                    e.eax.min(QEMU64_XLEVEL)
                };
                if let Some(v) = vendor {
                    [e.ebx, e.edx, e.ecx] = v;
                }
            }
            1 => {
                e.eax = QEMU64_FMS;
                e.ecx &= QEMU64_1_ECX;
                e.edx &= QEMU64_1_EDX;
            }
            7 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => {
                e.eax = QEMU64_FMS;
                e.ecx &= QEMU64_81_ECX;
                e.edx &= QEMU64_81_EDX;
            }
            f @ 0x8000_0002..=0x8000_0004 => {
                let chunk = &QEMU64_BRAND[(f - 0x8000_0002) as usize * 16..][..16];
                let word = |i: usize| {
                    u32::from_le_bytes([chunk[i], chunk[i + 1], chunk[i + 2], chunk[i + 3]])
                };
                (e.eax, e.ebx, e.ecx, e.edx) = (word(0), word(4), word(8), word(12));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::vcpu::CpuFeature;

    fn leaf(function: u32, all: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax: all,
            ebx: all,
            ecx: all,
            edx: all,
            ..Default::default()
        }
    }

    #[test]
    fn qemu64_has_the_host_vendor_its_features_and_brand() {
        let mut e = vec![leaf(0, 0x16), leaf(1, !0), leaf(7, !0), leaf(0x14, 1)];
        e.extend([
            leaf(0x8000_0000, 0x8000_0021),
            leaf(0x8000_0001, !0),
            leaf(0x8000_0002, 0),
        ]);
        let model = CpuModel {
            base: CpuBase::Qemu64,
            features: vec![CpuFeature {
                leaf: 1,
                subleaf: 0,
                reg: CpuidReg::Ecx,
                bit: 0,
                on: false,
            }],
        };
        apply_entries(&mut e, &model);
        assert!(e.iter().all(|x| x.function != 0x14));
        assert_eq!(
            (e[0].eax, e[0].ebx, e[0].edx, e[0].ecx),
            (0xd, 0x16, 0x16, 0x16)
        );
        assert_eq!((e[3].ebx, e[3].edx, e[3].ecx), (0x16, 0x16, 0x16));
        assert_eq!(e[1].eax, 0x60fb1);
        assert_eq!(e[1].ecx, QEMU64_1_ECX & !1);
        assert_eq!(e[1].edx, QEMU64_1_EDX);
        assert_eq!((e[2].ebx, e[2].ecx), (0, 0));
        assert_eq!(e[3].eax, 0x8000_000a);
        assert_eq!(e[4].ecx, 1);
        assert_eq!(e[5].eax.to_le_bytes(), *b"QEMU");
    }

    #[test]
    fn plus_feature_brings_back_a_kvm_bit_qemu64_lacks() {
        let mut e = vec![leaf(0, 0xd), leaf(1, 1 << 23)];
        let model = CpuModel {
            base: CpuBase::Qemu64,
            features: vec![CpuFeature {
                leaf: 1,
                subleaf: 0,
                reg: CpuidReg::Ecx,
                bit: 23,
                on: true,
            }],
        };
        apply_entries(&mut e, &model);
        assert_eq!(e[1].ecx, 1 << 23);
    }

    #[test]
    fn plus_feature_never_sets_a_bit_kvm_lacks() {
        let mut e = vec![leaf(1, 0)];
        let model = CpuModel {
            base: CpuBase::Host,
            features: vec![CpuFeature {
                leaf: 1,
                subleaf: 0,
                reg: CpuidReg::Ecx,
                bit: 5,
                on: true,
            }],
        };
        apply_entries(&mut e, &model);
        assert_eq!(e[0].ecx, 0);
    }
}
