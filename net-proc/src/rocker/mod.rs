//! Learning L2 switches (QEMU's "rocker", host-side): each switch forwards
//! between its ports through an OF-DPA pipeline it programs itself.
//!
//! - [`of_dpa`]: the flow and group tables and the pipeline walk.
//! - [`bridge`]: the controller that programs them as Linux's rocker
//!   driver does for a bridge (VLANs, groups, learning, ageing).
//! - [`port`]: a switch's ports ([`port::Member`]): fd netdevs
//!   ([`crate::port::Port`], the NICs' trait; bare fds in tests) and
//!   guest NICs.
//! - [`nic_port`]: the switch port netdev (`x-switch-port`) joining a
//!   guest NIC to a switch ring to ring.
//! - [`forward`]: a running switch, its forwarding path and the thread
//!   polling its fd ports.
//!
//! A switch's ports are netdevs net-proc holds (`crate::nics`), named by
//! id. The broker holds each switch's configuration and replays it after
//! the netdevs into a restarted net-proc: nothing here needs to outlive the
//! process.

pub mod bridge;
pub mod forward;
pub mod nic_port;
pub mod of_dpa;
pub mod port;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use ipc_proto::rocker::{RockerReply, RockerRequest, SwitchSpec};
use ipc_proto::FlatError;

use self::bridge::{Bridge, INTERNAL_VLAN_BASE};
use self::forward::Running;
use self::port::Member;

/// Errors of switch requests.
#[derive(Debug, thiserror::Error)]
pub enum RockerError {
    /// No switch has that name.
    #[error("rocker {0} not found")]
    NotFound(String),
    /// A switch has that name already.
    #[error("{0} already exists")]
    Exists(String),
    /// A port's netdev cannot be used.
    #[error("switch {name}: port '{port}': {reason}")]
    Port {
        /// The switch.
        name: String,
        /// The port's netdev id.
        port: String,
        /// Why.
        reason: String,
    },
    /// The forwarding thread could not start.
    #[error("cannot start switch {0}")]
    Thread(String, #[source] std::io::Error),
}

impl From<RockerError> for FlatError {
    fn from(e: RockerError) -> FlatError {
        FlatError::generic(ipc_proto::envelope::error_chain(&e))
    }
}

/// Finds the port a switch's netdev id names (or says why it cannot be one).
pub type PortLookup<'a> = dyn FnMut(&str) -> Result<Member, String> + 'a;

struct Switch {
    running: Running,
    vlan_index: usize,
    ports: Vec<String>,
}

/// net-proc's switches, by name.
#[derive(Default)]
pub struct Switches {
    running: BTreeMap<String, Switch>,
}

impl Switches {
    /// Carries out `req`; `lookup` gives a new switch its ports.
    pub fn handle(
        &mut self,
        req: RockerRequest,
        lookup: &mut PortLookup<'_>,
    ) -> Result<RockerReply, RockerError> {
        match req {
            RockerRequest::Create(spec) => self.create(spec, lookup).map(|()| RockerReply::Done),
            RockerRequest::Destroy { name } => self
                .running
                .remove(&name)
                .map(|_| RockerReply::Done)
                .ok_or(RockerError::NotFound(name)),
            RockerRequest::Ports { name } => Ok(RockerReply::Ports(self.get(&name)?.ports())),
            RockerRequest::Flows { name, tbl_id } => Ok(RockerReply::Flows(
                self.get(&name)?.bridge().tables().flows(tbl_id),
            )),
            RockerRequest::Groups { name, group_type } => Ok(RockerReply::Groups(
                self.get(&name)?.bridge().tables().groups(group_type),
            )),
        }
    }

    /// The switch netdev `netdev` is a port of, if any.
    pub fn using(&self, netdev: &str) -> Option<&str> {
        self.running
            .iter()
            .find(|(_, s)| s.ports.iter().any(|p| p == netdev))
            .map(|(name, _)| name.as_str())
    }

    fn get(&self, name: &str) -> Result<&Running, RockerError> {
        self.running
            .get(name)
            .map(|s| &s.running)
            .ok_or_else(|| RockerError::NotFound(name.to_owned()))
    }

    fn create(&mut self, spec: SwitchSpec, lookup: &mut PortLookup<'_>) -> Result<(), RockerError> {
        if self.running.contains_key(&spec.name) {
            return Err(RockerError::Exists(spec.name));
        }
        let mut ports: Vec<Member> = Vec::with_capacity(spec.ports.len());
        for (i, p) in spec.ports.iter().enumerate() {
            let taken = if spec.ports[..i].contains(p) {
                Some(spec.name.as_str())
            } else {
                self.using(p)
            };
            let port = match taken {
                Some(sw) => Err(format!("already a port of switch {sw}")),
                None => lookup(p),
            };
            ports.push(port.map_err(|reason| RockerError::Port {
                name: spec.name.clone(),
                port: p.clone(),
                reason,
            })?);
        }
        // One internal VLAN per switch (each is one bridge), from 0xf00
        // up in creation order, as the driver numbers bridges.
        let index = (0..)
            .find(|i| !self.running.values().any(|s| s.vlan_index == *i))
            .unwrap_or(0);
        let vlan = INTERNAL_VLAN_BASE + index as u16;
        let bridge = Bridge::new(
            spec.ports.len() as u32,
            vlan,
            Duration::from_secs(u64::from(spec.ageing_secs)),
        );
        let running = Running::start(&spec.name, bridge, ports)
            .map_err(|e| RockerError::Thread(spec.name.clone(), e))?;
        tracing::debug!("switch {} up with {} ports", spec.name, spec.ports.len());
        self.running.insert(
            spec.name,
            Switch {
                running,
                vlan_index: index,
                ports: spec.ports,
            },
        );
        Ok(())
    }
}
