//! The protocol's own commands: capabilities negotiation, version,
//! introspection, and bulkhead's OOB-capable ping.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};
use crate::qmp::wire::{PACKAGE, QEMU_VERSION};

/// A QMP capability a client may enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QmpCapability {
    /// Out-of-band execution (`exec-oob`).
    Oob,
}

impl QapiType for QmpCapability {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "QMPCapability",
            values: vec!["oob"],
        }
    }
}

/// Arguments of `qmp_capabilities`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CapabilitiesArgs {
    /// Capabilities to enable.
    pub enable: Option<Vec<QmpCapability>>,
}

impl QapiType for CapabilitiesArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CapabilitiesArgs",
            members: vec![optional::<Vec<QmpCapability>>("enable")],
        }
    }
}

/// `qmp_capabilities`: leaves capabilities-negotiation mode.
pub struct QmpCapabilities;

impl Command for QmpCapabilities {
    const NAME: &'static str = "qmp_capabilities";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Enable QMP capabilities and leave capabilities-negotiation mode. \
        Must be the first command of a session; `enable` may list \"oob\".";
    const IN_NEGOTIATION: bool = true;
    type Args = CapabilitiesArgs;
    type Ret = Empty;

    fn run(args: CapabilitiesArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        if ctx.session.negotiated() {
            return Err(QmpError::command_not_found(
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        let oob = args
            .enable
            .unwrap_or_default()
            .contains(&QmpCapability::Oob);
        ctx.session.negotiate(oob);
        Ok(Empty {})
    }
}

/// QEMU's version triple.
#[derive(Debug, Serialize)]
pub struct VersionTriple {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl QapiType for VersionTriple {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "VersionTriple",
            members: vec![
                member::<i64>("major"),
                member::<i64>("minor"),
                member::<i64>("micro"),
            ],
        }
    }
}

/// Reply of `query-version`.
#[derive(Debug, Serialize)]
pub struct VersionInfo {
    /// The QEMU version bulkhead is compatible with.
    pub qemu: VersionTriple,
    /// "bulkhead" and its version.
    pub package: String,
}

impl QapiType for VersionInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "VersionInfo",
            members: vec![member::<VersionTriple>("qemu"), member::<String>("package")],
        }
    }
}

/// `query-version`.
pub struct QueryVersion;

impl Command for QueryVersion {
    const NAME: &'static str = "query-version";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str =
        "Return the QEMU version bulkhead is compatible with, and bulkhead's \
        own version as `package`.";
    type Args = Empty;
    type Ret = VersionInfo;

    fn run(_: Empty, _: &Ctx<'_>) -> Result<VersionInfo> {
        let (major, minor, micro) = QEMU_VERSION;
        Ok(VersionInfo {
            qemu: VersionTriple {
                major,
                minor,
                micro,
            },
            package: PACKAGE.into(),
        })
    }
}

/// One entry of `query-commands`.
#[derive(Debug, Serialize)]
pub struct CommandInfo {
    /// The command name.
    pub name: String,
}

impl QapiType for CommandInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CommandInfo",
            members: vec![member::<String>("name")],
        }
    }
}

/// `query-commands`.
pub struct QueryCommands;

impl Command for QueryCommands {
    const NAME: &'static str = "query-commands";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "List the QMP commands available.";
    type Args = Empty;
    type Ret = Vec<CommandInfo>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<CommandInfo>> {
        Ok(ctx
            .registry
            .commands()
            .iter()
            .map(|c| CommandInfo {
                name: c.name.into(),
            })
            .collect())
    }
}

/// `query-qmp-schema`.
pub struct QueryQmpSchema;

impl Command for QueryQmpSchema {
    const NAME: &'static str = "query-qmp-schema";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Return the QMP wire schema: commands, events and the types they \
        use, as QEMU's SchemaInfo entries.";
    type Args = Empty;
    type Ret = Vec<Value>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<Value>> {
        Ok(ctx.registry.introspect())
    }
}

/// `__org.bulkhead_ping`: answers `{}` at once; OOB-capable, so a client
/// can check the broker is alive while a long command runs.
pub struct Ping;

impl Command for Ping {
    const NAME: &'static str = "__org.bulkhead_ping";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Bulkhead extension: return {} immediately. May run out-of-band \
        (exec-oob), bypassing commands in progress.";
    const ALLOW_OOB: bool = true;
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, _: &Ctx<'_>) -> Result<Empty> {
        Ok(Empty {})
    }
}
