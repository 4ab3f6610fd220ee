//! `-machine none`: no guest and no vcpu-proc, only the monitor — what
//! libvirt starts to probe an emulator. The run state still follows
//! QEMU's (`prelaunch` with `-S`, `stop`/`cont`, reset and power-button
//! events), with no vCPUs.

use std::sync::Mutex;

use ipc_proto::vcpu::{RunState, ShutdownCause, StatusInfo, VcpuEvent, VcpuReply, VcpuRequest};
use ipc_proto::FlatError;

/// The run state of a machine without a guest.
#[derive(Debug)]
pub struct NoVm {
    state: Mutex<RunState>,
}

impl NoVm {
    /// `prelaunch` with `-S`, else `running`.
    pub fn new(start_paused: bool) -> Self {
        NoVm {
            state: Mutex::new(if start_paused {
                RunState::Prelaunch
            } else {
                RunState::Running
            }),
        }
    }

    /// Answers what vcpu-proc would; `emit` gets the events.
    pub fn request(
        &self,
        req: VcpuRequest,
        emit: impl Fn(VcpuEvent),
    ) -> Result<VcpuReply, FlatError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match req {
            VcpuRequest::QueryStatus => Ok(VcpuReply::Status(StatusInfo {
                running: *state == RunState::Running,
                singlestep: false,
                source_state: false,
                status: *state,
            })),
            VcpuRequest::Stop => {
                if *state == RunState::Running {
                    *state = RunState::Paused;
                    emit(VcpuEvent::Stopped);
                }
                Ok(VcpuReply::Done)
            }
            VcpuRequest::Cont => {
                if *state != RunState::Running {
                    *state = RunState::Running;
                    emit(VcpuEvent::Resumed);
                }
                Ok(VcpuReply::Done)
            }
            VcpuRequest::SystemReset => {
                emit(VcpuEvent::Reset {
                    reason: ShutdownCause::HostQmpSystemReset,
                });
                Ok(VcpuReply::Done)
            }
            VcpuRequest::SystemPowerdown => {
                emit(VcpuEvent::Powerdown);
                Ok(VcpuReply::Done)
            }
            VcpuRequest::QueryCpus => Ok(VcpuReply::Cpus(Vec::new())),
            VcpuRequest::Ping => Ok(VcpuReply::Done),
            VcpuRequest::QueryDump => Ok(VcpuReply::DumpProgress { completed: 0 }),
            VcpuRequest::Migration(_) => Err(FlatError::generic(
                "machine type 'none' has no guest to save or migrate",
            )),
            VcpuRequest::DumpGuestMemory(_) => {
                Err(FlatError::generic("dump: no guest memory to dump"))
            }
            VcpuRequest::CreateVm(_)
            | VcpuRequest::CreateVmWithDevices { .. }
            | VcpuRequest::AttachVhostUser(_)
            | VcpuRequest::ReconnectVhostUser { .. }
            | VcpuRequest::SendRarp { .. } => Err(FlatError::generic(
                "machine type 'none' has no guest to attach devices to",
            )),
            VcpuRequest::Trace(_) => {
                Err(FlatError::generic("machine type 'none' has no vCPU worker"))
            }
            VcpuRequest::PlugCpu { .. } | VcpuRequest::UnplugCpu { .. } => Err(FlatError::generic(
                "machine does not support hot-plugging CPUs",
            )),
            #[cfg(feature = "test-hooks")]
            VcpuRequest::TestEscape(_) => {
                Err(FlatError::generic("machine type 'none' has no vCPU worker"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_state_follows_qemu_without_a_guest() {
        let vm = NoVm::new(true);
        let events = Mutex::new(Vec::new());
        let emit = |e| events.lock().unwrap().push(e);
        let status = |vm: &NoVm| match vm.request(VcpuRequest::QueryStatus, |_| {}).unwrap() {
            VcpuReply::Status(s) => s.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(&vm), RunState::Prelaunch);
        vm.request(VcpuRequest::Cont, emit).unwrap();
        assert_eq!(status(&vm), RunState::Running);
        vm.request(VcpuRequest::Stop, emit).unwrap();
        assert_eq!(status(&vm), RunState::Paused);
        assert_eq!(
            vm.request(VcpuRequest::QueryCpus, emit).unwrap(),
            VcpuReply::Cpus(vec![])
        );
        assert_eq!(
            *events.lock().unwrap(),
            vec![VcpuEvent::Resumed, VcpuEvent::Stopped]
        );
        assert!(vm.request(VcpuRequest::Cont, emit).is_ok());
    }
}
