//! The QAPI types of the rocker commands (QEMU's `qapi/rocker.json`):
//! absent members are left out of the answer, as QEMU does; MACs are
//! `xx:xx:xx:xx:xx:xx`, `ip-dst` is `a.b.c.d/len`.

use ipc_proto::rocker::{Flow, Group};
use serde::Serialize;

use crate::qmp::schema::{member, optional, QapiType, SchemaType};

/// QAPI `RockerSwitch`.
#[derive(Debug, Serialize)]
pub struct RockerSwitch {
    /// The switch name.
    pub name: String,
    /// The switch id.
    pub id: u64,
    /// Number of front-panel ports.
    pub ports: u32,
}

impl QapiType for RockerSwitch {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "RockerSwitch",
            members: vec![
                member::<String>("name"),
                member::<u64>("id"),
                member::<u32>("ports"),
            ],
        }
    }
}

/// QAPI `RockerPortDuplex`.
pub struct Duplex;

impl QapiType for Duplex {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "RockerPortDuplex",
            values: vec!["half", "full"],
        }
    }
}

/// QAPI `RockerPortAutoneg`.
pub struct Autoneg;

impl QapiType for Autoneg {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "RockerPortAutoneg",
            values: vec!["off", "on"],
        }
    }
}

/// QAPI `RockerPort`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RockerPort {
    /// `SWITCH.N` (the reference's form), N from 1.
    pub name: String,
    /// The port forwards.
    pub enabled: bool,
    /// Its link is up.
    pub link_up: bool,
    /// Mbit/s.
    pub speed: u32,
    /// `full`.
    pub duplex: &'static str,
    /// `off`.
    pub autoneg: &'static str,
}

impl QapiType for RockerPort {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "RockerPort",
            members: vec![
                member::<String>("name"),
                member::<bool>("enabled"),
                member::<bool>("link-up"),
                member::<u32>("speed"),
                member::<Duplex>("duplex"),
                member::<Autoneg>("autoneg"),
            ],
        }
    }
}

/// `xx:xx:xx:xx:xx:xx`.
pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// QAPI `RockerOfDpaFlowKey`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FlowKey {
    priority: u32,
    tbl_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_pport: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eth_type: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eth_src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eth_dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_proto: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_tos: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_dst: Option<String>,
}

/// QAPI `RockerOfDpaFlowMask`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FlowMask {
    #[serde(skip_serializing_if = "Option::is_none")]
    in_pport: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eth_src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eth_dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_proto: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_tos: Option<u8>,
}

/// QAPI `RockerOfDpaFlowAction`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FlowAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    goto_tbl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_lport: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_vlan_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_pport: Option<u32>,
}

/// QAPI `RockerOfDpaFlow`.
#[derive(Debug, Serialize)]
pub struct RockerFlow {
    cookie: u64,
    hits: u64,
    key: FlowKey,
    mask: FlowMask,
    action: FlowAction,
}

impl From<Flow> for RockerFlow {
    fn from(f: Flow) -> RockerFlow {
        let (k, m, a) = (f.key, f.mask, f.action);
        RockerFlow {
            cookie: f.cookie,
            hits: f.hits,
            key: FlowKey {
                priority: k.priority,
                tbl_id: k.tbl_id,
                in_pport: k.in_pport,
                tunnel_id: k.tunnel_id,
                vlan_id: k.vlan_id,
                eth_type: k.eth_type,
                eth_src: k.eth_src.map(mac),
                eth_dst: k.eth_dst.map(mac),
                ip_proto: k.ip_proto,
                ip_tos: k.ip_tos,
                ip_dst: k
                    .ip_dst
                    .map(|(a, len)| format!("{}/{len}", std::net::Ipv4Addr::from(a))),
            },
            mask: FlowMask {
                in_pport: m.in_pport,
                tunnel_id: m.tunnel_id,
                vlan_id: m.vlan_id,
                eth_src: m.eth_src.map(mac),
                eth_dst: m.eth_dst.map(mac),
                ip_proto: m.ip_proto,
                ip_tos: m.ip_tos,
            },
            action: FlowAction {
                goto_tbl: a.goto_tbl,
                group_id: a.group_id,
                tunnel_lport: a.tunnel_lport,
                vlan_id: a.vlan_id,
                new_vlan_id: a.new_vlan_id,
                out_pport: a.out_pport,
            },
        }
    }
}

impl QapiType for RockerFlow {
    fn schema() -> SchemaType {
        let key = SchemaType::Object {
            name: "RockerOfDpaFlowKey",
            members: vec![
                member::<u32>("priority"),
                member::<u32>("tbl-id"),
                optional::<u32>("in-pport"),
                optional::<u32>("tunnel-id"),
                optional::<u32>("vlan-id"),
                optional::<u32>("eth-type"),
                optional::<String>("eth-src"),
                optional::<String>("eth-dst"),
                optional::<u32>("ip-proto"),
                optional::<u32>("ip-tos"),
                optional::<String>("ip-dst"),
            ],
        };
        let mask = SchemaType::Object {
            name: "RockerOfDpaFlowMask",
            members: vec![
                optional::<u32>("in-pport"),
                optional::<u32>("tunnel-id"),
                optional::<u32>("vlan-id"),
                optional::<String>("eth-src"),
                optional::<String>("eth-dst"),
                optional::<u32>("ip-proto"),
                optional::<u32>("ip-tos"),
            ],
        };
        let action = SchemaType::Object {
            name: "RockerOfDpaFlowAction",
            members: vec![
                optional::<u32>("goto-tbl"),
                optional::<u32>("group-id"),
                optional::<u32>("tunnel-lport"),
                optional::<u32>("vlan-id"),
                optional::<u32>("new-vlan-id"),
                optional::<u32>("out-pport"),
            ],
        };
        let mut members = vec![member::<u64>("cookie"), member::<u64>("hits")];
        for (name, ty) in [("key", key), ("mask", mask), ("action", action)] {
            members.push(crate::qmp::schema::Member {
                name,
                ty,
                optional: false,
            });
        }
        SchemaType::Object {
            name: "RockerOfDpaFlow",
            members,
        }
    }
}

/// QAPI `RockerOfDpaGroup`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RockerGroup {
    id: u32,
    #[serde(rename = "type")]
    group_type: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pport: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_pport: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_vlan_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pop_vlan: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_eth_src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_eth_dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_check: Option<u8>,
}

impl From<Group> for RockerGroup {
    fn from(g: Group) -> RockerGroup {
        RockerGroup {
            id: g.id,
            group_type: g.group_type,
            vlan_id: g.vlan_id,
            pport: g.pport,
            index: g.index,
            out_pport: g.out_pport,
            group_id: g.group_id,
            set_vlan_id: g.set_vlan_id,
            pop_vlan: g.pop_vlan,
            group_ids: g.group_ids,
            set_eth_src: g.set_eth_src.map(mac),
            set_eth_dst: g.set_eth_dst.map(mac),
            ttl_check: g.ttl_check,
        }
    }
}

impl QapiType for RockerGroup {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "RockerOfDpaGroup",
            members: vec![
                member::<u32>("id"),
                member::<u32>("type"),
                optional::<u32>("vlan-id"),
                optional::<u32>("pport"),
                optional::<u32>("index"),
                optional::<u32>("out-pport"),
                optional::<u32>("group-id"),
                optional::<u32>("set-vlan-id"),
                optional::<u32>("pop-vlan"),
                optional::<Vec<u32>>("group-ids"),
                optional::<String>("set-eth-src"),
                optional::<String>("set-eth-dst"),
                optional::<u32>("ttl-check"),
            ],
        }
    }
}
