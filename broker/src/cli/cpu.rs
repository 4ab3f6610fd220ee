//! `-cpu MODEL[,+feat][,-feat][,feat=on|off]`: QEMU's model names bulkhead
//! has (`host`, `max`, `qemu64`) and QEMU's CPUID feature names, with
//! QEMU's messages for the ones it does not know.

use ipc_proto::vcpu::{CpuBase, CpuFeature, CpuModel, CpuidReg};

use super::{bad, CliError, Result};

/// The models `-cpu` accepts, with what each is.
pub const MODELS: [(&str, &str); 3] = [
    ("host", "KVM processor with all supported host features"),
    (
        "max",
        "Enables all features supported by the accelerator in the current host",
    ),
    ("qemu64", "QEMU Virtual CPU version 2.5+"),
];

use CpuidReg::{Ebx, Ecx, Edx};

/// QEMU's feature names: (name, leaf, register, bit).
#[rustfmt::skip]
const FEATURES: &[(&str, u32, CpuidReg, u8)] = &[
    ("fpu", 1, Edx, 0), ("vme", 1, Edx, 1), ("de", 1, Edx, 2), ("pse", 1, Edx, 3),
    ("tsc", 1, Edx, 4), ("msr", 1, Edx, 5), ("pae", 1, Edx, 6), ("mce", 1, Edx, 7),
    ("cx8", 1, Edx, 8), ("apic", 1, Edx, 9), ("sep", 1, Edx, 11), ("mtrr", 1, Edx, 12),
    ("pge", 1, Edx, 13), ("mca", 1, Edx, 14), ("cmov", 1, Edx, 15), ("pat", 1, Edx, 16),
    ("pse36", 1, Edx, 17), ("clflush", 1, Edx, 19), ("ds", 1, Edx, 21), ("acpi", 1, Edx, 22),
    ("mmx", 1, Edx, 23), ("fxsr", 1, Edx, 24), ("sse", 1, Edx, 25), ("sse2", 1, Edx, 26),
    ("ss", 1, Edx, 27), ("ht", 1, Edx, 28), ("tm", 1, Edx, 29), ("pbe", 1, Edx, 31),
    ("pni", 1, Ecx, 0), ("sse3", 1, Ecx, 0), ("pclmulqdq", 1, Ecx, 1), ("dtes64", 1, Ecx, 2),
    ("monitor", 1, Ecx, 3), ("ds-cpl", 1, Ecx, 4), ("vmx", 1, Ecx, 5), ("smx", 1, Ecx, 6),
    ("est", 1, Ecx, 7), ("tm2", 1, Ecx, 8), ("ssse3", 1, Ecx, 9), ("cid", 1, Ecx, 10),
    ("fma", 1, Ecx, 12), ("cx16", 1, Ecx, 13), ("xtpr", 1, Ecx, 14), ("pdcm", 1, Ecx, 15),
    ("pcid", 1, Ecx, 17), ("dca", 1, Ecx, 18), ("sse4.1", 1, Ecx, 19), ("sse4-1", 1, Ecx, 19),
    ("sse4.2", 1, Ecx, 20), ("sse4-2", 1, Ecx, 20), ("x2apic", 1, Ecx, 21),
    ("movbe", 1, Ecx, 22), ("popcnt", 1, Ecx, 23), ("tsc-deadline", 1, Ecx, 24),
    ("aes", 1, Ecx, 25), ("xsave", 1, Ecx, 26), ("osxsave", 1, Ecx, 27), ("avx", 1, Ecx, 28),
    ("f16c", 1, Ecx, 29), ("rdrand", 1, Ecx, 30), ("hypervisor", 1, Ecx, 31),
    ("fsgsbase", 7, Ebx, 0), ("tsc-adjust", 7, Ebx, 1), ("bmi1", 7, Ebx, 3), ("hle", 7, Ebx, 4),
    ("avx2", 7, Ebx, 5), ("smep", 7, Ebx, 7), ("bmi2", 7, Ebx, 8), ("erms", 7, Ebx, 9),
    ("invpcid", 7, Ebx, 10), ("rtm", 7, Ebx, 11), ("avx512f", 7, Ebx, 16),
    ("avx512dq", 7, Ebx, 17), ("rdseed", 7, Ebx, 18), ("adx", 7, Ebx, 19), ("smap", 7, Ebx, 20),
    ("avx512ifma", 7, Ebx, 21), ("clflushopt", 7, Ebx, 23), ("clwb", 7, Ebx, 24),
    ("avx512cd", 7, Ebx, 28), ("sha-ni", 7, Ebx, 29), ("avx512bw", 7, Ebx, 30),
    ("avx512vl", 7, Ebx, 31), ("avx512vbmi", 7, Ecx, 1), ("umip", 7, Ecx, 2), ("pku", 7, Ecx, 3),
    ("avx512vbmi2", 7, Ecx, 6), ("gfni", 7, Ecx, 8), ("vaes", 7, Ecx, 9),
    ("vpclmulqdq", 7, Ecx, 10), ("avx512vnni", 7, Ecx, 11), ("avx512bitalg", 7, Ecx, 12),
    ("avx512-vpopcntdq", 7, Ecx, 14), ("la57", 7, Ecx, 16), ("rdpid", 7, Ecx, 22),
    ("fsrm", 7, Edx, 4), ("md-clear", 7, Edx, 10), ("serialize", 7, Edx, 14),
    ("spec-ctrl", 7, Edx, 26), ("stibp", 7, Edx, 27), ("arch-capabilities", 7, Edx, 29),
    ("ssbd", 7, Edx, 31),
    ("syscall", 0x8000_0001, Edx, 11), ("nx", 0x8000_0001, Edx, 20),
    ("xd", 0x8000_0001, Edx, 20), ("mmxext", 0x8000_0001, Edx, 22),
    ("fxsr-opt", 0x8000_0001, Edx, 25), ("pdpe1gb", 0x8000_0001, Edx, 26),
    ("rdtscp", 0x8000_0001, Edx, 27), ("lm", 0x8000_0001, Edx, 29),
    ("lahf-lm", 0x8000_0001, Ecx, 0), ("cmp-legacy", 0x8000_0001, Ecx, 1),
    ("svm", 0x8000_0001, Ecx, 2), ("extapic", 0x8000_0001, Ecx, 3),
    ("cr8legacy", 0x8000_0001, Ecx, 4), ("abm", 0x8000_0001, Ecx, 5),
    ("sse4a", 0x8000_0001, Ecx, 6), ("misalignsse", 0x8000_0001, Ecx, 7),
    ("3dnowprefetch", 0x8000_0001, Ecx, 8), ("osvw", 0x8000_0001, Ecx, 9),
    ("xop", 0x8000_0001, Ecx, 11), ("fma4", 0x8000_0001, Ecx, 16),
    ("tbm", 0x8000_0001, Ecx, 21), ("topoext", 0x8000_0001, Ecx, 22),
];

/// The CPUID bit of QEMU feature `name` (`_` and `-` are the same).
pub fn feature(name: &str) -> Option<(u32, CpuidReg, u8)> {
    let n = name.replace('_', "-");
    FEATURES
        .iter()
        .find(|(f, ..)| *f == n)
        .map(|&(_, leaf, reg, bit)| (leaf, reg, bit))
}

/// Every feature name `-cpu` knows (for `-cpu help`).
pub fn feature_names() -> impl Iterator<Item = &'static str> {
    FEATURES.iter().map(|(n, ..)| *n)
}

/// Parses `-cpu`'s value.
pub fn parse(s: &str) -> Result<CpuModel> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or("");
    let base = match name {
        "host" | "max" => CpuBase::Host,
        "qemu64" => CpuBase::Qemu64,
        _ => {
            return Err(CliError::Plain(format!(
                "unable to find CPU model '{name}'"
            )))
        }
    };
    let mut features = Vec::new();
    for p in parts {
        let (fname, on) = if let Some(f) = p.strip_prefix('+') {
            (f, true)
        } else if let Some(f) = p.strip_prefix('-') {
            (f, false)
        } else if let Some((f, v)) = p.split_once('=') {
            let on = match v {
                "on" | "true" | "yes" => true,
                "off" | "false" | "no" => false,
                _ => {
                    return Err(bad(
                        "-cpu",
                        format!("Parameter '{f}' expects 'on' or 'off'"),
                    ))
                }
            };
            (f, on)
        } else {
            (p, true)
        };
        let (leaf, reg, bit) = feature(fname).ok_or_else(|| {
            CliError::Plain(format!("Property '{name}-x86_64-cpu.{fname}' not found"))
        })?;
        features.push(CpuFeature {
            leaf,
            subleaf: 0,
            reg,
            bit,
            on,
        });
    }
    Ok(CpuModel { base, features })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_features_parse_with_qemu_spellings() {
        let m = parse("qemu64,+popcnt,-sse3,avx=off,sse4_2").unwrap();
        assert_eq!(m.base, CpuBase::Qemu64);
        let f: Vec<_> = m.features.iter().map(|f| (f.leaf, f.bit, f.on)).collect();
        assert_eq!(
            f,
            vec![(1, 23, true), (1, 0, false), (1, 28, false), (1, 20, true)]
        );
        assert_eq!(parse("max").unwrap().base, CpuBase::Host);
    }

    #[test]
    fn unknown_models_and_features_get_qemu_messages() {
        assert_eq!(
            parse("pentium9").unwrap_err().to_string(),
            "unable to find CPU model 'pentium9'"
        );
        assert_eq!(
            parse("host,+frob").unwrap_err().to_string(),
            "Property 'host-x86_64-cpu.frob' not found"
        );
    }
}
