//! The desired network state: netdevs (`-netdev`, `netdev_add`) and the
//! NICs net-proc serves on them, replayed into a restarted net-proc.
//!
//! The broker opens every TAP itself (`/dev/net/tun`, it has the
//! authority; net-proc opens nothing) or takes the fd the user passed,
//! and keeps the fds for as long as the netdev exists: a restarted
//! net-proc gets the same TAPs. A `vhost-user` netdev is an external
//! backend: the NIC's frontend connects to its `-chardev socket` and
//! net-proc has no part in it.
//!
//! - [`options`]: the netdev options with QEMU's messages.
//! - [`tap`]: opening and checking TAPs.
//! - [`worker`]: net-proc's start, restart and replay.

pub mod options;
pub mod tap;
pub mod worker;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use ipc_proto::net::{NetReply, NetRequest, NicSpec};
use ipc_proto::{ErrorClass, FlatError};
use serde_json::{json, Map, Value};

use super::policy::Backoff;
use super::{lock, unexpected_reply, Machine, NetLink};
use options::{NetdevKindOptions, NetdevOptions};

/// What a netdev is.
#[derive(Debug)]
pub enum NetdevKind {
    /// A TAP: its queue fds (kept for replays), with a vnet header or not.
    Tap {
        /// One fd per queue.
        fds: Vec<OwnedFd>,
        /// `IFF_VNET_HDR`.
        vnet_hdr: bool,
        /// The interface name.
        ifname: String,
    },
    /// A switch port for a NIC (`x-switch-port`): no host side; in
    /// net-proc the NIC is a port of the switch listing it (ring to ring).
    SwitchPort,
    /// An external vhost-user backend.
    VhostUser {
        /// The chardev id.
        chardev: String,
        /// Its socket path.
        path: PathBuf,
        /// Queue pairs.
        queues: u16,
    },
}

/// One netdev.
#[derive(Debug)]
pub struct Netdev {
    /// Its id.
    pub id: String,
    /// What it is.
    pub kind: NetdevKind,
}

/// The broker's desired network state.
#[derive(Debug, Default)]
pub struct NetState {
    netdevs: Vec<Netdev>,
    /// NICs net-proc serves (TAP-backed), in creation order.
    nics: Vec<NicSpec>,
    /// net-proc's restart pacing.
    pub(crate) restart: Backoff,
    /// The `-device rocker` switches were created (a net-proc started
    /// before, by the first `-netdev`, must not replay them yet).
    pub(crate) switches_up: bool,
}

impl NetState {
    /// The netdev `id`.
    pub fn netdev(&self, id: &str) -> Option<&Netdev> {
        self.netdevs.iter().find(|n| n.id == id)
    }

    /// The NIC `id` net-proc serves.
    pub fn nic(&self, id: &str) -> Option<&NicSpec> {
        self.nics.iter().find(|n| n.id == id)
    }
}

fn generic(s: impl Into<String>) -> FlatError {
    FlatError::generic(s)
}

fn done(r: NetReply) -> Result<(), FlatError> {
    match r {
        NetReply::Done => Ok(()),
        other @ (NetReply::Alive
        | NetReply::Trace(_)
        | NetReply::Stats(_)
        | NetReply::Rocker(_)) => Err(unexpected_reply(&other)),
        #[cfg(feature = "test-hooks")]
        other @ NetReply::EscapeOutcome(_) => Err(unexpected_reply(&other)),
    }
}

/// `netdev_add` / `-netdev`: `fd_by_name` resolves `fd=` (the session's
/// `getfd` names, or on the command line fd numbers).
pub fn add(
    m: &Machine,
    props: &Map<String, Value>,
    fd_by_name: &dyn Fn(&str) -> Result<OwnedFd, FlatError>,
) -> Result<(), FlatError> {
    let o: NetdevOptions = options::parse(props)?;
    let taken = |st: &NetState| st.netdevs.iter().any(|n| n.id == o.id);
    if taken(&lock(&m.netdevs)) {
        return Err(generic(format!("Duplicate ID '{}'", o.id)));
    }
    let kind = match &o.kind {
        NetdevKindOptions::Tap {
            ifname,
            fd,
            queues,
            vnet_hdr,
        } => {
            let (fds, vnet_hdr, ifname) = match fd {
                Some(name) => {
                    let fd = fd_by_name(name)?;
                    let (vnet, ifname) = tap::check_fd(&fd)?;
                    (vec![fd], vnet, ifname)
                }
                None => {
                    let (fds, name) = tap::open_with(ifname, *queues, *vnet_hdr)?;
                    (fds, *vnet_hdr, name)
                }
            };
            NetdevKind::Tap {
                fds,
                vnet_hdr,
                ifname,
            }
        }
        NetdevKindOptions::SwitchPort => NetdevKind::SwitchPort,
        NetdevKindOptions::VhostUser { chardev, queues } => {
            let path = m
                .config()
                .chardevs
                .iter()
                .find(|c| c.id == *chardev)
                .map(|c| c.path.clone())
                .ok_or_else(|| generic(format!("chardev \"{chardev}\" not found")))?;
            NetdevKind::VhostUser {
                chardev: chardev.clone(),
                path,
                queues: *queues,
            }
        }
    };
    if let Some((req, fds)) = add_request(&o.id, &kind) {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        done(worker::request(m, req, &borrowed)?)?;
    }
    let mut st = lock(&m.netdevs);
    if taken(&st) {
        return Err(generic(format!("Duplicate ID '{}'", o.id)));
    }
    st.netdevs.push(Netdev { id: o.id, kind });
    Ok(())
}

/// `netdev_del`. A netdev a NIC uses is refused (QEMU would unplug it
/// from under the NIC; bulkhead keeps the pair whole).
pub fn del(m: &Machine, id: &str) -> Result<(), FlatError> {
    let is_tap = {
        let st = lock(&m.netdevs);
        let Some(n) = st.netdev(id) else {
            return Err(FlatError::new(
                ErrorClass::DeviceNotFound,
                format!("Device '{id}' not found"),
            ));
        };
        matches!(n.kind, NetdevKind::Tap { .. } | NetdevKind::SwitchPort)
    };
    if let Some(dev) = super::devices::net::device_on_netdev(m, id) {
        return Err(generic(format!(
            "netdev '{id}' is in use by device '{dev}': device_del it first"
        )));
    }
    if let Some(sw) = super::rocker::switch_on_netdev(m, id) {
        return Err(generic(format!("netdev '{id}' is a port of switch '{sw}'")));
    }
    if is_tap {
        if let Some(r) = worker::request_if_running(m, NetRequest::RemoveNetdev { id: id.into() }) {
            done(r?)?;
        }
    }
    lock(&m.netdevs).netdevs.retain(|n| n.id != id);
    Ok(())
}

/// Applies the command line's `-netdev`s, then creates the switches on
/// them (before the `-device`s).
pub fn apply_config(m: &Machine) -> Result<(), FlatError> {
    for props in &m.config().netdevs {
        add(m, props, &cli_fd).map_err(|e| generic(format!("-netdev: {}", e.desc)))?;
    }
    super::rocker::apply_config(m)
}

/// `fd=N` on the command line: an fd the broker inherited, duplicated.
fn cli_fd(name: &str) -> Result<OwnedFd, FlatError> {
    let n: i32 = name
        .parse()
        .map_err(|_| generic(format!("File descriptor named '{name}' has not been found")))?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd number only reads the table;
    // a bad number fails with EBADF.
    let fd = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(generic(format!("Bad file descriptor: fd={n}")));
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Records NIC `spec` and creates it in net-proc.
pub fn add_nic(m: &Machine, spec: NicSpec) -> Result<(), FlatError> {
    done(worker::request(m, NetRequest::AddNic(spec.clone()), &[])?)?;
    lock(&m.netdevs).nics.push(spec);
    Ok(())
}

/// Removes NIC `id` from net-proc and the desired state.
pub fn remove_nic(m: &Machine, id: &str) -> Result<(), FlatError> {
    if let Some(r) = worker::request_if_running(m, NetRequest::RemoveNic { id: id.into() }) {
        done(r?)?;
    }
    lock(&m.netdevs).nics.retain(|n| n.id != id);
    Ok(())
}

/// Sets NIC `nic`'s desired link state and applies it.
pub fn set_nic_link(m: &Machine, nic: &str, up: bool) -> Result<(), FlatError> {
    {
        let mut st = lock(&m.netdevs);
        if let Some(n) = st.nics.iter_mut().find(|n| n.id == nic) {
            n.link_up = up;
        }
    }
    let req = NetRequest::SetLink { id: nic.into(), up };
    done(worker::request(m, req, &[])?)
}

/// The guest wrote a MAC: kept (a restarted net-proc gets it) and
/// announced as QEMU does.
fn mac_changed(m: &Arc<Machine>, id: &str, mac: [u8; 6]) {
    if let Some(n) = lock(&m.netdevs).nics.iter_mut().find(|n| n.id == id) {
        n.mac = mac;
    }
    m.events().emit(
        "NIC_RX_FILTER_CHANGED",
        Some(json!({"name": id, "path": format!("/machine/peripheral/{id}")})),
    );
}

/// The request creating netdev `id` in net-proc and its fds (duplicates),
/// if net-proc has a part in it.
fn add_request(id: &str, kind: &NetdevKind) -> Option<(NetRequest, Vec<OwnedFd>)> {
    let dup = |fds: &[OwnedFd]| fds.iter().filter_map(|f| f.try_clone().ok()).collect();
    match kind {
        NetdevKind::Tap { fds, vnet_hdr, .. } => Some((
            NetRequest::AddTapNetdev {
                id: id.to_owned(),
                vnet_hdr: *vnet_hdr,
            },
            dup(fds),
        )),
        NetdevKind::SwitchPort => Some((
            NetRequest::AddSwitchPortNetdev { id: id.to_owned() },
            Vec::new(),
        )),
        NetdevKind::VhostUser { .. } => None,
    }
}

/// Replays every TAP, NIC and switch into a freshly started net-proc.
fn replay_on(m: &Machine, link: &NetLink) -> Result<(), FlatError> {
    let (taps, nics) = {
        let st = lock(&m.netdevs);
        let taps: Vec<(NetRequest, Vec<OwnedFd>)> = st
            .netdevs
            .iter()
            .filter_map(|n| add_request(&n.id, &n.kind))
            .collect();
        (taps, st.nics.clone())
    };
    for (req, fds) in taps {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        done(link.request(req, &borrowed)?)?;
    }
    for spec in nics {
        done(link.request(NetRequest::AddNic(spec), &[])?)?;
    }
    super::rocker::replay(m, link)
}
