//! Learning L2 switches (QEMU's "rocker", host-side): each switch forwards
//! between its ports through an OF-DPA pipeline it programs itself.
//!
//! - [`of_dpa`]: the flow and group tables and the pipeline walk.
//! - [`bridge`]: the controller that programs them as Linux's rocker
//!   driver does for a bridge (VLANs, groups, learning, ageing).
//! - [`port`]: the port trait and its TAP implementation.
//! - [`forward`]: a running switch and its forwarding thread.
//!
//! The broker holds each switch's configuration and replays it with the
//! ports' fds into a restarted net-proc: nothing here needs to outlive the
//! process.

pub mod bridge;
pub mod forward;
pub mod of_dpa;
pub mod port;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use ipc_proto::rocker::{RockerReply, RockerRequest, SwitchSpec};
use ipc_proto::FlatError;

use self::bridge::{Bridge, INTERNAL_VLAN_BASE};
use self::forward::Running;
use self::port::{SwitchPort, TapPort};

/// Errors of switch requests.
#[derive(Debug, thiserror::Error)]
pub enum RockerError {
    /// No switch has that name.
    #[error("rocker {0} not found")]
    NotFound(String),
    /// A switch has that name already.
    #[error("{0} already exists")]
    Exists(String),
    /// The request carried another number of fds than the switch has ports.
    #[error("switch {name}: {ports} ports but {fds} fds")]
    FdCount {
        /// The switch.
        name: String,
        /// Its ports.
        ports: usize,
        /// The fds received.
        fds: usize,
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

/// net-proc's switches, by name.
#[derive(Default)]
pub struct Switches {
    running: BTreeMap<String, (Running, usize)>,
}

impl Switches {
    /// Carries out `req`; `fds` are the request's fds.
    pub fn handle(
        &mut self,
        req: RockerRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<RockerReply, RockerError> {
        match req {
            RockerRequest::Create(spec) => self.create(spec, fds).map(|()| RockerReply::Done),
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

    fn get(&self, name: &str) -> Result<&Running, RockerError> {
        self.running
            .get(name)
            .map(|(r, _)| r)
            .ok_or_else(|| RockerError::NotFound(name.to_owned()))
    }

    fn create(&mut self, spec: SwitchSpec, fds: Vec<OwnedFd>) -> Result<(), RockerError> {
        if self.running.contains_key(&spec.name) {
            return Err(RockerError::Exists(spec.name));
        }
        if fds.len() != spec.ports.len() {
            return Err(RockerError::FdCount {
                name: spec.name,
                ports: spec.ports.len(),
                fds: fds.len(),
            });
        }
        // One internal VLAN per switch (each is one bridge), from 0xf00
        // up in creation order, as the driver numbers bridges.
        let index = (0..)
            .find(|i| !self.running.values().any(|(_, v)| v == i))
            .unwrap_or(0);
        let vlan = INTERNAL_VLAN_BASE + index as u16;
        let bridge = Bridge::new(
            spec.ports.len() as u32,
            vlan,
            Duration::from_secs(u64::from(spec.ageing_secs)),
        );
        let ports: Vec<Box<dyn SwitchPort>> = fds
            .into_iter()
            .map(|fd| Box::new(TapPort::new(fd)) as Box<dyn SwitchPort>)
            .collect();
        let running = Running::start(&spec.name, bridge, ports)
            .map_err(|e| RockerError::Thread(spec.name.clone(), e))?;
        tracing::debug!("switch {} up with {} ports", spec.name, spec.ports.len());
        self.running.insert(spec.name, (running, index));
        Ok(())
    }
}
