//! The switches of `-device rocker` in net-proc: their ports are netdevs
//! of the one netdev layer ([`super::netdevs`]), which opens the TAPs,
//! runs net-proc and replays it after a restart (TAPs, NICs, then the
//! switches through [`replay`]); learned MACs come back from traffic.

use ipc_proto::net::{NetReply, NetRequest};
use ipc_proto::rocker::{RockerReply, RockerRequest, SwitchSpec};
use ipc_proto::FlatError;

use super::netdevs::{self, NetdevKind};
use super::{lock, unexpected_reply, Machine, NetLink};
use crate::cli::rocker::{SwitchConfig, DEFAULT_AGEING_SECS};

/// The switch using netdev `netdev` as a port, if any.
pub fn switch_on_netdev(m: &Machine, netdev: &str) -> Option<String> {
    m.config()
        .rocker
        .switches
        .iter()
        .find(|s| s.ports.iter().any(|p| p == netdev))
        .map(|s| s.name.clone())
}

fn create_request(s: &SwitchConfig) -> NetRequest {
    NetRequest::Rocker(RockerRequest::Create(SwitchSpec {
        name: s.name.clone(),
        id: s.id,
        ports: s.ports.clone(),
        ageing_secs: DEFAULT_AGEING_SECS,
    }))
}

fn done(r: NetReply) -> Result<(), FlatError> {
    match r {
        NetReply::Rocker(RockerReply::Done) => Ok(()),
        other @ (NetReply::Rocker(
            RockerReply::Ports(_) | RockerReply::Flows(_) | RockerReply::Groups(_),
        )
        | NetReply::Alive
        | NetReply::Trace(_)
        | NetReply::Done
        | NetReply::Stats(_)) => Err(unexpected_reply(&other)),
        #[cfg(feature = "test-hooks")]
        other @ NetReply::EscapeOutcome(_) => Err(unexpected_reply(&other)),
    }
}

/// Creates the command line's switches (after the `-netdev`s): each port
/// must be a TAP netdev.
pub fn apply_config(m: &Machine) -> Result<(), FlatError> {
    for s in &m.config().rocker.switches {
        for p in &s.ports {
            let is_tap = matches!(
                lock(&m.netdevs).netdev(p).map(|n| &n.kind),
                Some(NetdevKind::Tap { .. } | NetdevKind::SwitchPort)
            );
            if !is_tap {
                return Err(FlatError::generic(format!(
                    "-device rocker,name={}: port netdev '{p}' is not a tap or x-switch-port netdev",
                    s.name
                )));
            }
        }
        done(netdevs::worker::request(m, create_request(s), &[])?)?;
    }
    lock(&m.netdevs).switches_up = true;
    Ok(())
}

/// Creates every switch in a freshly started net-proc (its TAPs are
/// there already).
pub fn replay(m: &Machine, link: &NetLink) -> Result<(), FlatError> {
    if !lock(&m.netdevs).switches_up {
        return Ok(());
    }
    for s in &m.config().rocker.switches {
        done(link.request(create_request(s), &[])?)?;
    }
    Ok(())
}
