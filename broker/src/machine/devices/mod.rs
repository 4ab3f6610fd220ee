//! The desired guest devices: every `-device` and `device_add`, the
//! vhost-user backend serving it, and its virtio-mmio slot.
//!
//! vcpu-proc opens nothing, so the broker makes every connection:
//! - a `virtio-blk-device` (`drive=NODE`) is a block-proc export of the
//!   node, which has no socket of its own: for each connection the broker
//!   creates a socketpair, hands one end to block-proc
//!   (`AttachExportConnection`) and the other to vcpu-proc. No listener
//!   exists, so no other local process can reach the export;
//! - a `virtio-net-device` (`netdev=ID`) on a TAP netdev is a net-proc
//!   NIC, connected the same way (`AttachNicConnection`); on a
//!   `vhost-user` netdev it is an external backend ([`net`]);
//! - a `vhost-user-blk` (`chardev=ID`, `-chardev socket,id=ID,path=P`) is
//!   an external backend (qemu-storage-daemon, ...): the broker connects to
//!   the path.
//!
//! Devices exist in vcpu-proc before the guest first runs (they must be in
//! the DSDT it reads at boot): the command line's go into the VM at
//! creation, or, with `-S`, like every `device_add` in `prelaunch`, are
//! attached just before the first `cont` (or before a `migrate` or
//! `xen-save-devices-state` of the never-run VM, whose memory and state
//! must carry them). Until then `device_del` simply forgets them. Once the guest has run, the virtio-mmio bus takes no
//! hotplug, as in QEMU.
//!
//! Locking: `m.devices` is never held across a worker request or a
//! connect (vcpu-proc's link reader needs it for its events). `device_add`
//! reserves the id, slot and drive first (a [`DeviceRecord`] that is not
//! `ready`), makes the export, then completes the record or, on failure
//! (a timeout included), removes the export again and the reservation.
//!
//! Crash recovery: when vcpu-proc reports a device's backend gone, or
//! block-proc dies (every device on an export is then reported lost, and
//! after the restart and the replay of nodes and exports
//! [`reconnect_exports`] makes sure each lost one is being reconnected),
//! one reconnect round per device connects it again and sends
//! `ReconnectVhostUser`, retrying without a deadline with a capped backoff
//! until it succeeds or the device or the machine is gone.
//!
//! - [`spec`]: the drivers and their properties (QEMU's messages).
//! - [`recovery`]: loss/restore events and the reconnect rounds.
//! - [`scsi`]: the virtio-scsi controller and its drives (`scsi-cd`,
//!   `scsi-hd`), one vhost-user-scsi export per controller.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipc_proto::block::{BlockRequest, BlockdevOptions};
use ipc_proto::vcpu::{FdSlot, VcpuReply, VcpuRequest, VhostUserDeviceConfig, VhostUserKind};
use ipc_proto::{ErrorClass, FlatError};
use serde_json::{json, Map, Value};

use super::{block_state, expect_done, expect_vcpu_done, lock, Machine};
use crate::cli::ChardevSpec;

pub mod net;
pub mod recovery;
pub mod scsi;
pub mod spec;

pub use recovery::{
    on_block_exit, on_disconnected, on_reconnected, reconnect_exports, reconnect_nics,
};
pub use spec::{parse_spec, DeviceSpec, SLOTS, VHOST_USER_BLK, VIRTIO_BLK};

/// How long the broker lets vcpu-proc attach or reconnect a device before
/// it hangs the socket up (see [`bounded`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a device's vhost-user backend is.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A net-proc NIC (named as the device) on TAP netdev `netdev`
    /// (connections are socketpairs).
    Nic {
        /// The netdev.
        netdev: String,
    },
    /// A block-proc export of `drive` (connections are socketpairs).
    Export {
        /// The node exported.
        drive: String,
        /// The export's id in block-proc.
        export_id: String,
    },
    /// A block-proc vhost-user-scsi export of a controller's drives
    /// (made at its first connection, see [`scsi`]).
    Scsi {
        /// The export's id in block-proc.
        export_id: String,
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
    /// False while `device_add` is still creating the backend (the id,
    /// slot and drive are reserved, nothing else sees the device yet).
    pub ready: bool,
}

/// The broker's desired devices.
#[derive(Debug, Default)]
pub struct DeviceState {
    devices: Vec<DeviceRecord>,
    /// True once the guest has run (devices can no longer come or go).
    launched: bool,
    /// When each device lost its backend (for the downtime).
    lost: HashMap<String, Instant>,
    /// Devices with a reconnect round running.
    reconnecting: HashSet<String>,
    /// The broker's copy of the socket each device's frontend uses (the
    /// same socket as vcpu-proc's, not a new connection): whether it hung
    /// up tells a current loss from a late report about an older
    /// connection.
    conns: HashMap<String, UnixStream>,
}

impl DeviceState {
    /// Keeps `socket` (a copy) as device `id`'s current connection; the
    /// one it replaces is shut down, so its backend side ends for sure.
    fn keep_conn(&mut self, id: &str, socket: &UnixStream) {
        let copy = match socket.try_clone() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("device {id}: cannot keep a copy of its socket: {e}");
                return;
            }
        };
        if let Some(old) = self.conns.insert(id.to_owned(), copy) {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
    }

    /// True unless device `id`'s current connection is known and alive.
    fn conn_lost(&self, id: &str) -> bool {
        self.conns.get(id).is_none_or(hung_up)
    }
}

/// True if `s` has hung up (either side), without waiting.
fn hung_up(s: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds = [PollFd::new(s.as_fd(), rdhup)];
    match poll(&mut fds, PollTimeout::ZERO) {
        // nix has no POLLRDHUP flag: `revents` is None exactly when it
        // (the only bit asked for that nix does not know) is set.
        Ok(_) => fds[0].revents().is_none_or(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => true,
    }
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

pub(crate) fn node_read_only(o: &BlockdevOptions) -> bool {
    match o {
        BlockdevOptions::File(x) => x.read_only,
        BlockdevOptions::Raw(x) => x.read_only,
        BlockdevOptions::Qcow2(x) => x.read_only,
        BlockdevOptions::NullCo(x) => x.read_only,
        BlockdevOptions::Quorum(x) => x.read_only,
    }
    .unwrap_or(false)
}

/// Creates the export of `drive` in block-proc (and records it). On an
/// error (a timeout included) nothing of it stays: an export block-proc
/// may still have made is removed again.
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
    let request = BlockRequest::AddExport {
        id: export_id.clone(),
        node_name: drive.to_owned(),
        num_queues: spec.num_queues,
        writable: !read_only,
        serial: spec.serial.clone(),
        logical_block_size: spec.logical_block_size,
    };
    let reply = m.block_request(request.clone()).and_then(expect_done);
    if let Err(e) = reply {
        undo_export(m, &export_id);
        return Err(e);
    }
    block_state::record_export(m, request);
    super::block_limits::export_added(m, &spec.id, drive);
    Ok(Backend::Export {
        drive: drive.to_owned(),
        export_id,
    })
}

/// After a failed `AddExport`: removes the export in case block-proc made
/// it anyway (a reply that timed out). block-proc answers in order, so
/// this request runs after the `AddExport`.
fn undo_export(m: &Machine, export_id: &str) {
    let del = BlockRequest::DelExport {
        id: export_id.to_owned(),
    };
    match m.block_request(del) {
        Ok(_) => tracing::warn!("export {export_id}: removed after a failed device_add"),
        // Most often "not found": it was never made.
        Err(e) => tracing::debug!("export {export_id}: not removed: {}", e.desc),
    }
}

fn remove_export(m: &Machine, export_id: &str) -> Result<(), FlatError> {
    expect_done(m.block_request(BlockRequest::DelExport {
        id: export_id.to_owned(),
    })?)?;
    block_state::forget_export(m, export_id);
    Ok(())
}

/// A new connection to `backend`, for vcpu-proc: for an export, one end
/// of a fresh socketpair whose other end block-proc now serves; for an
/// external backend, a socket connected to its path. Never call it with
/// `m.devices` held (it waits on block-proc).
fn connect(m: &Machine, nic_id: &str, backend: &Backend) -> Result<UnixStream, FlatError> {
    if let Backend::Scsi { export_id } = backend {
        let controller = export_id.strip_prefix("device.").unwrap_or(export_id);
        scsi::ensure_export(m, controller)?;
    }
    match backend {
        Backend::Export { export_id, .. } | Backend::Scsi { export_id } => {
            let (ours, theirs) = UnixStream::pair()
                .map_err(|e| generic(format!("cannot create a vhost-user socketpair: {e}")))?;
            let req = BlockRequest::AttachExportConnection {
                id: export_id.clone(),
            };
            expect_done(m.block_request_with_fds(req, &[theirs.as_fd()])?)?;
            Ok(ours)
        }
        Backend::Nic { .. } => net::connect(m, nic_id),
        Backend::External { path, .. } => UnixStream::connect(path)
            .map_err(|e| generic(format!("cannot connect to {}: {e}", path.display()))),
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

/// What `device_add` found free for a new device.
enum Plan {
    /// An export of this drive.
    Export(String),
    /// An external backend.
    External(Backend),
    /// A net-proc NIC on this TAP netdev, with this MAC.
    Nic(String, [u8; 6]),
}

/// Checks `spec` against the devices and reserves its id, slot and drive
/// (a record that is not ready yet).
fn reserve(m: &Machine, spec: &DeviceSpec) -> Result<Plan, FlatError> {
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
    let mut spec = spec.clone();
    let (plan, backend) = match (&spec.drive, &spec.chardev) {
        // Its export is made at its first connection.
        _ if spec.driver == scsi::VIRTIO_SCSI => {
            let backend = Backend::Scsi {
                export_id: scsi::export_id(&spec.id),
            };
            (Plan::External(backend.clone()), backend)
        }
        _ if spec.netdev.is_some() => {
            let netdev = spec.netdev.clone().unwrap_or_default();
            let taken = st
                .devices
                .iter()
                .any(|d| d.spec.netdev.as_deref() == Some(&netdev));
            let backend = net::plan(m, &spec, &netdev, taken)?;
            let mac = net::default_mac(&st.devices, &spec);
            spec.mac = Some(mac);
            match backend {
                Backend::Nic { .. } => (Plan::Nic(netdev, mac), backend),
                Backend::External { .. } | Backend::Export { .. } | Backend::Scsi { .. } => {
                    (Plan::External(backend.clone()), backend)
                }
            }
        }
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
            let backend = Backend::Export {
                drive: drive.clone(),
                export_id: format!("device.{}", spec.id),
            };
            (Plan::Export(drive.clone()), backend)
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
            let backend = Backend::External {
                chardev: chardev.clone(),
                path,
            };
            (Plan::External(backend.clone()), backend)
        }
        (None, None) => return Err(generic("drive property not set")),
    };
    st.devices.push(DeviceRecord {
        spec,
        backend,
        slot,
        attached: false,
        ready: false,
    });
    Ok(plan)
}

/// `device_add` / `-device`: validates, creates the backend and records
/// the device; vcpu-proc gets it at VM creation or before the first `cont`.
/// Whether `driver` names one of the device models `device_add` takes
/// (CPUs aside: `commands/cpu_hotplug.rs`).
pub fn is_device_model(driver: &str) -> bool {
    matches!(
        driver,
        spec::VIRTIO_BLK
            | spec::VHOST_USER_BLK
            | spec::VHOST_USER_BLK_ALIAS
            | spec::VIRTIO_NET
            | scsi::VIRTIO_SCSI
            | scsi::SCSI_CD
            | scsi::SCSI_HD
    )
}

pub fn add(m: &Machine, props: &Map<String, Value>) -> Result<(), FlatError> {
    if let Some(r) = scsi::add(m, props) {
        return r;
    }
    let spec = match props.get("driver").and_then(Value::as_str) {
        Some(scsi::VIRTIO_SCSI) => scsi::parse_controller(props)?,
        _ => parse_spec(props)?,
    };
    {
        let media = lock(&m.media);
        if media.lun(&spec.id).is_some() {
            return Err(generic(format!("Duplicate device ID '{}'", spec.id)));
        }
        if let Some(l) = spec.drive.as_deref().and_then(|d| media.user_of(d)) {
            return Err(generic(format!(
                "Drive '{}' is already in use by device '{}'",
                spec.drive.as_deref().unwrap_or_default(),
                l.config.device_id
            )));
        }
    }
    let plan = reserve(m, &spec)?;
    let made = match &plan {
        Plan::Export(drive) => create_export(m, &spec, drive),
        Plan::External(b) => Ok(b.clone()),
        Plan::Nic(netdev, mac) => {
            let mut s = spec.clone();
            s.mac = Some(*mac);
            net::create(m, &s, netdev, *mac).map(|()| Backend::Nic {
                netdev: netdev.clone(),
            })
        }
    };
    let mut st = lock(&m.devices);
    let Some(i) = st.devices.iter().position(|d| d.spec.id == spec.id) else {
        return Err(generic("internal error: a reserved device disappeared"));
    };
    match made {
        Ok(backend) if !st.launched => {
            let disk = matches!(backend, Backend::Export { .. });
            st.devices[i].backend = backend;
            st.devices[i].ready = true;
            drop(st);
            if disk {
                lock(&m.media).note_block_device(&spec.id);
            }
            Ok(())
        }
        // The guest started while the export was made: too late for it.
        Ok(backend) => {
            let rec = st.devices.remove(i);
            drop(st);
            let removed = match &backend {
                Backend::Export { export_id, .. } => remove_export(m, export_id),
                Backend::Nic { .. } => crate::machine::netdevs::remove_nic(m, &spec.id),
                Backend::Scsi { .. } | Backend::External { .. } => Ok(()),
            };
            if let Err(e) = removed {
                tracing::warn!(
                    "the backend of {} stays after a refused device_add: {}",
                    spec.id,
                    e.desc
                );
            }
            Err(hotplug_error(rec.slot))
        }
        Err(e) => {
            st.devices.remove(i);
            Err(e)
        }
    }
}

/// `device_del`: only before the guest first ran.
pub fn del(m: &Machine, id: &str) -> Result<(), FlatError> {
    if let Some(r) = scsi::del_lun(m, id) {
        return r;
    }
    let export_id = {
        let mut st = lock(&m.devices);
        let Some(i) = st.devices.iter().position(|d| d.spec.id == id && d.ready) else {
            return Err(FlatError {
                class: ErrorClass::DeviceNotFound,
                desc: format!("Device '{id}' not found"),
            });
        };
        if st.launched || st.devices[i].attached {
            return Err(hotplug_error(st.devices[i].slot));
        }
        crate::machine::migration::refuse_hotplug_while_migrating(
            m,
            crate::machine::migration::NO_DEVICE_DEL,
        )?;
        // Not ready again while its export goes: no `cont` attaches it.
        st.devices[i].ready = false;
        st.devices[i].backend.clone()
    };
    let removed = match &export_id {
        Backend::Export { export_id, .. } => remove_export(m, export_id),
        Backend::Nic { .. } => crate::machine::netdevs::remove_nic(m, id),
        // Made at the first connection: there is none before.
        Backend::Scsi { .. } | Backend::External { .. } => Ok(()),
    };
    if removed.is_ok() {
        scsi::forget_controller_luns(m, id);
    }
    {
        let mut st = lock(&m.devices);
        let i = st.devices.iter().position(|d| d.spec.id == id);
        match (&removed, i) {
            (Ok(()), Some(i)) => {
                st.devices.remove(i);
                if let Some(c) = st.conns.remove(id) {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
            (Err(_), Some(i)) => st.devices[i].ready = true,
            (_, None) => {}
        }
    }
    removed?;
    // Not under `m.devices`: the media lock comes first where both are held.
    lock(&m.media).forget_block_device(id);
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
    let pending: Vec<DeviceRecord> = lock(&m.devices)
        .devices
        .iter()
        .filter(|d| d.ready && !d.attached)
        .cloned()
        .collect();
    let mut out = Vec::new();
    for d in pending {
        let socket = connect(m, &d.spec.id, &d.backend).map_err(|e| {
            generic(format!(
                "cannot connect device '{}' to its vhost-user backend: {}",
                d.spec.id, e.desc
            ))
        })?;
        lock(&m.devices).keep_conn(&d.spec.id, &socket);
        let slot = u8::try_from(first_slot + out.len())
            .map_err(|_| generic("too many file descriptors for one request"))?;
        let (kind, num_queues) = match &d.spec.netdev {
            // rx and tx of each queue pair.
            Some(n) => (VhostUserKind::Net, net::queue_pairs(m, n) * 2),
            None => scsi::frontend(&d.spec),
        };
        out.push((
            VhostUserDeviceConfig {
                id: d.spec.id.clone(),
                slot: d.slot,
                kind,
                socket: FdSlot(slot),
                num_queues,
                queue_size: d.spec.queue_size,
                mac: d.spec.mac,
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
        if reply.is_err() {
            // Not left half-open: its export would wait on it.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        expect_vcpu_done(reply?)?;
        mark_attached(m, &[id]);
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

/// Makes every device on node `from` a device on node `to` (a mirror's
/// pivot).
pub fn repoint_drive(m: &Machine, from: &str, to: &str) {
    for d in lock(&m.devices).devices.iter_mut() {
        if let Backend::Export { drive, .. } = &mut d.backend {
            if drive == from {
                *drive = to.to_owned();
            }
        }
    }
}

/// The block devices for `query-block`: (device id, node name).
pub fn block_devices(m: &Machine) -> Vec<(String, String)> {
    lock(&m.devices)
        .devices
        .iter()
        .filter(|d| d.ready)
        .filter_map(|d| match &d.backend {
            Backend::Export { drive, .. } => Some((d.spec.id.clone(), drive.clone())),
            Backend::Scsi { .. } | Backend::External { .. } | Backend::Nic { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_kept_connection_is_lost_once_either_side_hangs_up() {
        let mut st = DeviceState::default();
        assert!(st.conn_lost("vda"), "unknown connections count as lost");
        // The backend side closes.
        let (ours, backend) = UnixStream::pair().unwrap();
        st.keep_conn("vda", &ours);
        assert!(!st.conn_lost("vda"));
        drop(backend);
        assert!(st.conn_lost("vda"));
        // The frontend (same socket as the kept copy) shuts it down.
        let (ours, _backend) = UnixStream::pair().unwrap();
        st.keep_conn("vda", &ours);
        assert!(!st.conn_lost("vda"));
        ours.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(st.conn_lost("vda"));
    }

    #[test]
    fn a_replaced_connection_is_shut_down_for_its_backend() {
        let mut st = DeviceState::default();
        let (old, mut old_backend) = UnixStream::pair().unwrap();
        st.keep_conn("vda", &old);
        drop(old);
        let (new, _new_backend) = UnixStream::pair().unwrap();
        st.keep_conn("vda", &new);
        let mut buf = [0u8; 1];
        assert_eq!(old_backend.read(&mut buf).unwrap(), 0, "no EOF");
        assert!(!st.conn_lost("vda"));
    }
}
