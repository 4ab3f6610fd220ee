//! Migration's desired state in the broker: the parameters and
//! capabilities `migrate-set-parameters` / `migrate-set-capabilities` /
//! `migrate-set-cache-size` set (`settings.rs`), and vcpu-proc's
//! migration events turned into QMP events and phase changes.
//!
//! - [`uri`]: `unix:`, `tcp:`, `fd:` with QEMU's parsing and messages.
//! - [`transport`]: the broker connects or listens and accepts (it holds
//!   the authority) and hands the connected fd to vcpu-proc.
//! - [`outgoing`]: the source: status, the connection thread, the
//!   switchover (disks flushed and released), cancel, failure.
//! - [`incoming`]: the target: `-incoming URI` / `migrate-incoming`, one
//!   accepted connection, disks activated and the VM resumed at the end.
//! - [`disks`]: QEMU's inactive block devices: the image locks released
//!   at the switchover and taken back (source on failure, target at the end).
//! - [`info`]: `query-migrate`'s `MigrationInfo`.
//! - [`gate`]: hotplug and the start of an outgoing migration exclude
//!   each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ipc_proto::migration::{MigrationEvent, MigrationStatus};
use serde_json::json;

use super::{lock, Machine};

pub mod disks;
pub mod gate;
pub mod incoming;
pub mod info;
pub mod outgoing;
pub mod settings;
pub mod transport;
pub mod uri;

/// The broker's migration state (one per machine).
#[derive(Debug, Default)]
pub struct MigrationState {
    /// Parameters and capabilities.
    pub settings: std::sync::Mutex<settings::MigrationSettings>,
    /// The outgoing migration (source side).
    pub(crate) out: Mutex<outgoing::Outgoing>,
    /// The incoming migration (target side).
    pub(crate) inc: Mutex<incoming::Incoming>,
    /// The disks are inactive (QEMU's `BDRV_O_INACTIVE`): their image
    /// locks are not held, so the other side of a migration can take
    /// them. True on a target from start-up until its incoming migration
    /// completes (or `cont` after a device-state load), on a source from
    /// the switchover on. The locks live on the broker's fds, so a
    /// restarted block-proc keeps this state without a replay.
    pub(crate) disks_inactive: AtomicBool,
    /// `device_add`/`device_del` against `migrate` ([`gate`]).
    pub device_set: gate::DeviceSetGate,
}

impl MigrationState {
    /// The state of a machine started with (`incoming`) or without
    /// `-incoming`, and with (`autostart`) or without `-S`.
    pub fn new(incoming: bool, autostart: bool) -> Self {
        MigrationState {
            settings: Default::default(),
            out: Default::default(),
            inc: Mutex::new(incoming::Incoming::new(autostart)),
            disks_inactive: AtomicBool::new(incoming),
            device_set: Default::default(),
        }
    }

    /// Whether the disks are inactive (opened without image locks).
    pub fn disks_inactive(&self) -> bool {
        self.disks_inactive.load(Ordering::SeqCst)
    }

    /// Whether the `events` capability is on.
    fn events_on(&self) -> bool {
        lock(&self.settings).events
    }
}

/// QEMU's refusal of `device_add` while migrating out
/// (`qdev_device_add_from_qdict`: after the driver is known, before its
/// properties and id are looked at).
pub const NO_DEVICE_ADD: &str = "device_add not allowed while migrating";
/// QEMU's refusal of `device_del` while migrating out (`qdev_unplug`:
/// after the device is found and its bus takes hot-unplug).
pub const NO_DEVICE_DEL: &str = "device_del not allowed while migrating";

/// Whether an outgoing migration runs (QEMU's `migration_is_running`:
/// setup, active, device, cancelling): the VM's devices must stay as the
/// target will have them, so hotplug is refused then. An incoming
/// migration does not count, as in QEMU.
pub fn migrating_out(m: &Machine) -> bool {
    outgoing::is_running(lock(&m.migration.out).status)
}

/// `Err(why)` while an outgoing migration runs (`why` is one of
/// [`NO_DEVICE_ADD`], [`NO_DEVICE_DEL`]). The caller holds the
/// [`gate::DeviceSetGate`]'s hotplug side, so no migration starts between
/// this check and the end of its hotplug.
pub fn refuse_hotplug_while_migrating(m: &Machine, why: &str) -> Result<(), ipc_proto::FlatError> {
    if migrating_out(m) {
        return Err(ipc_proto::FlatError::generic(why));
    }
    Ok(())
}

/// Before a `-S` VM that never ran is saved or migrated: its devices,
/// which join vcpu-proc at the first `cont`, join now, so that the guest
/// memory (the DSDT and the kernel command line name them) and the device
/// state carry them, as a QEMU VM has its devices from creation. They
/// stay attached (like QEMU's, they can no longer be removed); devices
/// added later in `prelaunch` still join at the first `cont`.
pub fn attach_devices_before_first_run(m: &Machine) -> Result<(), ipc_proto::FlatError> {
    super::devices::attach_pending(m)
}

/// Emits `MIGRATION` for `status` if the `events` capability is on.
pub(crate) fn emit_status(m: &Machine, status: MigrationStatus) {
    if m.migration.events_on() {
        m.events()
            .emit("MIGRATION", Some(json!({"status": status.as_str()})));
    }
}

/// vcpu-proc reported `ev`.
pub fn on_event(m: &Machine, ev: MigrationEvent) {
    // An incoming migration runs only in a VM waiting for one, which never
    // migrates out at the same time.
    if lock(&m.migration.inc).is_running() {
        incoming::on_event(m, ev);
    } else {
        outgoing::on_event(m, ev);
    }
}

/// The guest runs (vcpu-proc's `RESUME`): a running guest has active
/// disks (QEMU's invariant), whatever started it — autostart after an
/// incoming migration or a device-state load, a source resuming after a
/// failed or cancelled migration, `cont` in `postmigrate`. Only fcntl
/// locks: safe on the link's reader thread.
pub fn on_resumed(m: &Machine) {
    incoming::mark_done(m);
    if let Err(e) = disks::activate(m) {
        tracing::error!("the guest runs without its image locks: {}", e.desc);
    }
}

/// vcpu-proc died: a migration in progress failed with it.
pub fn on_vcpu_died(m: &Machine) {
    outgoing::fail_running(m, "the vCPU worker died");
    incoming::fail_running(m, "the vCPU worker died");
}

/// `query-migrate`: the source's migration if one ever started here, else
/// the target's, else `{}`.
pub fn query(m: &Machine) -> info::MigrationInfo {
    let (status, vcpu_has_it) = {
        let o = lock(&m.migration.out);
        (o.status, o.vcpu_has_it)
    };
    if status == MigrationStatus::None {
        let inc = lock(&m.migration.inc);
        if inc.status == MigrationStatus::None {
            return info::MigrationInfo::default();
        }
        return info::destination(&inc);
    }
    let stats = if vcpu_has_it {
        let req =
            ipc_proto::vcpu::VcpuRequest::Migration(ipc_proto::migration::MigrationRequest::Query);
        match m.vcpu_request(req) {
            Ok(ipc_proto::vcpu::VcpuReply::Migration(s)) => Some(*s),
            Ok(other) => {
                tracing::warn!("query-migrate: {}", super::unexpected_reply(&other).desc);
                None
            }
            Err(e) => {
                tracing::debug!("query-migrate: {}", e.desc);
                None
            }
        }
    } else {
        None
    };
    info::source(&lock(&m.migration.out), stats.as_ref())
}
