//! The desired guest devices: every `-device` and `device_add`, the
//! vhost-user backend serving it, and its virtio-mmio slot.
//!
//! vcpu-proc opens nothing, so the broker makes every connection:
//! - a `virtio-blk-device` (`drive=NODE`) is a block-proc export of the
//!   node on a listening socket the broker creates (an abstract Unix socket
//!   with a random name) and keeps ([`block_state::record_export`]), so a
//!   restarted block-proc gets the same listener; the broker connects to it
//!   and passes the connected fd to vcpu-proc;
//! - a `vhost-user-blk` (`chardev=ID`, `-chardev socket,id=ID,path=P`) is
//!   an external backend (qemu-storage-daemon, ...): the broker connects to
//!   the path.
//!
//! Devices exist in vcpu-proc before the guest first runs (they must be in
//! the DSDT it reads at boot): the command line's go into the VM at
//! creation, or, with `-S`, like every `device_add` in `prelaunch`, are
//! attached just before the first `cont`. Until then `device_del` simply
//! forgets them. Once the guest has run, the virtio-mmio bus takes no
//! hotplug, as in QEMU.
//!
//! Crash recovery: when block-proc dies every device on an export is
//! reported lost; after the restart and the replay of nodes and exports
//! (`policy::restart_block`), [`reconnect_exports`] connects each device
//! again and sends `ReconnectVhostUser`, retrying without a deadline with
//! a capped backoff until it succeeds or a newer restart takes over. An
//! external backend that hangs up is reconnected the same way.
//!
//! - [`spec`]: the drivers and their properties (QEMU's messages).
//! - [`recovery`]: loss/restore events and the reconnect rounds.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipc_proto::block::{BlockReply, BlockRequest, BlockdevOptions};
use ipc_proto::vcpu::{FdSlot, VcpuReply, VcpuRequest, VhostUserDeviceConfig, VhostUserKind};
use ipc_proto::{ErrorClass, FlatError};
use serde_json::{json, Map, Value};

use super::{block_state, lock, unexpected_reply, Machine};
use crate::cli::ChardevSpec;

pub mod recovery;
pub mod spec;

pub use recovery::{on_block_exit, on_disconnected, on_reconnected, reconnect_exports};
pub use spec::{parse_spec, DeviceSpec, SLOTS, VHOST_USER_BLK, VIRTIO_BLK};

/// How long the broker lets vcpu-proc attach or reconnect a device before
/// it hangs the socket up (see [`bounded`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a device's vhost-user backend is.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A block-proc export of `drive` on a listener the broker keeps.
    Export {
        /// The node exported.
        drive: String,
        /// The export's id in block-proc.
        export_id: String,
        /// The listener's address.
        addr: SocketAddr,
    },
    /// An external backend listening at `path` (`-chardev socket`).
    External {
        /// The chardev id.
        chardev: String,
        /// The socket path.
        path: PathBuf,
    },
}

/// One device of the desired state.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// The device as given.
    pub spec: DeviceSpec,
    /// Its backend.
    pub backend: Backend,
    /// Its virtio-mmio slot.
    pub slot: u32,
    /// True once vcpu-proc has it.
    pub attached: bool,
}

/// The broker's desired devices.
#[derive(Debug, Default)]
pub struct DeviceState {
    devices: Vec<DeviceRecord>,
    /// True once the guest has run (devices can no longer come or go).
    launched: bool,
    /// When each device lost its backend (for the downtime).
    lost: HashMap<String, Instant>,
    /// Bumped on every block-proc restart; a reconnect loop of an older
    /// restart gives up.
    generation: u64,
}

impl DeviceState {
    /// The devices, in creation order.
    pub fn devices(&self) -> &[DeviceRecord] {
        &self.devices
    }
}

fn generic(desc: impl Into<String>) -> FlatError {
    FlatError::generic(desc)
}

fn node_read_only(o: &BlockdevOptions) -> bool {
    match o {
        BlockdevOptions::File(x) => x.read_only,
        BlockdevOptions::Raw(x) => x.read_only,
        BlockdevOptions::Qcow2(x) => x.read_only,
        BlockdevOptions::NullCo(x) => x.read_only,
    }
    .unwrap_or(false)
}

/// A random abstract socket address for an export's listener.
fn export_addr(id: &str) -> Result<SocketAddr, FlatError> {
    use std::hash::BuildHasher;
    let salt = std::collections::hash_map::RandomState::new().hash_one((id, Instant::now()));
    let name = format!("bulkhead-{}-{id}-{salt:016x}", std::process::id());
    SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| generic(format!("cannot name the vhost-user socket of '{id}': {e}")))
}

/// Creates the export of `drive` in block-proc (and records it).
fn create_export(m: &Machine, spec: &DeviceSpec, drive: &str) -> Result<Backend, FlatError> {
    let read_only = {
        let shared = block_state::state(m);
        let st = lock(&shared);
        match st.find(drive) {
            Some(o) => node_read_only(o),
            None => {
                return Err(generic(format!(
                    "Property '{}.drive' can't find value '{drive}'",
                    spec.driver
                )))
            }
        }
    };
    let export_id = format!("device.{}", spec.id);
    let addr = export_addr(&spec.id)?;
    let listener = UnixListener::bind_addr(&addr)
        .map_err(|e| generic(format!("cannot create the vhost-user socket: {e}")))?;
    let request = BlockRequest::AddExport {
        id: export_id.clone(),
        node_name: drive.to_owned(),
        num_queues: spec.num_queues,
        writable: !read_only,
        serial: spec.serial.clone(),
        logical_block_size: spec.logical_block_size,
    };
    match m.block_request_with_fds(request.clone(), &[listener.as_fd()])? {
        BlockReply::Done => {}
        other @ (BlockReply::NeedFiles { .. } | BlockReply::Nodes(_) | BlockReply::Stats(_)) => {
            return Err(unexpected_reply(&other))
        }
    }
    block_state::record_export(m, request, listener.into());
    Ok(Backend::Export {
        drive: drive.to_owned(),
        export_id,
        addr,
    })
}

fn remove_export(m: &Machine, export_id: &str) -> Result<(), FlatError> {
    match m.block_request(BlockRequest::DelExport {
        id: export_id.to_owned(),
    })? {
        BlockReply::Done => {}
        other @ (BlockReply::NeedFiles { .. } | BlockReply::Nodes(_) | BlockReply::Stats(_)) => {
            return Err(unexpected_reply(&other))
        }
    }
    block_state::forget_export(m, export_id);
    Ok(())
}

/// Connects a new socket to `backend`.
fn connect(backend: &Backend) -> std::io::Result<UnixStream> {
    match backend {
        Backend::Export { addr, .. } => UnixStream::connect_addr(addr),
        Backend::External { path, .. } => UnixStream::connect(path),
    }
}

/// Runs `f`, a request that makes vcpu-proc set a device up over
/// `sockets`, and hangs those sockets up if it takes longer than
/// [`HANDSHAKE_TIMEOUT`]: the frontend then sees end-of-file and answers
/// with an error instead of waiting forever on a backend that never
/// replies (which would wedge vcpu-proc's control thread, and QMP).
pub fn bounded<T>(sockets: &[&UnixStream], f: impl FnOnce() -> T) -> T {
    let copies: Vec<UnixStream> = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::Builder::new()
        .name("vu-setup-watch".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                wait.recv_timeout(HANDSHAKE_TIMEOUT)
            {
                tracing::warn!(
                    "a vhost-user backend did not answer within {HANDSHAKE_TIMEOUT:?}; hanging up"
                );
                for c in copies {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
        });
    if let Err(e) = &watchdog {
        tracing::warn!("cannot watch a vhost-user set-up: {e}");
    }
    let r = f();
    drop(done);
    if let Ok(w) = watchdog {
        let _ = w.join();
    }
    r
}

fn hotplug_error(slot: u32) -> FlatError {
    generic(format!(
        "Bus 'virtio-mmio-bus.{slot}' does not support hotplugging"
    ))
}

/// `device_add` / `-device`: validates, creates the backend and records
/// the device; vcpu-proc gets it at VM creation or before the first `cont`.
pub fn add(m: &Machine, props: &Map<String, Value>) -> Result<(), FlatError> {
    let spec = parse_spec(props)?;
    let mut st = lock(&m.devices);
    if st.devices.iter().any(|d| d.spec.id == spec.id) {
        return Err(generic(format!("Duplicate device ID '{}'", spec.id)));
    }
    let used: Vec<u32> = st.devices.iter().map(|d| d.slot).collect();
    let slot = match spec.slot {
        Some(s) if used.contains(&s) => {
            return Err(generic(format!(
                "Bus 'virtio-mmio-bus.{s}' does not have a free slot"
            )))
        }
        Some(s) => s,
        None => (0..SLOTS).find(|s| !used.contains(s)).ok_or_else(|| {
            generic(format!(
                "No 'virtio-bus' bus found for device '{}'",
                spec.driver
            ))
        })?,
    };
    if st.launched {
        return Err(hotplug_error(slot));
    }
    let backend = match (&spec.drive, &spec.chardev) {
        (Some(drive), _) => {
            if let Some(d) = st
                .devices
                .iter()
                .find(|d| matches!(&d.backend, Backend::Export { drive: x, .. } if x == drive))
            {
                return Err(generic(format!(
                    "Drive '{drive}' is already in use by device '{}'",
                    d.spec.id
                )));
            }
            create_export(m, &spec, drive)?
        }
        (None, Some(chardev)) => {
            let path = m
                .config()
                .chardevs
                .iter()
                .find(|c| c.id == *chardev)
                .map(|c: &ChardevSpec| c.path.clone())
                .ok_or_else(|| {
                    generic(format!(
                        "Property '{}.chardev' can't find value '{chardev}'",
                        spec.driver
                    ))
                })?;
            Backend::External {
                chardev: chardev.clone(),
                path,
            }
        }
        (None, None) => return Err(generic("drive property not set")),
    };
    st.devices.push(DeviceRecord {
        spec,
        backend,
        slot,
        attached: false,
    });
    Ok(())
}

/// `device_del`: only before the guest first ran.
pub fn del(m: &Machine, id: &str) -> Result<(), FlatError> {
    let mut st = lock(&m.devices);
    let Some(i) = st.devices.iter().position(|d| d.spec.id == id) else {
        return Err(FlatError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{id}' not found"),
        });
    };
    if st.launched || st.devices[i].attached {
        return Err(hotplug_error(st.devices[i].slot));
    }
    if let Backend::Export { export_id, .. } = &st.devices[i].backend {
        remove_export(m, export_id)?;
    }
    st.devices.remove(i);
    drop(st);
    // virtio-blk-device is the VirtIODevice itself (no PCI proxy with a
    // virtio-backend child), so QEMU emits one event.
    m.events().emit(
        "DEVICE_DELETED",
        Some(json!({"device": id, "path": format!("/machine/peripheral/{id}")})),
    );
    Ok(())
}

/// Applies the command line's `-device` options (after the `-blockdev`s).
pub fn apply_config(m: &Machine) -> Result<(), FlatError> {
    for props in &m.config().devices {
        add(m, props).map_err(|e| generic(format!("-device: {}", e.desc)))?;
    }
    Ok(())
}

/// The devices not yet in vcpu-proc, each with a fresh connection to its
/// backend, as vcpu-proc's device configurations (socket slots numbered
/// from `first_slot`).
pub fn connect_pending(
    m: &Machine,
    first_slot: usize,
) -> Result<Vec<(VhostUserDeviceConfig, UnixStream)>, FlatError> {
    let st = lock(&m.devices);
    let mut out = Vec::new();
    for d in st.devices.iter().filter(|d| !d.attached) {
        let socket = connect(&d.backend).map_err(|e| {
            generic(format!(
                "cannot connect device '{}' to its vhost-user backend: {e}",
                d.spec.id
            ))
        })?;
        let slot = u8::try_from(first_slot + out.len())
            .map_err(|_| generic("too many file descriptors for one request"))?;
        out.push((
            VhostUserDeviceConfig {
                id: d.spec.id.clone(),
                slot: d.slot,
                kind: VhostUserKind::Block,
                socket: FdSlot(slot),
                num_queues: d.spec.num_queues,
                queue_size: d.spec.queue_size,
            },
            socket,
        ));
    }
    Ok(out)
}

/// Marks the devices `ids` as attached in vcpu-proc.
pub fn mark_attached(m: &Machine, ids: &[String]) {
    let mut st = lock(&m.devices);
    for d in st.devices.iter_mut().filter(|d| ids.contains(&d.spec.id)) {
        d.attached = true;
    }
}

/// Records that the guest has run: devices can no longer come or go.
pub fn mark_launched(m: &Machine) {
    lock(&m.devices).launched = true;
}

/// Before the first `cont`: attaches every pending device to vcpu-proc.
pub fn attach_pending(m: &Machine) -> Result<(), FlatError> {
    if lock(&m.devices).launched {
        return Ok(());
    }
    for (cfg, socket) in connect_pending(m, 0)? {
        let id = cfg.id.clone();
        let mut one = cfg;
        one.socket = FdSlot(0);
        let reply = bounded(&[&socket], || {
            m.vcpu_request_with_fds(VcpuRequest::AttachVhostUser(one), &[socket.as_fd()])
        });
        match reply? {
            VcpuReply::Done => mark_attached(m, &[id]),
            other @ (VcpuReply::Status(_) | VcpuReply::Cpus(_)) => {
                return Err(unexpected_reply(&other))
            }
        }
    }
    Ok(())
}

impl Machine {
    /// Sends `req` with `fds` attached to vcpu-proc and waits for its reply.
    pub fn vcpu_request_with_fds(
        &self,
        req: VcpuRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<VcpuReply, FlatError> {
        let link = lock(&self.vcpu).as_ref().map(|w| w.link.clone());
        match link {
            Some(l) => l.request(req, fds),
            None => Err(generic(
                "the guest has crashed: its vCPU worker is not running",
            )),
        }
    }
}

/// The block devices for `query-block`: (device id, node name).
pub fn block_devices(m: &Machine) -> Vec<(String, String)> {
    lock(&m.devices)
        .devices
        .iter()
        .filter_map(|d| match &d.backend {
            Backend::Export { drive, .. } => Some((d.spec.id.clone(), drive.clone())),
            Backend::External { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_addresses_are_abstract_and_distinct() {
        let a = export_addr("vda").unwrap();
        let b = export_addr("vda").unwrap();
        assert!(a.as_abstract_name().is_some());
        assert_ne!(a.as_abstract_name(), b.as_abstract_name());
    }
}
