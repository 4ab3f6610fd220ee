//! NICs (`virtio-net-device`): their backend — a net-proc NIC on a TAP
//! netdev, or an external vhost-user backend for a `vhost-user` netdev —,
//! QEMU's default MACs, `set_link` by NIC or netdev name, and
//! `query-rx-filter` in QEMU's shape for a virtio-net without a control
//! queue (no filtering: promiscuous, every VLAN).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use ipc_proto::net::{NetReply, NetRequest, NicSpec};
use ipc_proto::{ErrorClass, FlatError};
use serde_json::{json, Value};

use super::spec::DeviceSpec;
use super::{generic, Backend};
use crate::machine::netdevs::{self, NetdevKind};
use crate::machine::{lock, unexpected_reply, Machine};

/// The id of the device using netdev `netdev`, if any.
pub fn device_on_netdev(m: &Machine, netdev: &str) -> Option<String> {
    lock(&m.devices)
        .devices
        .iter()
        .find(|d| d.spec.netdev.as_deref() == Some(netdev))
        .map(|d| d.spec.id.clone())
}

/// The backend a new NIC on `netdev` will have (the netdev must exist
/// and be free; the caller holds the devices' lock, `taken` are the
/// netdevs of the devices already there).
pub fn plan(
    m: &Machine,
    spec: &DeviceSpec,
    netdev: &str,
    taken: bool,
) -> Result<Backend, FlatError> {
    let st = lock(&m.netdevs);
    let n = st.netdev(netdev).ok_or_else(|| {
        generic(format!(
            "Property '{}.netdev' can't find value '{netdev}'",
            spec.driver
        ))
    })?;
    let switch_port = matches!(n.kind, NetdevKind::SwitchPort);
    let switch = crate::machine::rocker::switch_on_netdev(m, netdev);
    if taken || (!switch_port && switch.is_some()) {
        return Err(generic(format!(
            "Property '{}.netdev' can't take value '{netdev}', it's in use",
            spec.driver
        )));
    }
    // A switch port no switch lists would be a NIC on an unplugged wire:
    // said, not silently accepted (switches come from the command line).
    if switch_port && switch.is_none() {
        return Err(generic(format!(
            "Property '{}.netdev' can't take value '{netdev}': x-switch-port netdev \
             '{netdev}' is not a port of any -device rocker",
            spec.driver
        )));
    }
    Ok(match &n.kind {
        NetdevKind::Tap { .. } | NetdevKind::SwitchPort => Backend::Nic {
            netdev: netdev.to_owned(),
        },
        NetdevKind::VhostUser { chardev, path, .. } => Backend::External {
            chardev: chardev.clone(),
            path: path.clone(),
        },
    })
}

/// Queue pairs of netdev `netdev` (1 if unknown).
pub fn queue_pairs(m: &Machine, netdev: &str) -> u16 {
    match lock(&m.netdevs).netdev(netdev).map(|n| &n.kind) {
        Some(NetdevKind::Tap { fds, .. }) => u16::try_from(fds.len()).unwrap_or(1).max(1),
        Some(NetdevKind::VhostUser { queues, .. }) => *queues,
        Some(NetdevKind::SwitchPort) => 1,
        None => 1,
    }
}

/// The MAC of new device `spec`: its `mac=`, or QEMU's default for a NIC
/// without one: 52:54:00:12:34:56+n, the first no device in `devices` has.
pub fn default_mac(devices: &[super::DeviceRecord], spec: &DeviceSpec) -> [u8; 6] {
    if let Some(mac) = spec.mac {
        return mac;
    }
    let used: Vec<[u8; 6]> = devices.iter().filter_map(|d| d.spec.mac).collect();
    (0u8..=0xa9)
        .map(|i| [0x52, 0x54, 0, 0x12, 0x34, 0x56 + i])
        .find(|mac| !used.contains(mac))
        .unwrap_or([0x52, 0x54, 0, 0x12, 0x34, 0x56])
}

/// A new connection to NIC `id`: one end of a fresh socketpair whose
/// other end net-proc now serves.
pub fn connect(m: &Machine, id: &str) -> Result<UnixStream, FlatError> {
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| generic(format!("cannot create a vhost-user socketpair: {e}")))?;
    let req = NetRequest::AttachNicConnection { id: id.to_owned() };
    match netdevs::worker::request(m, req, &[theirs.as_fd()])? {
        NetReply::Done => Ok(ours),
        other @ (NetReply::Alive
        | NetReply::Trace(_)
        | NetReply::Stats(_)
        | NetReply::Rocker(_)) => Err(unexpected_reply(&other)),
        #[cfg(feature = "test-hooks")]
        other @ NetReply::EscapeOutcome(_) => Err(unexpected_reply(&other)),
    }
}

/// Creates NIC `spec` (MAC `mac`) in net-proc on TAP netdev `netdev`.
pub fn create(m: &Machine, spec: &DeviceSpec, netdev: &str, mac: [u8; 6]) -> Result<(), FlatError> {
    netdevs::add_nic(
        m,
        NicSpec {
            id: spec.id.clone(),
            netdev: netdev.to_owned(),
            mac,
            queue_pairs: queue_pairs(m, netdev),
            mtu: spec.host_mtu,
            link_up: true,
        },
    )
}

/// Formats a MAC as QEMU does.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (QEMU's `mac` property).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// `set_link`: `name` is a NIC id or a netdev id; the link state is the
/// NIC's (its guest sees it in the config space's STATUS).
pub fn set_link(m: &Machine, name: &str, up: bool) -> Result<(), FlatError> {
    let nic = {
        let st = lock(&m.devices);
        st.devices
            .iter()
            .filter(|d| d.ready && d.spec.netdev.is_some())
            .find(|d| d.spec.id == name || d.spec.netdev.as_deref() == Some(name))
            .map(|d| (d.spec.id.clone(), matches!(d.backend, Backend::Nic { .. })))
    };
    let netdev_alone = lock(&m.netdevs).netdev(name).is_some();
    match nic {
        Some((id, true)) => netdevs::set_nic_link(m, &id, up),
        Some((id, false)) => Err(generic(format!(
            "set_link: NIC '{id}' has an external vhost-user backend, whose link bulkhead \
             does not control"
        ))),
        // A netdev no NIC uses: nothing can see its link.
        None if netdev_alone => Err(generic(format!(
            "set_link: netdev '{name}' has no NIC attached"
        ))),
        None => Err(FlatError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{name}' not found"),
        )),
    }
}

/// QEMU's rx filter of a virtio-net with no control queue.
fn rx_filter(name: &str, mac: &[u8; 6]) -> Value {
    let vlans: Vec<u16> = (0..4096u16).rev().collect();
    json!({
        "promiscuous": true,
        "name": name,
        "main-mac": mac_text(mac),
        "unicast": "normal",
        "vlan": "all",
        "vlan-table": vlans,
        "unicast-table": [],
        "multicast": "normal",
        "multicast-overflow": false,
        "unicast-overflow": false,
        "multicast-table": [],
        "broadcast-allowed": false,
    })
}

/// `query-rx-filter`: every NIC, or the one named (QEMU's messages for a
/// netdev or an unknown name).
pub fn query_rx_filter(m: &Machine, name: Option<&str>) -> Result<Vec<Value>, FlatError> {
    let nics: Vec<(String, [u8; 6])> = lock(&m.devices)
        .devices
        .iter()
        .filter(|d| d.ready && d.spec.netdev.is_some())
        .map(|d| (d.spec.id.clone(), d.spec.mac.unwrap_or_default()))
        .collect();
    let current = |id: &str, mac: [u8; 6]| lock(&m.netdevs).nic(id).map_or(mac, |n| n.mac);
    match name {
        None => Ok(nics
            .into_iter()
            .map(|(id, mac)| rx_filter(&id, &current(&id, mac)))
            .collect()),
        Some(n) => {
            if let Some((id, mac)) = nics.into_iter().find(|(id, _)| id == n) {
                return Ok(vec![rx_filter(&id, &current(&id, mac))]);
            }
            if lock(&m.netdevs).netdev(n).is_some() {
                return Err(generic(format!("net client({n}) isn't a NIC")));
            }
            Err(generic(format!("invalid net client name: {n}")))
        }
    }
}
