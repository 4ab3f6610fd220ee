//! Network commands: `netdev_add` / `netdev_del` (TAP netdevs the broker
//! opens or takes from `getfd`, `vhost-user` netdevs on a `-chardev`),
//! `set_link`, `query-rx-filter`, the `NIC_RX_FILTER_CHANGED` event, and
//! `announce-self` ([`announce`]).
//! The desired state lives in [`crate::machine::netdevs`], the NICs in
//! [`crate::machine::devices::net`].

pub mod announce;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::machine::{devices, netdevs};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx, Registry};
use crate::qmp::schema::{member, optional, Builtin, Empty, QapiType, SchemaType};

/// `netdev_add`'s arguments: `type`, `id` and the type's options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetdevAddArgs(pub Map<String, Value>);

impl QapiType for NetdevAddArgs {
    fn schema() -> SchemaType {
        SchemaType::Builtin(Builtin::Any)
    }
}

/// `netdev_add`.
pub struct NetdevAdd;

impl Command for NetdevAdd {
    const NAME: &'static str = "netdev_add";
    const DOC: &'static str = "Add a netdev: type=tap with ifname= (the broker opens \
        /dev/net/tun; script=no, downscript=no) or fd= (a getfd name), or type=vhost-user \
        with chardev= (an external backend).";
    type Args = NetdevAddArgs;
    type Ret = Empty;

    fn run(args: NetdevAddArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let by_name = |name: &str| {
            ctx.session.take_named_fd(name).ok_or_else(|| {
                ipc_proto::FlatError::generic(format!(
                    "File descriptor named '{name}' has not been found"
                ))
            })
        };
        netdevs::add(ctx.machine, &args.0, &by_name)?;
        Ok(Empty {})
    }
}

/// Arguments of `netdev_del`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetdevDelArgs {
    /// The netdev id.
    pub id: String,
}

impl QapiType for NetdevDelArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "NetdevDelArgs",
            members: vec![member::<String>("id")],
        }
    }
}

/// `netdev_del`.
pub struct NetdevDel;

impl Command for NetdevDel {
    const NAME: &'static str = "netdev_del";
    const DOC: &'static str = "Remove a netdev no NIC uses.";
    type Args = NetdevDelArgs;
    type Ret = Empty;

    fn run(args: NetdevDelArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        netdevs::del(ctx.machine, &args.id)?;
        Ok(Empty {})
    }
}

/// Arguments of `set_link`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLinkArgs {
    /// A NIC id or a netdev id.
    pub name: String,
    /// The link state wanted.
    pub up: bool,
}

impl QapiType for SetLinkArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "SetLinkArgs",
            members: vec![member::<String>("name"), member::<bool>("up")],
        }
    }
}

/// `set_link`.
pub struct SetLink;

impl Command for SetLink {
    const NAME: &'static str = "set_link";
    const DOC: &'static str = "Set a NIC's link up or down (by NIC or netdev id): the guest \
        sees it in the device's status and traffic stops while it is down.";
    type Args = SetLinkArgs;
    type Ret = Empty;

    fn run(args: SetLinkArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        devices::net::set_link(ctx.machine, &args.name, args.up)?;
        Ok(Empty {})
    }
}

/// Arguments of `query-rx-filter`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRxFilterArgs {
    /// One NIC (all when absent).
    pub name: Option<String>,
}

impl QapiType for QueryRxFilterArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "QueryRxFilterArgs",
            members: vec![optional::<String>("name")],
        }
    }
}

/// One NIC's receive filter (`RxFilterInfo`).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct RxFilterInfo(pub Value);

impl QapiType for RxFilterInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "RxFilterInfo",
            members: vec![
                member::<String>("name"),
                member::<bool>("promiscuous"),
                member::<String>("multicast"),
                member::<String>("unicast"),
                member::<String>("vlan"),
                member::<bool>("broadcast-allowed"),
                member::<bool>("multicast-overflow"),
                member::<bool>("unicast-overflow"),
                member::<String>("main-mac"),
                member::<Vec<i64>>("vlan-table"),
                member::<Vec<String>>("unicast-table"),
                member::<Vec<String>>("multicast-table"),
            ],
        }
    }
}

/// `query-rx-filter`.
pub struct QueryRxFilter;

impl Command for QueryRxFilter {
    const NAME: &'static str = "query-rx-filter";
    const DOC: &'static str = "The receive filters of the NICs (a virtio-net without a \
        control queue filters nothing: promiscuous, every VLAN).";
    type Args = QueryRxFilterArgs;
    type Ret = Vec<RxFilterInfo>;

    fn run(args: QueryRxFilterArgs, ctx: &Ctx<'_>) -> Result<Vec<RxFilterInfo>> {
        let infos = devices::net::query_rx_filter(ctx.machine, args.name.as_deref())
            .map_err(QmpError::from)?;
        Ok(infos.into_iter().map(RxFilterInfo).collect())
    }
}

/// Data of `NIC_RX_FILTER_CHANGED`.
pub struct NicRxFilterChangedData;

impl QapiType for NicRxFilterChangedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "NicRxFilterChangedData",
            members: vec![optional::<String>("name"), member::<String>("path")],
        }
    }
}

/// Registers the network commands and event in `r`.
pub fn register(r: &mut Registry) {
    r.register::<NetdevAdd>();
    r.register::<NetdevDel>();
    r.register::<SetLink>();
    r.register::<QueryRxFilter>();
    r.register::<announce::AnnounceSelf>();
    r.event::<NicRxFilterChangedData>(
        "NIC_RX_FILTER_CHANGED",
        "A NIC's receive filter changed (the guest set its MAC).",
    );
}
