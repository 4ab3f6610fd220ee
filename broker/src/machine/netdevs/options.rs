//! `-netdev` / `netdev_add` options, checked with QEMU's messages: the
//! `tap` and `vhost-user` types bulkhead has, and its own `x-switch-port`
//! (a guest NIC as a `-device rocker` port; QEMU's nearest is `hubport`).

use serde_json::{Map, Value};

use ipc_proto::FlatError;

/// A validated netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevOptions {
    /// `id`.
    pub id: String,
    /// What it is.
    pub kind: NetdevKindOptions,
}

/// The type-specific part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevKindOptions {
    /// `type=tap`: a TAP the broker opens (`ifname`) or the user passed
    /// (`fd`: a `getfd` name, or on the command line an fd number).
    Tap {
        /// `ifname` (empty: the kernel picks `tap%d`).
        ifname: String,
        /// `fd`.
        fd: Option<String>,
        /// `queues`.
        queues: u16,
        /// `vnet_hdr` (default on).
        vnet_hdr: bool,
    },
    /// `type=x-switch-port` (bulkhead's own): no host side; a NIC on it is
    /// a port of the `-device rocker` switch that lists it.
    SwitchPort,
    /// `type=vhost-user`: an external backend at a `-chardev socket`.
    VhostUser {
        /// `chardev`.
        chardev: String,
        /// `queues`.
        queues: u16,
    },
}

fn generic(s: impl Into<String>) -> FlatError {
    FlatError::generic(s)
}

fn text(key: &str, v: &Value) -> Result<String, FlatError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "on" } else { "off" }.to_owned()),
        _ => Err(generic(format!(
            "Invalid parameter type for '{key}', expected: string"
        ))),
    }
}

fn boolean(key: &str, v: &Value) -> Result<bool, FlatError> {
    match text(key, v)?.as_str() {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(generic(format!("Parameter '{key}' expects 'on' or 'off'"))),
    }
}

fn queues(v: &Value) -> Result<u16, FlatError> {
    let n = text("queues", v)?
        .parse::<u32>()
        .map_err(|_| generic("Parameter 'queues' expects uint32"))?;
    match n {
        1..=16 => Ok(n as u16),
        _ => Err(generic(format!(
            "queues={n}: bulkhead's NICs take 1 to 16 queue pairs"
        ))),
    }
}

/// QEMU's netdev types bulkhead does not have.
const OTHER_TYPES: &[&str] = &[
    "none",
    "nic",
    "user",
    "l2tpv3",
    "socket",
    "stream",
    "dgram",
    "vde",
    "bridge",
    "hubport",
    "netmap",
    "vhost-vdpa",
    "af-xdp",
    "vmnet-host",
    "vmnet-shared",
    "vmnet-bridged",
];

/// Validates netdev properties (`netdev_add`'s arguments or a parsed
/// `-netdev`).
pub fn parse(props: &Map<String, Value>) -> Result<NetdevOptions, FlatError> {
    let ty = match props.get("type") {
        None => return Err(generic("Parameter 'type' is missing")),
        Some(v) => text("type", v)?,
    };
    let id = match props.get("id") {
        None => return Err(generic("Parameter 'id' is missing")),
        Some(v) => text("id", v)?,
    };
    if !crate::machine::devices::spec::id_wellformed(&id) {
        return Err(generic("Parameter 'id' expects an identifier"));
    }
    let kind = match ty.as_str() {
        "tap" => parse_tap(props)?,
        "vhost-user" => parse_vhost_user(props)?,
        "x-switch-port" => {
            if let Some(k) = props.keys().find(|k| !matches!(k.as_str(), "type" | "id")) {
                return Err(generic(format!("Invalid parameter '{k}'")));
            }
            NetdevKindOptions::SwitchPort
        }
        t if OTHER_TYPES.contains(&t) => {
            return Err(generic(format!(
                "netdev type '{t}' is not supported by bulkhead (tap, vhost-user, x-switch-port)"
            )))
        }
        t => {
            return Err(generic(format!(
                "Parameter 'type' does not accept value '{t}'"
            )))
        }
    };
    Ok(NetdevOptions { id, kind })
}

fn parse_tap(props: &Map<String, Value>) -> Result<NetdevKindOptions, FlatError> {
    let (mut ifname, mut fd, mut q, mut vnet_hdr) = (None, None, None, None);
    let mut script_given = false;
    for (k, v) in props {
        match k.as_str() {
            "type" | "id" => {}
            "ifname" => ifname = Some(text(k, v)?),
            "fd" => fd = Some(text(k, v)?),
            "queues" => q = Some(queues(v)?),
            "vnet_hdr" => vnet_hdr = Some(boolean(k, v)?),
            "script" | "downscript" => {
                script_given = true;
                let s = text(k, v)?;
                if !(s == "no" || s.is_empty()) {
                    return Err(generic(format!(
                        "{k}={s}: bulkhead runs no network scripts (use {k}=no and \
                         configure the TAP beforehand)"
                    )));
                }
            }
            "vhost" => {
                if boolean(k, v)? {
                    return Err(generic(
                        "vhost=on is not supported: net-proc serves the NIC's queues",
                    ));
                }
            }
            _ => return Err(generic(format!("Parameter '{k}' is unexpected"))),
        }
    }
    if fd.is_some() && (ifname.is_some() || script_given || q.is_some() || vnet_hdr.is_some()) {
        return Err(generic(
            "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= \
             are invalid with fd=",
        ));
    }
    Ok(NetdevKindOptions::Tap {
        ifname: ifname.unwrap_or_default(),
        fd,
        queues: q.unwrap_or(1),
        vnet_hdr: vnet_hdr.unwrap_or(true),
    })
}

fn parse_vhost_user(props: &Map<String, Value>) -> Result<NetdevKindOptions, FlatError> {
    let (mut chardev, mut q) = (None, None);
    for (k, v) in props {
        match k.as_str() {
            "type" | "id" => {}
            "chardev" => chardev = Some(text(k, v)?),
            "queues" => q = Some(queues(v)?),
            _ => return Err(generic(format!("Parameter '{k}' is unexpected"))),
        }
    }
    let chardev = chardev.ok_or_else(|| generic("Parameter 'chardev' is missing"))?;
    Ok(NetdevKindOptions::VhostUser {
        chardev,
        queues: q.unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<NetdevOptions, FlatError> {
        parse(v.as_object().unwrap())
    }

    #[test]
    fn tap_and_vhost_user_parse_from_qmp_and_command_line_values() {
        let o = p(
            json!({"type": "tap", "id": "n0", "ifname": "tap0", "script": "no",
            "downscript": "no"}),
        )
        .unwrap();
        assert_eq!(
            o.kind,
            NetdevKindOptions::Tap {
                ifname: "tap0".into(),
                fd: None,
                queues: 1,
                vnet_hdr: true
            }
        );
        let o = p(json!({"type": "tap", "id": "n0", "queues": "4", "vnet_hdr": "off"})).unwrap();
        assert!(matches!(
            o.kind,
            NetdevKindOptions::Tap {
                queues: 4,
                vnet_hdr: false,
                ..
            }
        ));
        let o = p(json!({"type": "vhost-user", "id": "v", "chardev": "c0"})).unwrap();
        assert_eq!(
            o.kind,
            NetdevKindOptions::VhostUser {
                chardev: "c0".into(),
                queues: 1
            }
        );
        let o = p(json!({"type": "x-switch-port", "id": "s"})).unwrap();
        assert_eq!(o.kind, NetdevKindOptions::SwitchPort);
        let e = p(json!({"type": "x-switch-port", "id": "s", "ifname": "t"})).unwrap_err();
        assert_eq!(e.desc, "Invalid parameter 'ifname'");
    }

    #[test]
    fn bad_netdevs_get_clear_messages() {
        let e = |v| p(v).unwrap_err().desc;
        assert_eq!(e(json!({"id": "n"})), "Parameter 'type' is missing");
        assert_eq!(e(json!({"type": "tap"})), "Parameter 'id' is missing");
        assert_eq!(
            e(json!({"type": "tap", "id": "1x"})),
            "Parameter 'id' expects an identifier"
        );
        assert_eq!(
            e(json!({"type": "bogus", "id": "n"})),
            "Parameter 'type' does not accept value 'bogus'"
        );
        assert!(e(json!({"type": "user", "id": "n"})).contains("not supported"));
        assert_eq!(
            e(json!({"type": "tap", "id": "n", "fd": "f", "ifname": "x"})),
            "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= \
             are invalid with fd="
        );
        assert!(
            e(json!({"type": "tap", "id": "n", "script": "/etc/qemu-ifup"}))
                .contains("runs no network scripts")
        );
        assert_eq!(
            e(json!({"type": "tap", "id": "n", "foo": 1})),
            "Parameter 'foo' is unexpected"
        );
        assert_eq!(
            e(json!({"type": "vhost-user", "id": "n"})),
            "Parameter 'chardev' is missing"
        );
    }
}
