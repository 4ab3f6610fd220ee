//! The switch (QEMU's "rocker") part of the broker ↔ net-proc channel.
//!
//! net-proc runs learning L2 switches over an OF-DPA pipeline whose ports
//! are its netdevs. The broker holds each switch's configuration (desired
//! state) and replays it, after the netdevs, into a restarted net-proc with
//! [`RockerRequest::Create`]; learned entries are relearned from traffic.
//! The table types are QEMU's `RockerOfDpaFlow*`/`RockerOfDpaGroup` with
//! absent members as `None` (MACs as bytes, the broker formats them).

use serde::{Deserialize, Serialize};

/// A switch to create. Its ports are netdevs net-proc already holds
/// (`NetRequest::AddTapNetdev`/`AddSwitchPortNetdev`), named by id; the
/// request carries no fds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchSpec {
    /// The switch name (`name=`).
    pub name: String,
    /// The switch id (`switch_id=`, QEMU's default: the first port MAC).
    pub id: u64,
    /// The ports' netdev ids, in port order.
    pub ports: Vec<String>,
    /// Seconds a learned MAC lives without traffic from it.
    pub ageing_secs: u32,
}

/// Switch requests (carried by `NetRequest::Rocker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RockerRequest {
    /// Create a switch on its netdevs and start forwarding.
    Create(SwitchSpec),
    /// Stop and remove a switch (its netdevs stay).
    Destroy {
        /// The switch name.
        name: String,
    },
    /// The ports' state.
    Ports {
        /// The switch name.
        name: String,
    },
    /// The OF-DPA flow tables (all, or table `tbl_id`).
    Flows {
        /// The switch name.
        name: String,
        /// Only this table.
        tbl_id: Option<u32>,
    },
    /// The OF-DPA group table (all, or groups of type `group_type`).
    Groups {
        /// The switch name.
        name: String,
        /// Only this group type.
        group_type: Option<u8>,
    },
}

/// Switch replies (carried by `NetReply::Rocker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RockerReply {
    /// The request was carried out.
    Done,
    /// Answer to [`RockerRequest::Ports`].
    Ports(Vec<PortState>),
    /// Answer to [`RockerRequest::Flows`].
    Flows(Vec<Flow>),
    /// Answer to [`RockerRequest::Groups`].
    Groups(Vec<Group>),
}

/// One port's state (QEMU's `RockerPort` less the name, which the broker
/// gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    /// The port forwards.
    pub enabled: bool,
    /// The link is up (the last TAP read or write succeeded).
    pub link_up: bool,
}

/// QEMU's `RockerOfDpaFlowKey`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowKey {
    /// Higher wins among matching entries of a table.
    pub priority: u32,
    /// The table (0 ingress port, 10 VLAN, 20 termination MAC, 50
    /// bridging, 60 ACL policy).
    pub tbl_id: u32,
    /// Input physical port.
    pub in_pport: Option<u32>,
    /// Tunnel id.
    pub tunnel_id: Option<u32>,
    /// VLAN id (0: untagged).
    pub vlan_id: Option<u16>,
    /// EtherType.
    pub eth_type: Option<u16>,
    /// Source MAC.
    pub eth_src: Option<[u8; 6]>,
    /// Destination MAC.
    pub eth_dst: Option<[u8; 6]>,
    /// IP protocol.
    pub ip_proto: Option<u8>,
    /// IP type of service.
    pub ip_tos: Option<u8>,
    /// IPv4 destination and prefix length.
    pub ip_dst: Option<([u8; 4], u8)>,
}

/// QEMU's `RockerOfDpaFlowMask` (a present mask limits its key member).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowMask {
    /// Input physical port mask.
    pub in_pport: Option<u32>,
    /// Tunnel id mask.
    pub tunnel_id: Option<u32>,
    /// VLAN id mask.
    pub vlan_id: Option<u16>,
    /// Source MAC mask.
    pub eth_src: Option<[u8; 6]>,
    /// Destination MAC mask.
    pub eth_dst: Option<[u8; 6]>,
    /// IP protocol mask.
    pub ip_proto: Option<u8>,
    /// IP type of service mask.
    pub ip_tos: Option<u8>,
}

/// QEMU's `RockerOfDpaFlowAction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowAction {
    /// The next table.
    pub goto_tbl: Option<u32>,
    /// The group the frame is written to.
    pub group_id: Option<u32>,
    /// Tunnel logical port.
    pub tunnel_lport: Option<u32>,
    /// VLAN id.
    pub vlan_id: Option<u16>,
    /// The VLAN id assigned (VLAN table).
    pub new_vlan_id: Option<u16>,
    /// Output physical port.
    pub out_pport: Option<u32>,
}

/// QEMU's `RockerOfDpaFlow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The entry's cookie.
    pub cookie: u64,
    /// Frames that matched it.
    pub hits: u64,
    /// What it matches.
    pub key: FlowKey,
    /// Which bits of the key count.
    pub mask: FlowMask,
    /// What a match does.
    pub action: FlowAction,
}

/// QEMU's `RockerOfDpaGroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group id (type in bits 28-31).
    pub id: u32,
    /// The group type (0 L2 interface, 4 L2 flood, ...).
    pub group_type: u8,
    /// VLAN id.
    pub vlan_id: Option<u16>,
    /// Physical port (L2 interface).
    pub pport: Option<u32>,
    /// Index (flood, rewrite, L3 groups).
    pub index: Option<u32>,
    /// Output physical port.
    pub out_pport: Option<u32>,
    /// Next group.
    pub group_id: Option<u32>,
    /// VLAN set on output.
    pub set_vlan_id: Option<u16>,
    /// 1: the VLAN tag is removed on output.
    pub pop_vlan: Option<u8>,
    /// Member groups (flood).
    pub group_ids: Option<Vec<u32>>,
    /// Source MAC set on output.
    pub set_eth_src: Option<[u8; 6]>,
    /// Destination MAC set on output.
    pub set_eth_dst: Option<[u8; 6]>,
    /// TTL checked (L3).
    pub ttl_check: Option<u8>,
}
