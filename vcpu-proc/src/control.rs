//! The controller: applies run-state transitions to the machine — pauses
//! and resumes the vCPUs, resets the machine, presses the power button —
//! and emits the resulting events. Requests from the broker and from vCPU
//! threads both come through here, one at a time.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use ipc_proto::envelope::error_chain;
use ipc_proto::vcpu::{CpuInfo, RunState, StatusInfo, VcpuEvent, VhostUserDeviceConfig};

use crate::devices::ged::EVENT_POWER_BUTTON;
use crate::runstate::{Input, RunStateError, RunStateMachine};
use crate::virtio::{VirtioEvent, VirtioMmioDevice};
use crate::vm::Vm;
use ipc_proto::warn_limited;

/// How long vCPUs get to leave the guest when paused.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

// A vCPU waiting for a device reset (bounded by the vhost-user request
// deadline) must still park within the pause limit.
const _: () =
    assert!(crate::virtio::session::REQUEST_DEADLINE.as_millis() < PAUSE_TIMEOUT.as_millis());

/// Why `xen-load-devices-state` was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The vCPUs run (QEMU's message).
    #[error("Cannot update device state while vm is running")]
    Running,
    /// The file does not decode or does not fit this VM; the VM is as it was.
    #[error("{0}")]
    State(String),
}

/// Where events go.
pub trait EventSink: Send + Sync {
    /// Emits one event.
    fn emit(&self, event: VcpuEvent);
}

/// The machine and its run state.
pub struct Controller {
    vm: Vm,
    rsm: RunStateMachine,
    sink: Box<dyn EventSink>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("vm", &self.vm)
            .field("rsm", &self.rsm)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Takes over a freshly built (parked) VM and starts it unless the run
    /// state says otherwise.
    pub fn start(vm: Vm, rsm: RunStateMachine, sink: Box<dyn EventSink>) -> Self {
        let c = Controller { vm, rsm, sink };
        if c.rsm.is_running() {
            c.vm.sync.resume();
        }
        c
    }

    /// `query-status`.
    pub fn status(&self) -> StatusInfo {
        StatusInfo {
            running: self.rsm.is_running(),
            singlestep: false,
            status: self.rsm.state(),
            source_state: self.rsm.source_state(),
        }
    }

    /// `query-cpus-fast`: the plugged CPUs by slot.
    pub fn cpus(&self) -> Vec<CpuInfo> {
        let mut cpus: Vec<CpuInfo> = self
            .vm
            .vcpus
            .iter()
            .map(|v| {
                let ids = self.vm.topology.ids(v.slot);
                CpuInfo {
                    cpu_index: v.slot,
                    thread_id: v.tid.load(Ordering::SeqCst),
                    socket_id: ids.socket,
                    core_id: ids.core,
                    thread_in_core: ids.thread,
                }
            })
            .collect();
        cpus.sort_by_key(|c| c.cpu_index);
        cpus
    }

    /// `device_add` of a CPU: plugs slot `slot`.
    pub fn plug_cpu(&mut self, slot: u32) -> Result<(), String> {
        let prelaunch = self.rsm.state() == RunState::Prelaunch;
        crate::hotplug::vcpus::plug(&mut self.vm, slot, prelaunch).map_err(|e| error_chain(&e))
    }

    /// `device_del` of a CPU: asks the guest to eject slot `slot`.
    pub fn unplug_cpu(&mut self, slot: u32) -> Result<(), String> {
        crate::hotplug::vcpus::request_unplug(&mut self.vm, slot).map_err(|e| error_chain(&e))
    }

    /// What the guest did through the CPU hotplug registers: an eject ends
    /// the slot's vCPU; the broker is told of it and of OST statuses.
    pub fn guest_cpu_report(&mut self, msg: crate::hotplug::registers::GuestCpuMsg) {
        use crate::hotplug::registers::GuestCpuMsg;
        match msg {
            GuestCpuMsg::Eject(slot) => {
                if crate::hotplug::vcpus::finish_eject(&mut self.vm, slot) {
                    self.sink.emit(VcpuEvent::CpuEjected { slot });
                }
            }
            GuestCpuMsg::Ost {
                slot,
                source,
                status,
            } => self.sink.emit(VcpuEvent::CpuOst {
                slot,
                source,
                status,
            }),
        }
    }

    /// The guest's CPU hotplug reports, for the server's thread (once).
    pub fn take_cpu_ejects(
        &mut self,
    ) -> Option<std::sync::mpsc::Receiver<crate::hotplug::registers::GuestCpuMsg>> {
        self.vm.take_cpu_ejects()
    }

    /// The machine (for extensions: buses, memory, virtio devices).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Pauses every vCPU; false if some did not stop in time.
    fn pause_all(&self) -> bool {
        self.vm.sync.request_pause();
        self.vm.kick_all();
        self.vm.sync.wait_parked(self.vm.vcpus.len(), PAUSE_TIMEOUT)
    }

    /// Attaches a vhost-user device; only while the guest has never run
    /// (`prelaunch`), since the DSDT that lists it is read at boot.
    pub fn attach_vhost_user(
        &mut self,
        d: &VhostUserDeviceConfig,
        socket: UnixStream,
        events: Sender<VirtioEvent>,
    ) -> Result<(), String> {
        // A target left in `prelaunch` by its source holds the migrated
        // guest in RAM: an attach would load a new one over it.
        if self.rsm.state() != RunState::Prelaunch || self.rsm.source_state() {
            return Err(format!(
                "Bus 'virtio-mmio-bus.{}' does not support hotplugging",
                d.slot
            ));
        }
        self.vm
            .attach_vhost_user(d, socket, events)
            .map_err(|e| error_chain(&e))
    }

    /// Device `id`, for a reconnection that runs without the controller
    /// (its handshake and replay wait for the backend).
    pub fn vhost_user_device(&self, id: &str) -> Result<Arc<VirtioMmioDevice>, String> {
        self.vm.devices.shared(id).map_err(|e| error_chain(&e))
    }

    fn reset_machine(&mut self) -> Result<(), String> {
        self.vm.devices.reset_all();
        self.vm.reset_irqchips().map_err(|e| error_chain(&e))?;
        self.vm
            .ged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
        if self.rsm.state() == RunState::Inmigrate {
            // The RAM is the incoming guest's: nothing is loaded into it.
            return Ok(());
        }
        let entry = self.vm.load_guest().map_err(|e| error_chain(&e))?;
        self.vm.sync.new_epoch(entry);
        Ok(())
    }

    /// `xen-save-devices-state`: a running VM is stopped into `save-vm`
    /// for the capture and resumed after it, as QEMU; `write` gets the
    /// VM-state file. Its error is returned after the VM runs again.
    pub fn save_state(
        &mut self,
        write: impl FnOnce(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let before = self.rsm.state();
        self.handle(Input::SaveBegin).map_err(|e| e.to_string())?;
        // QEMU's `global_state_store_running`: the file says `running`.
        self.vm.global_state.set_to_save(RunState::Running);
        let result =
            if self.rsm.state() == RunState::InternalError && before != RunState::InternalError {
                Err("vCPUs did not stop within 5 s".to_string())
            } else {
                crate::state::save(&self.vm)
                    .map_err(|e| error_chain(&e))
                    .and_then(|bytes| write(&bytes))
            };
        if let Err(e) = self.handle(Input::SaveEnd) {
            warn_limited!("cannot resume after saving the device state: {e}");
        }
        result
    }

    /// `xen-load-devices-state`: refused while the VM runs (QEMU's
    /// message); the whole file is checked before the first KVM write, so
    /// a refused file leaves the VM as it was. A VM in `inmigrate` then
    /// leaves it ([`Input::IncomingDone`]).
    pub fn load_state(&mut self, file: &[u8]) -> Result<(), LoadError> {
        if self.rsm.is_running() {
            return Err(LoadError::Running);
        }
        // Every vCPU parked (a VM that is not running has them parked;
        // this waits for a thread still on its way).
        if !self.pause_all() {
            return Err(LoadError::State("vCPUs did not stop within 5 s".into()));
        }
        crate::state::load(&self.vm, file).map_err(|e| LoadError::State(error_chain(&e)))?;
        // QEMU's `xen-load-devices-state` does not apply the saved run
        // state (only an incoming migration does).
        self.vm.global_state.take_loaded();
        self.handle(Input::IncomingDone)
            .map_err(|e| LoadError::State(e.to_string()))
    }

    /// Applies `input`; refused inputs change nothing.
    pub fn handle(&mut self, input: Input) -> Result<(), RunStateError> {
        if input == Input::IncomingDone {
            self.rsm
                .set_source_state(self.vm.global_state.take_loaded());
        }
        let out = self.rsm.step(input)?;
        self.vm.global_state.set_to_save(self.rsm.global_state());
        if (!out.run || out.reset) && !self.pause_all() {
            self.crash("vCPUs did not stop within 5 s".into(), out.events);
            return Ok(());
        }
        if out.reset {
            if let Err(detail) = self.reset_machine() {
                self.crash(format!("machine reset failed: {detail}"), out.events);
                return Ok(());
            }
        }
        if out.powerdown {
            let r = self
                .vm
                .ged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .notify(EVENT_POWER_BUTTON);
            if let Err(e) = r {
                warn_limited!("cannot raise the GED interrupt: {e}");
            }
        }
        for e in out.events {
            self.sink.emit(e);
        }
        if out.run {
            // Rings a save stopped start again before the guest runs.
            if let Err(e) = self.vm.devices.resume_all() {
                warn_limited!("{}", error_chain(&e));
            }
            self.vm.sync.resume();
        }
        Ok(())
    }

    fn crash(&mut self, detail: String, before: Vec<VcpuEvent>) {
        for e in before {
            self.sink.emit(e);
        }
        if let Ok(out) = self.rsm.step(Input::Crash(detail)) {
            for e in out.events {
                self.sink.emit(e);
            }
        }
    }
}
