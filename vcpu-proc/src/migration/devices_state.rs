//! `xen-save-devices-state` / `xen-load-devices-state`: the VM-state file
//! (`docs/vmstate-format.md`) written to or read from the fd the broker
//! opened. Nothing of a save or load stays in this process after the
//! reply: a vcpu-proc killed afterwards is a guest crash as ever, and the
//! broker still has the file.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use ipc_proto::vcpu::{FdSlot, VcpuReply};
use ipc_proto::FlatError;

use crate::control::{Controller, LoadError};
use crate::vm::FdTable;

type Shared = Arc<Mutex<Controller>>;

/// The largest VM-state file read: far above any real one (a few KiB per
/// vCPU and device), so a wrong file (a disk image, say) is refused
/// without reading it whole.
pub const MAX_STATE_FILE: u64 = 64 << 20;

/// QEMU's message for a failed save.
const SAVE_FAILED: &str = "saving Xen device state failed";

/// QEMU's message for a failed load; bulkhead adds the reason after it
/// (as QEMU does since 10.1).
const LOAD_FAILED: &str = "loading Xen device state failed";

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Controller> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn take_file(fds: Vec<std::os::fd::OwnedFd>, fd: FdSlot) -> Result<File, FlatError> {
    FdTable::new(fds)
        .take(fd)
        .map(File::from)
        .map_err(|e| FlatError::generic(e.to_string()))
}

/// Writes the VM's state to the file in `fd` (a running VM is stopped
/// for it and resumed, as QEMU does).
pub fn save(
    controller: &Shared,
    fds: Vec<std::os::fd::OwnedFd>,
    fd: FdSlot,
) -> Result<VcpuReply, FlatError> {
    let mut file = take_file(fds, fd)?;
    lock(controller)
        .save_state(|bytes| {
            file.write_all(bytes)
                .and_then(|()| file.flush())
                .map_err(|e| format!("cannot write the file: {e}"))
        })
        .map_err(|e| {
            tracing::warn!("{SAVE_FAILED}: {e}");
            FlatError::generic(format!("{SAVE_FAILED}: {e}"))
        })?;
    Ok(VcpuReply::Done)
}

/// Reads the whole file (at most [`MAX_STATE_FILE`] bytes).
fn read_state(mut file: File) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_STATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(format!(
            "the file is larger than {MAX_STATE_FILE} bytes: not a VM-state file"
        ));
    }
    Ok(bytes)
}

/// Loads the state in the file in `fd` into the VM (not running); a
/// file refused leaves the VM as it was.
pub fn load(
    controller: &Shared,
    fds: Vec<std::os::fd::OwnedFd>,
    fd: FdSlot,
) -> Result<VcpuReply, FlatError> {
    let file = take_file(fds, fd)?;
    let mut c = lock(controller);
    // QEMU checks the run state before it reads anything.
    if c.status().running {
        return Err(FlatError::generic(LoadError::Running.to_string()));
    }
    let bytes = read_state(file).map_err(|e| FlatError::generic(format!("{LOAD_FAILED}: {e}")))?;
    c.load_state(&bytes).map_err(|e| match e {
        LoadError::Running => FlatError::generic(e.to_string()),
        LoadError::State(why) => {
            tracing::warn!("{LOAD_FAILED}: {why}");
            FlatError::generic(format!("{LOAD_FAILED}: {why}"))
        }
    })?;
    Ok(VcpuReply::Done)
}
