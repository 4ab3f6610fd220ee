//! `xen-save-devices-state` / `xen-load-devices-state`: the VM-state file
//! (`docs/vmstate-format.md`) written to or read from the broker's fd.

use std::sync::{Arc, Mutex};

use ipc_proto::vcpu::{FdSlot, VcpuReply};
use ipc_proto::FlatError;

use crate::control::Controller;

type Shared = Arc<Mutex<Controller>>;

/// Writes the paused VM's state to the file in `fd`.
pub fn save(
    _controller: &Shared,
    _fds: Vec<std::os::fd::OwnedFd>,
    _fd: FdSlot,
) -> Result<VcpuReply, FlatError> {
    Err(FlatError::generic(
        "saving the device state is not available in this vcpu-proc",
    ))
}

/// Loads the state in the file in `fd` into the incoming VM.
pub fn load(
    _controller: &Shared,
    _fds: Vec<std::os::fd::OwnedFd>,
    _fd: FdSlot,
) -> Result<VcpuReply, FlatError> {
    Err(FlatError::generic(
        "loading the device state is not available in this vcpu-proc",
    ))
}
