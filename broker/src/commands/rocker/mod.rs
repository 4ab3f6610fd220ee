//! `query-rocker`, `query-rocker-ports`, `query-rocker-of-dpa-flows`,
//! `query-rocker-of-dpa-groups`: the host-side switches of `-device
//! rocker` (their configuration from the broker, their live tables and
//! port state from net-proc, `machine::rocker`). The guest-visible rocker
//! PCI device is not offered.

pub mod types;

use ipc_proto::net::{NetReply, NetRequest};
use ipc_proto::rocker::{RockerReply, RockerRequest};
use serde::Deserialize;

use self::types::{RockerFlow, RockerGroup, RockerPort, RockerSwitch};
use crate::cli::rocker::SwitchConfig;
use crate::machine::netdevs;
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, QapiType, SchemaType};

/// The configured switch `name`, or QEMU's error.
fn switch<'a>(ctx: &'a Ctx<'_>, name: &str) -> Result<&'a SwitchConfig> {
    ctx.machine
        .config()
        .rocker
        .switches
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| QmpError::generic(format!("rocker {name} not found")))
}

/// Asks net-proc (while it is being restarted, the request waits for the
/// restart and its replay).
fn ask(ctx: &Ctx<'_>, req: RockerRequest) -> Result<RockerReply> {
    match netdevs::worker::request(ctx.machine, NetRequest::Rocker(req), &[])? {
        NetReply::Rocker(r) => Ok(r),
        other @ (NetReply::Alive | NetReply::Trace(_) | NetReply::Done | NetReply::Stats(_)) => {
            Err(crate::machine::unexpected_reply(&other).into())
        }
        #[cfg(feature = "test-hooks")]
        other @ NetReply::EscapeOutcome(_) => Err(crate::machine::unexpected_reply(&other).into()),
    }
}

/// Arguments naming a switch.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NameArgs {
    /// The switch name.
    pub name: String,
}

impl QapiType for NameArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "q_obj_query-rocker-arg",
            members: vec![member::<String>("name")],
        }
    }
}

/// `query-rocker`.
pub struct QueryRocker;

impl Command for QueryRocker {
    const NAME: &'static str = "query-rocker";
    const DOC: &'static str = "Return a rocker switch's name, id and number of ports.";
    type Args = NameArgs;
    type Ret = RockerSwitch;

    fn run(args: NameArgs, ctx: &Ctx<'_>) -> Result<RockerSwitch> {
        let s = switch(ctx, &args.name)?;
        Ok(RockerSwitch {
            name: s.name.clone(),
            id: s.id,
            ports: s.ports.len() as u32,
        })
    }
}

/// `query-rocker-ports`.
pub struct QueryRockerPorts;

impl Command for QueryRockerPorts {
    const NAME: &'static str = "query-rocker-ports";
    const DOC: &'static str = "Return a rocker switch's ports and their link state.";
    type Args = NameArgs;
    type Ret = Vec<RockerPort>;

    fn run(args: NameArgs, ctx: &Ctx<'_>) -> Result<Vec<RockerPort>> {
        let s = switch(ctx, &args.name)?;
        let states = match ask(ctx, RockerRequest::Ports { name: args.name })? {
            RockerReply::Ports(p) => p,
            other => return Err(crate::machine::unexpected_reply(&other).into()),
        };
        Ok(states
            .into_iter()
            .enumerate()
            .map(|(i, p)| RockerPort {
                name: format!("{}.{}", s.name, i + 1),
                enabled: p.enabled,
                link_up: p.link_up,
                speed: 10_000,
                duplex: "full",
                autoneg: "off",
            })
            .collect())
    }
}

/// Arguments of `query-rocker-of-dpa-flows`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FlowsArgs {
    /// The switch name.
    pub name: String,
    /// Only this table.
    pub tbl_id: Option<u32>,
}

impl QapiType for FlowsArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "q_obj_query-rocker-of-dpa-flows-arg",
            members: vec![member::<String>("name"), optional::<u32>("tbl-id")],
        }
    }
}

/// `query-rocker-of-dpa-flows`.
pub struct QueryRockerOfDpaFlows;

impl Command for QueryRockerOfDpaFlows {
    const NAME: &'static str = "query-rocker-of-dpa-flows";
    const DOC: &'static str = "Return a rocker switch's OF-DPA flow entries (of one table).";
    type Args = FlowsArgs;
    type Ret = Vec<RockerFlow>;

    fn run(args: FlowsArgs, ctx: &Ctx<'_>) -> Result<Vec<RockerFlow>> {
        switch(ctx, &args.name)?;
        let req = RockerRequest::Flows {
            name: args.name,
            tbl_id: args.tbl_id,
        };
        match ask(ctx, req)? {
            RockerReply::Flows(f) => Ok(f.into_iter().map(RockerFlow::from).collect()),
            other => Err(crate::machine::unexpected_reply(&other).into()),
        }
    }
}

/// Arguments of `query-rocker-of-dpa-groups`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GroupsArgs {
    /// The switch name.
    pub name: String,
    /// Only groups of this type.
    #[serde(rename = "type")]
    pub group_type: Option<u32>,
}

impl QapiType for GroupsArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "q_obj_query-rocker-of-dpa-groups-arg",
            members: vec![member::<String>("name"), optional::<u32>("type")],
        }
    }
}

/// `query-rocker-of-dpa-groups`.
pub struct QueryRockerOfDpaGroups;

impl Command for QueryRockerOfDpaGroups {
    const NAME: &'static str = "query-rocker-of-dpa-groups";
    const DOC: &'static str = "Return a rocker switch's OF-DPA groups (of one type).";
    type Args = GroupsArgs;
    type Ret = Vec<RockerGroup>;

    fn run(args: GroupsArgs, ctx: &Ctx<'_>) -> Result<Vec<RockerGroup>> {
        let group_type = match args.group_type {
            None => None,
            Some(t) => Some(
                u8::try_from(t)
                    .map_err(|_| QmpError::generic("Parameter 'type' expects uint8_t"))?,
            ),
        };
        switch(ctx, &args.name)?;
        let req = RockerRequest::Groups {
            name: args.name,
            group_type,
        };
        match ask(ctx, req)? {
            RockerReply::Groups(g) => Ok(g.into_iter().map(RockerGroup::from).collect()),
            other => Err(crate::machine::unexpected_reply(&other).into()),
        }
    }
}
