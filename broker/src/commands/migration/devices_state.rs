//! `xen-save-devices-state` and `xen-load-devices-state`, with QEMU 10's
//! arguments, checks and messages: the VM-state file
//! (`docs/vmstate-format.md`: vCPUs, irqchip, PIT, clock, COM1, GED,
//! CPU hotplug, virtio-mmio transports — no RAM, no disks). The broker
//! opens the file (a plain path as QEMU's `qemu_open`, or `/dev/fdset/N`)
//! as the VM's `-run-with user=` identity and passes the fd; vcpu-proc
//! writes or reads it (`vcpu_proc::migration::devices_state`).
//!
//! Restoring a whole VM: RAM in a `memory-backend-file` (`share=on`) or
//! under `-mem-path` outlives the broker; a new broker with the same
//! memory file and `-incoming defer` loads the file, and leaves
//! `inmigrate` as QEMU's incoming side does (running, or `paused` with
//! `-S`/after `stop`, until `cont`). With `live` (the default) the saving
//! VM, stopped before, releases its disk images at the end
//! (`machine/migration/disks.rs`), so the new broker can open them with
//! their locks: the same shared-storage handover as a live migration.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use ipc_proto::migration::MigrationRequest;
use ipc_proto::vcpu::{FdSlot, VcpuRequest};
use nix::fcntl::OFlag;
use serde::Deserialize;

use crate::cli::MachineType;
use crate::machine::fdsets::{parse_fd_number, FdSets};
use crate::machine::images::open::{as_identity, strerror};
use crate::machine::{expect_vcpu_done, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's refusal of a load into a running VM.
const RUNNING: &str = "Cannot update device state while vm is running";

/// Arguments of `xen-save-devices-state`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveArgs {
    /// The file to write (created or truncated, mode 0660 less umask).
    pub filename: String,
    /// Part of a live migration (QEMU's default: true).
    pub live: Option<bool>,
}

impl QapiType for SaveArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "XenSaveDevicesStateArgs",
            members: vec![member::<String>("filename"), optional::<bool>("live")],
        }
    }
}

/// Arguments of `xen-load-devices-state`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadArgs {
    /// The file to read.
    pub filename: String,
}

impl QapiType for LoadArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "XenLoadDevicesStateArgs",
            members: vec![member::<String>("filename")],
        }
    }
}

/// Opens `path` as QEMU's `qemu_open` with `flags` (`O_WRONLY|O_CREAT|
/// O_TRUNC` to save, `O_RDONLY` to load), as the VM's identity; QEMU's
/// messages: "Could not create/open 'PATH': REASON".
fn open(m: &Machine, path: &str, write: bool) -> Result<OwnedFd> {
    let action = if write { "create" } else { "open" };
    if let Some(id) = path.strip_prefix("/dev/fdset/") {
        let id = parse_fd_number(id)
            .ok_or_else(|| QmpError::generic(format!("Could not parse fdset {path}")))?;
        let flags = if write {
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC
        } else {
            OFlag::O_RDONLY
        };
        let fd = FdSets::global()
            .dup(id, flags)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        if write {
            nix::unistd::ftruncate(&fd, 0).map_err(|e| {
                QmpError::generic(format!("Could not {action} '{path}': {}", e.desc()))
            })?;
        }
        return regular_only(path, action, fd);
    }
    let identity = crate::machine::block_state::identity(m)?;
    let opened = as_identity(identity, || {
        let mut o = OpenOptions::new();
        if write {
            o.write(true).create(true).truncate(true).mode(0o660);
        } else {
            o.read(true);
        }
        // Non-blocking: a FIFO must not hold the monitor in open(2).
        o.custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
    })
    .ok_or_else(|| {
        QmpError::generic(format!(
            "Could not {action} '{path}': cannot take the VM's identity"
        ))
    })?;
    let file = opened
        .map_err(|e| QmpError::generic(format!("Could not {action} '{path}': {}", strerror(&e))))?;
    regular_only(path, action, OwnedFd::from(file))
}

/// vcpu-proc reads and writes the file while it holds the VM: a FIFO,
/// socket or device that never answers would hang it (and its liveness
/// ping would then kill the guest), so only regular files are taken.
fn regular_only(path: &str, action: &str, fd: OwnedFd) -> Result<OwnedFd> {
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| QmpError::generic(format!("Could not {action} '{path}': {}", e.desc())))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(QmpError::generic(format!(
            "Could not {action} '{path}': not a regular file (bulkhead keeps device state in \
             regular files only)"
        )));
    }
    Ok(fd)
}

/// `-machine none` has no vCPU worker to hold a device state.
fn refuse_without_guest(m: &Machine) -> Result<()> {
    if m.config().machine == MachineType::None {
        return Err(QmpError::generic(
            "machine type 'none' has no guest to save or migrate",
        ));
    }
    Ok(())
}

/// Sends `req` with `file` as its fd 0 and expects Done.
fn request_with_file(m: &Machine, req: MigrationRequest, file: OwnedFd) -> Result<Empty> {
    let file = File::from(file);
    m.vcpu_request_with_fds(VcpuRequest::Migration(req), &[file.as_fd()])
        .and_then(expect_vcpu_done)?;
    Ok(Empty {})
}

/// What QEMU's `live` (default true) does on a VM that was stopped
/// before the save: once the file is written, the disks are flushed and
/// their image locks released (QEMU's `bdrv_inactivate_all`, libxl's
/// migration), so a target started with the same images can take them
/// when it loads the state and runs. `cont` here takes them back, as after
/// a migration. A VM that was running is resumed after the save and keeps
/// its disks; `live: false` keeps them too.
fn hand_disks_over(m: &Machine) -> Result<()> {
    crate::machine::migration::disks::inactivate(m).map_err(|e| {
        QmpError::generic(format!(
            "xen-save-devices-state: the disk images cannot be released: {}",
            e.desc
        ))
    })
}

/// `xen-save-devices-state`.
pub struct XenSaveDevicesState;

impl Command for XenSaveDevicesState {
    const NAME: &'static str = "xen-save-devices-state";
    const DOC: &'static str = "Write the VM's device state (vCPUs, interrupt controllers, \
        timers, serial, GED, CPU hotplug, virtio-mmio transports; not RAM, not disks) to \
        `filename`. A running VM is stopped for it (STOP, save-vm) and resumed (RESUME). \
        With `live` (default true) a VM stopped before the save hands its disk images over: \
        they are flushed and their locks released for a target to take (cont takes them \
        back).";
    type Args = SaveArgs;
    type Ret = Empty;

    fn run(a: SaveArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        super::super::dump::refuse_while_dumping(ctx)?;
        refuse_without_guest(m)?;
        let was_running = m.query_status()?.running;
        let fd = open(m, &a.filename, true)?;
        crate::machine::migration::attach_devices_before_first_run(m)?;
        request_with_file(m, MigrationRequest::SaveDevicesState { fd: FdSlot(0) }, fd)?;
        if a.live.unwrap_or(true) && !was_running {
            hand_disks_over(m)?;
        }
        Ok(Empty {})
    }
}

/// `xen-load-devices-state`.
pub struct XenLoadDevicesState;

impl Command for XenLoadDevicesState {
    const NAME: &'static str = "xen-load-devices-state";
    const DOC: &'static str = "Load a device state written by xen-save-devices-state from \
        `filename` into the VM (not running; RAM is the memory backend's). The whole file is \
        checked first: a corrupt, truncated or foreign file changes nothing. An inmigrate VM \
        (-incoming defer) then leaves inmigrate as after an incoming migration: it runs, or \
        with -S (or a stop while inmigrate) is paused until cont.";
    type Args = LoadArgs;
    type Ret = Empty;

    fn run(a: LoadArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        super::super::dump::refuse_while_dumping(ctx)?;
        refuse_without_guest(m)?;
        // QEMU checks the run state before it opens the file.
        if m.query_status()?.running {
            return Err(QmpError::generic(RUNNING));
        }
        let fd = open(m, &a.filename, false)?;
        request_with_file(m, MigrationRequest::LoadDevicesState { fd: FdSlot(0) }, fd)
    }
}
