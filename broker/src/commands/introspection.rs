//! What the machine and bulkhead are, as libvirt and other tools probe
//! them: `query-uuid`, `query-target`, `query-kvm`, `query-machines`,
//! `query-cpu-definitions`, `query-cpu-model-expansion`, `query-iothreads`, `query-tpm-models`,
//! `query-tpm-types`, `query-sev-capabilities` — each answering what
//! bulkhead has.

use serde::Serialize;
use serde_json::Value;

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// Reply of `query-uuid` (QEMU's UuidInfo).
#[derive(Debug, Serialize)]
pub struct UuidInfo {
    /// The `-uuid`, or the nil UUID without one.
    #[serde(rename = "UUID")]
    pub uuid: String,
}

impl QapiType for UuidInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "UuidInfo",
            members: vec![member::<String>("UUID")],
        }
    }
}

/// `query-uuid`.
pub struct QueryUuid;

impl Command for QueryUuid {
    const NAME: &'static str = "query-uuid";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Return the machine's UUID (-uuid; all zeros without one).";
    type Args = Empty;
    type Ret = UuidInfo;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<UuidInfo> {
        Ok(UuidInfo {
            uuid: ctx
                .machine
                .config()
                .uuid
                .clone()
                .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into()),
        })
    }
}

/// Declares a command that takes no arguments and returns `$ret` (a
/// `serde_json` value whose schema is `$schema`), computed by `$body`.
macro_rules! simple_query {
    ($ty:ident, $name:literal, $doc:literal, $ret:ty, |$ctx:ident| $body:expr) => {
        #[doc = concat!("`", $name, "`.")]
        pub struct $ty;

        impl Command for $ty {
            const NAME: &'static str = $name;
            // Answered from the command line and static tables.
            const BROKER_ONLY: bool = true;
            const DOC: &'static str = $doc;
            type Args = Empty;
            type Ret = $ret;

            fn run(_: Empty, $ctx: &Ctx<'_>) -> Result<$ret> {
                $body
            }
        }
    };
}

/// Reply of `query-target` (QEMU's TargetInfo).
#[derive(Debug, Serialize)]
pub struct TargetInfo {
    /// Always `x86_64`.
    pub arch: &'static str,
}

impl QapiType for TargetInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "TargetInfo",
            members: vec![member::<crate::commands::machine::SysEmuTarget>("arch")],
        }
    }
}

simple_query!(
    QueryTarget,
    "query-target",
    "Return the target architecture (x86_64).",
    TargetInfo,
    |_ctx| Ok(TargetInfo { arch: "x86_64" })
);

/// Reply of `query-kvm` (QEMU's KvmInfo).
#[derive(Debug, Serialize)]
pub struct KvmInfo {
    /// KVM is in use (always: bulkhead has no other accelerator).
    pub enabled: bool,
    /// KVM is available.
    pub present: bool,
}

impl QapiType for KvmInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "KvmInfo",
            members: vec![member::<bool>("enabled"), member::<bool>("present")],
        }
    }
}

simple_query!(
    QueryKvm,
    "query-kvm",
    "Return whether KVM is present and enabled (always both).",
    KvmInfo,
    |_ctx| Ok(KvmInfo {
        enabled: true,
        present: true
    })
);

/// One entry of `query-machines` (QEMU's MachineInfo).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineInfo {
    /// The machine type.
    pub name: &'static str,
    /// The default machine type.
    pub is_default: bool,
    /// The most vCPUs.
    pub cpu_max: i64,
    /// CPU hot-plug (none in bulkhead).
    pub hotpluggable_cpus: bool,
    /// NUMA memory (none).
    pub numa_mem_supported: bool,
    /// Deprecated.
    pub deprecated: bool,
    /// The default CPU type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_cpu_type: Option<&'static str>,
    /// The id of the default RAM region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_ram_id: Option<&'static str>,
    /// ACPI (microvm has it).
    pub acpi: bool,
}

impl QapiType for MachineInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MachineInfo",
            members: vec![
                member::<String>("name"),
                optional::<String>("alias"),
                optional::<bool>("is-default"),
                member::<i64>("cpu-max"),
                member::<bool>("hotpluggable-cpus"),
                member::<bool>("numa-mem-supported"),
                member::<bool>("deprecated"),
                optional::<String>("default-cpu-type"),
                optional::<String>("default-ram-id"),
                member::<bool>("acpi"),
            ],
        }
    }
}

simple_query!(
    QueryMachines,
    "query-machines",
    "Return the machine types: microvm and none.",
    Vec<MachineInfo>,
    |_ctx| Ok(vec![
        MachineInfo {
            name: "microvm",
            is_default: true,
            cpu_max: i64::from(crate::cli::MAX_CPUS),
            // `-smp maxcpus` + device_add of CPUs (commands/cpu_hotplug.rs).
            hotpluggable_cpus: true,
            numa_mem_supported: false,
            deprecated: false,
            default_cpu_type: Some("host-x86_64-cpu"),
            default_ram_id: Some("microvm.ram"),
            acpi: true,
        },
        MachineInfo {
            name: "none",
            is_default: false,
            cpu_max: 1,
            hotpluggable_cpus: false,
            numa_mem_supported: false,
            deprecated: false,
            default_cpu_type: None,
            default_ram_id: Some("ram"),
            acpi: false,
        },
    ])
);

/// One entry of `query-cpu-definitions` (QEMU's CpuDefinitionInfo).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuDefinitionInfo {
    /// The model.
    pub name: &'static str,
    /// Its QOM type.
    pub typename: String,
    /// Static (never changes with the host): none of bulkhead's.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Safe to migrate.
    pub migration_safe: bool,
    /// Deprecated.
    pub deprecated: bool,
    /// Features of the model KVM lacks (bulkhead drops them, never fails).
    pub unavailable_features: Vec<String>,
}

impl QapiType for CpuDefinitionInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuDefinitionInfo",
            members: vec![
                member::<String>("name"),
                optional::<bool>("migration-safe"),
                member::<bool>("static"),
                optional::<Vec<String>>("unavailable-features"),
                member::<String>("typename"),
                optional::<String>("alias-of"),
                member::<bool>("deprecated"),
            ],
        }
    }
}

simple_query!(
    QueryCpuDefinitions,
    "query-cpu-definitions",
    "Return the CPU models -cpu accepts: host, max, qemu64.",
    Vec<CpuDefinitionInfo>,
    |_ctx| crate::cli::cpu::MODELS
        .iter()
        .map(|(name, _)| {
            Ok(CpuDefinitionInfo {
                name,
                typename: format!("{name}-x86_64-cpu"),
                is_static: false,
                migration_safe: *name == "qemu64",
                deprecated: false,
                unavailable_features: unavailable_features(name)?,
            })
        })
        .collect()
);

/// The features `model` defines that a vCPU here does not get (KVM
/// lacks them), by QEMU's canonical names: the model as defined against
/// what the vCPU code builds from KVM's supported set.
fn unavailable_features(model: &str) -> Result<Vec<String>> {
    let model = crate::cli::cpu::parse(model).map_err(|e| QmpError::generic(e.to_string()))?;
    let kvm = |e: std::io::Error| QmpError::generic(format!("/dev/kvm: {e}"));
    let defined = vcpu_proc::cpu_model::expand(&model, true).map_err(kvm)?;
    let real = vcpu_proc::cpu_model::expand(&model, false).map_err(kvm)?;
    Ok(canonical_features()
        .filter(|f| {
            crate::cli::cpu::feature(f).is_some_and(|(leaf, reg, bit)| {
                vcpu_proc::cpu_model::has(&defined, leaf, reg, bit)
                    && !vcpu_proc::cpu_model::has(&real, leaf, reg, bit)
            })
        })
        .map(String::from)
        .collect())
}

/// Feature names as QEMU reports them: each once (no aliases such as
/// `sse3` for `pni`), without `osxsave` (the guest OS sets it; QEMU has
/// no property for it).
fn canonical_features() -> impl Iterator<Item = &'static str> {
    crate::cli::cpu::feature_names().filter(|f| *f != "osxsave" && !FEATURE_ALIASES.contains(f))
}

/// Second names of features QEMU lists under another name.
const FEATURE_ALIASES: [&str; 4] = ["sse3", "sse4-1", "sse4-2", "xd"];

simple_query!(
    QueryIothreads,
    "query-iothreads",
    "Return the IOThread objects (bulkhead has none: block I/O runs in block-proc).",
    Vec<Value>,
    |_ctx| Ok(Vec::new())
);

simple_query!(
    QueryTpmModels,
    "query-tpm-models",
    "Return the TPM models (none).",
    Vec<String>,
    |_ctx| Ok(Vec::new())
);

simple_query!(
    QueryTpmTypes,
    "query-tpm-types",
    "Return the TPM backend types (none).",
    Vec<String>,
    |_ctx| Ok(Vec::new())
);

simple_query!(
    QuerySevCapabilities,
    "query-sev-capabilities",
    "Return SEV capabilities; bulkhead has none (QEMU's error).",
    Value,
    |_ctx| Err(QmpError::generic("SEV is not enabled in KVM"))
);

#[rustfmt::skip]
/// (option, [(parameter, type)]) of every option with suboptions bulkhead
/// accepts, as `query-command-line-options` lists them.
const OPTION_PARAMETERS: &[(&str, &[(&str, &str)])] = &[
    ("machine", &[("type", "string"), ("accel", "string"), ("dump-guest-core", "boolean")]),
    ("accel", &[("accel", "string")]),
    ("name", &[("guest", "string"), ("process", "string"), ("debug-threads", "boolean")]),
    ("msg", &[("timestamp", "boolean"), ("guest-name", "boolean")]),
    ("overcommit", &[("mem-lock", "boolean"), ("cpu-pm", "boolean")]),
    ("rtc", &[("base", "string"), ("clock", "string")]),
    ("boot-opts", &[("strict", "boolean"), ("menu", "boolean")]),
    ("smp-opts", &[("cpus", "number")]),
    ("memory", &[("size", "size")]),
    ("drive", &[
        ("file", "string"), ("format", "string"), ("if", "string"), ("id", "string"),
        ("readonly", "boolean"), ("cache", "string"), ("cache.direct", "boolean"),
        ("cache.no-flush", "boolean"), ("discard", "string"), ("detect-zeroes", "string"),
        ("media", "string"),
    ]),
    ("chardev", &[
        ("backend", "string"), ("id", "string"), ("path", "string"), ("fd", "string"),
        ("server", "boolean"), ("wait", "boolean"), ("host", "string"), ("port", "string"),
        ("mux", "boolean"),
    ]),
    ("mon", &[("chardev", "string"), ("mode", "string"), ("pretty", "boolean"), ("id", "string")]),
    ("add-fd", &[("fd", "number"), ("set", "number"), ("opaque", "string")]),
    ("run-with", &[("user", "string")]),
    ("sandbox", &[
        ("enable", "boolean"), ("obsolete", "string"), ("elevateprivileges", "string"),
        ("spawn", "string"), ("resourcecontrol", "string"),
    ]),
    ("trace", &[("file", "string"), ("events", "string"), ("enable", "string")]),
];

/// Arguments of `query-command-line-options`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandLineOptionsArgs {
    /// Only this option.
    pub option: Option<String>,
}

impl QapiType for CommandLineOptionsArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CommandLineOptionsArgs",
            members: vec![optional::<String>("option")],
        }
    }
}

/// `query-command-line-options`.
pub struct QueryCommandLineOptions;

impl Command for QueryCommandLineOptions {
    const NAME: &'static str = "query-command-line-options";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Return the suboptions of the command-line options bulkhead accepts.";
    type Args = CommandLineOptionsArgs;
    type Ret = Vec<Value>;

    fn run(args: CommandLineOptionsArgs, _: &Ctx<'_>) -> Result<Vec<Value>> {
        let list: Vec<Value> = OPTION_PARAMETERS
            .iter()
            .filter(|(o, _)| args.option.as_deref().is_none_or(|want| want == *o))
            .map(|(o, params)| {
                let p: Vec<Value> = params
                    .iter()
                    .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
                    .collect();
                serde_json::json!({"option": o, "parameters": p})
            })
            .collect();
        match (&args.option, list.is_empty()) {
            (Some(o), true) => Err(QmpError::generic(format!("invalid option name: {o}"))),
            _ => Ok(list),
        }
    }
}

/// `query-cpu-model-expansion`'s `type` (QEMU's CpuModelExpansionType).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpansionType {
    /// As the static model `base` plus every feature.
    Static,
    /// As the model itself plus every feature.
    Full,
}

impl QapiType for ExpansionType {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "CpuModelExpansionType",
            values: vec!["static", "full"],
        }
    }
}

/// A CPU model and property changes (QEMU's CpuModelInfo).
#[derive(Debug, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModelInfo {
    /// The model.
    pub name: String,
    /// Feature name → on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<serde_json::Map<String, Value>>,
}

impl QapiType for CpuModelInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuModelInfo",
            members: vec![member::<String>("name"), optional::<Value>("props")],
        }
    }
}

/// Arguments of `query-cpu-model-expansion`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModelExpansionArgs {
    /// How to expand.
    #[serde(rename = "type")]
    pub kind: ExpansionType,
    /// What to expand.
    pub model: CpuModelInfo,
}

impl QapiType for CpuModelExpansionArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuModelExpansionArgs",
            members: vec![
                member::<ExpansionType>("type"),
                member::<CpuModelInfo>("model"),
            ],
        }
    }
}

/// Reply of `query-cpu-model-expansion` (QEMU's CpuModelExpansionInfo).
#[derive(Debug, Serialize)]
pub struct CpuModelExpansionInfo {
    /// The expanded model.
    pub model: CpuModelInfo,
}

impl QapiType for CpuModelExpansionInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuModelExpansionInfo",
            members: vec![member::<CpuModelInfo>("model")],
        }
    }
}

/// `query-cpu-model-expansion`.
pub struct QueryCpuModelExpansion;

impl Command for QueryCpuModelExpansion {
    const NAME: &'static str = "query-cpu-model-expansion";
    // Answered by the broker from KVM's supported CPUID (a fresh /dev/kvm)
    // through the code vCPUs are built with.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str =
        "Expand a CPU model (host, max, qemu64) with props into every feature bulkhead knows, on or off.";
    type Args = CpuModelExpansionArgs;
    type Ret = CpuModelExpansionInfo;

    fn run(args: CpuModelExpansionArgs, _: &Ctx<'_>) -> Result<CpuModelExpansionInfo> {
        let name = args.model.name.as_str();
        if !crate::cli::cpu::MODELS.iter().any(|(m, _)| *m == name) {
            return Err(QmpError::generic(format!("CPU model '{name}' not found")));
        }
        let mut spec = String::from(name);
        for (prop, v) in args.model.props.iter().flatten() {
            if crate::cli::cpu::feature(prop).is_none() {
                return Err(QmpError::generic(format!(
                    "Property '{name}-x86_64-cpu.{prop}' not found"
                )));
            }
            let Some(on) = v.as_bool() else {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for 'model.props.{prop}', expected: boolean"
                )));
            };
            spec.push_str(&format!(",{prop}={}", if on { "on" } else { "off" }));
        }
        let model = crate::cli::cpu::parse(&spec).map_err(|e| QmpError::generic(e.to_string()))?;
        let entries = vcpu_proc::cpu_model::expand(&model, true)
            .map_err(|e| QmpError::generic(format!("/dev/kvm: {e}")))?;
        let props: serde_json::Map<String, Value> = crate::cli::cpu::feature_names()
            // The guest OS sets OSXSAVE; QEMU has no property for it.
            .filter(|f| *f != "osxsave")
            // A static expansion names each feature once, as QEMU does.
            .filter(|f| matches!(args.kind, ExpansionType::Full) || !FEATURE_ALIASES.contains(f))
            .filter_map(|f| {
                let (leaf, reg, bit) = crate::cli::cpu::feature(f)?;
                Some((
                    f.to_string(),
                    Value::Bool(vcpu_proc::cpu_model::has(&entries, leaf, reg, bit)),
                ))
            })
            .collect();
        let name = match args.kind {
            ExpansionType::Static => "base".to_string(),
            ExpansionType::Full => args.model.name,
        };
        Ok(CpuModelExpansionInfo {
            model: CpuModelInfo {
                name,
                props: Some(props),
            },
        })
    }
}
