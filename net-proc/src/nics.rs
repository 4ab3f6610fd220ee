//! What net-proc holds: netdevs (ports) and NIC exports bound to them, and
//! the handling of each net-channel request about them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use ipc_proto::net::{NetEvent, NetReply, NicSpec};
use ipc_proto::FlatError;

use crate::port::Netdev;
use crate::rocker::nic_port::NicPort;
use crate::rocker::port::Member;
use crate::tap::Tap;
use crate::vhost::backend::Nic;
use crate::vhost::export::Export;
use crate::vhost::stats::Counters;
use crate::virtio_net::NetConfig;

/// Most queue pairs a NIC may have.
pub const MAX_QUEUE_PAIRS: u16 = 16;

struct Bound {
    netdev: String,
    export: Export,
}

/// Netdevs and NICs of this net-proc.
pub struct Nics {
    netdevs: HashMap<String, Netdev>,
    nics: HashMap<String, Bound>,
    events: Sender<NetEvent>,
}

fn err(msg: String) -> FlatError {
    FlatError::generic(msg)
}

/// Checks `fd` is a socket before it is served as a vhost-user connection.
fn connected_stream(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let st = nix::sys::stat::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other("not a socket"));
    }
    Ok(UnixStream::from(fd))
}

impl Nics {
    /// Nothing yet; NIC events go to `events`.
    pub fn new(events: Sender<NetEvent>) -> Self {
        Nics {
            netdevs: HashMap::new(),
            nics: HashMap::new(),
            events,
        }
    }

    fn nic(&self, id: &str) -> Result<&Export, FlatError> {
        self.nics
            .get(id)
            .map(|b| &b.export)
            .ok_or_else(|| err(format!("NIC '{id}' not found")))
    }

    /// `AddTapNetdev`.
    pub fn add_tap(
        &mut self,
        id: String,
        vnet_hdr: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<NetReply, FlatError> {
        if self.netdevs.contains_key(&id) {
            return Err(err(format!("netdev '{id}' already exists")));
        }
        let tap = Tap::new(fds, vnet_hdr).map_err(|e| err(format!("netdev '{id}': {e}")))?;
        self.netdevs.insert(id, Netdev::Port(Arc::new(tap)));
        Ok(NetReply::Done)
    }

    /// `AddSwitchPortNetdev`: a netdev with no host side; the NIC on it
    /// is a port of the switch that lists it (no fds: frames go ring to
    /// ring).
    pub fn add_switch_port(
        &mut self,
        id: String,
        fds: Vec<OwnedFd>,
    ) -> Result<NetReply, FlatError> {
        if self.netdevs.contains_key(&id) {
            return Err(err(format!("netdev '{id}' already exists")));
        }
        if !fds.is_empty() {
            return Err(err(format!("netdev '{id}': a switch port takes no fds")));
        }
        let port = NicPort::new(&id);
        self.netdevs.insert(id, Netdev::Switch(port));
        Ok(NetReply::Done)
    }

    /// `Announce`: one RARP of `mac` from NIC `id` out its netdev
    /// ([`crate::announce`]).
    pub fn announce(&self, id: &str, mac: [u8; 6]) -> Result<NetReply, FlatError> {
        let bound = self
            .nics
            .get(id)
            .ok_or_else(|| err(format!("NIC '{id}' not found")))?;
        let port = self
            .netdevs
            .get(&bound.netdev)
            .ok_or_else(|| err(format!("netdev '{}' not found", bound.netdev)))?;
        crate::announce::send_netdev(port, mac)
            .map_err(|e| err(format!("NIC '{id}': its announcement was not sent: {e}")))?;
        Ok(NetReply::Done)
    }

    /// Netdev `id` joins a NIC to a switch (both may use it).
    pub fn is_switch_port(&self, id: &str) -> bool {
        matches!(self.netdevs.get(id), Some(Netdev::Switch(_)))
    }

    /// `RemoveNetdev`.
    pub fn remove_netdev(&mut self, id: &str) -> Result<NetReply, FlatError> {
        if !self.netdevs.contains_key(id) {
            return Err(err(format!("netdev '{id}' not found")));
        }
        if let Some((nic, _)) = self.nics.iter().find(|(_, b)| b.netdev == id) {
            return Err(err(format!("netdev '{id}' is used by NIC '{nic}'")));
        }
        self.netdevs.remove(id);
        Ok(NetReply::Done)
    }

    /// `AddNic`.
    pub fn add_nic(&mut self, spec: NicSpec) -> Result<NetReply, FlatError> {
        if self.nics.contains_key(&spec.id) {
            return Err(err(format!("NIC '{}' already exists", spec.id)));
        }
        let port = self
            .netdevs
            .get(&spec.netdev)
            .ok_or_else(|| err(format!("netdev '{}' not found", spec.netdev)))?
            .clone();
        if spec.queue_pairs == 0 || spec.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(err(format!(
                "NIC '{}': queue pairs must be 1 to {MAX_QUEUE_PAIRS}, not {}",
                spec.id, spec.queue_pairs
            )));
        }
        if let Some((nic, _)) = self.nics.iter().find(|(_, b)| b.netdev == spec.netdev) {
            return Err(err(format!(
                "netdev '{}' is used by NIC '{nic}'",
                spec.netdev
            )));
        }
        if matches!(port, Netdev::Switch(_)) && spec.queue_pairs != 1 {
            return Err(err(format!(
                "NIC '{}': switch port netdev '{}' has one queue pair, not {}",
                spec.id, spec.netdev, spec.queue_pairs
            )));
        }
        if spec.mtu.is_some_and(|m| m < 68) {
            return Err(err(format!("NIC '{}': MTU below 68", spec.id)));
        }
        let nic = Arc::new(Nic {
            id: spec.id.clone(),
            cfg: Mutex::new(NetConfig {
                mac: spec.mac,
                link_up: spec.link_up,
                queue_pairs: spec.queue_pairs,
                mtu: spec.mtu,
                vnet_hdr: port.vnet_hdr(),
            }),
            link_up: Arc::new(AtomicBool::new(spec.link_up)),
            stats: Arc::new(Counters::default()),
            port,
            events: Some(self.events.clone()),
        });
        let export =
            Export::start(nic).map_err(|e| err(format!("NIC '{}': cannot start: {e}", spec.id)))?;
        self.nics.insert(
            spec.id,
            Bound {
                netdev: spec.netdev,
                export,
            },
        );
        Ok(NetReply::Done)
    }

    /// `RemoveNic`.
    pub fn remove_nic(&mut self, id: &str) -> Result<NetReply, FlatError> {
        self.nic(id)?;
        self.nics.remove(id);
        Ok(NetReply::Done)
    }

    /// `AttachNicConnection`.
    pub fn attach(&mut self, id: &str, fds: Vec<OwnedFd>) -> Result<NetReply, FlatError> {
        let export = self.nic(id)?;
        let fd = fds
            .into_iter()
            .next()
            .ok_or_else(|| err(format!("NIC '{id}': no connected socket passed")))?;
        let stream = connected_stream(fd)
            .map_err(|e| err(format!("NIC '{id}': bad connection socket: {e}")))?;
        export
            .attach(stream)
            .map_err(|e| err(format!("NIC '{id}': cannot attach a connection: {e}")))?;
        Ok(NetReply::Done)
    }

    /// `SetLink`: the queues see it at once, the frontend through a config
    /// change.
    pub fn set_link(&mut self, id: &str, up: bool) -> Result<NetReply, FlatError> {
        let export = self.nic(id)?;
        let old = export.nic().link_up.swap(up, Ordering::Relaxed);
        if old != up {
            if let Ok(mut c) = export.nic().cfg.lock() {
                c.link_up = up;
            }
            export.config_changed();
            let _ = self.events.send(NetEvent::LinkChanged {
                id: id.to_string(),
                up,
            });
        }
        Ok(NetReply::Done)
    }

    /// Netdev `id` as a port of a switch: a TAP with one queue and no NIC
    /// on it, or a switch port netdev (its NIC, if any, is the port).
    /// (The caller checks no other switch has it.)
    pub fn switch_port(&self, id: &str) -> Result<Member, String> {
        let port = match self
            .netdevs
            .get(id)
            .ok_or_else(|| format!("netdev '{id}' not found"))?
        {
            Netdev::Switch(nic) => return Ok(Member::Nic(nic.clone())),
            Netdev::Port(port) => port,
        };
        if let Some((nic, _)) = self.nics.iter().find(|(_, b)| b.netdev == id) {
            return Err(format!("netdev '{id}' is used by NIC '{nic}'"));
        }
        if port.queues() != 1 {
            return Err(format!("netdev '{id}' has several queues"));
        }
        Ok(Member::Fd(port.clone()))
    }

    /// `QueryStats`.
    pub fn stats(&self, id: &str) -> Result<NetReply, FlatError> {
        Ok(NetReply::Stats(self.nic(id)?.nic().stats.snapshot()))
    }
}
