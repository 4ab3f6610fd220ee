//! The VM's state outside RAM, captured into and restored from the
//! VM-state file of `ipc_proto::vmstate` (`docs/vmstate-format.md`).
//!
//! - [`cpu`]: one vCPU (registers, XSAVE, XCRs, MSRs, LAPIC, events, MP
//!   state, debug registers).
//! - [`platform`]: the in-kernel PIC/IOAPIC, PIT and kvm-clock.
//! - [`serial`]: COM1's registers and receive FIFO.
//! - [`acpi`]: the GED's latched events and the CPU hotplug registers.
//! - [`run`]: the run state at the save (QEMU's migration global state).
//! - [`virtio`]: each virtio-mmio transport's registers and, for a live
//!   device, its vring state (`crate::virtio::suspend`): a capture
//!   suspends every live device's rings at its backend first and leaves
//!   them suspended (the controller resumes them when the vCPUs run again,
//!   or call `VirtioDevices::resume_all`); a restore starts them on the
//!   backend at the saved positions.
//!
//! Both run on a paused VM (every vCPU parked): KVM serialises vCPU
//! ioctls on the vCPU's own mutex, so the controller reads and writes a
//! parked vCPU through its second handle ([`crate::vm::VcpuHandle::view`]),
//! as `dump-guest-memory` does; only `KVM_RUN` is tied to the vCPU thread.
//!
//! A restore decodes and checks the whole file before it touches KVM, so a
//! corrupt or foreign file leaves the VM as it was.

pub mod acpi;
pub mod cpu;
pub mod platform;
pub mod run;
pub mod serial;
pub mod virtio;

use ipc_proto::vmstate::{self, OwnedSection, SectionId, VmStateError};
use kvm_bindings::Msrs;

use crate::vm::Vm;
use cpu::VcpuState;
use platform::PlatformState;
use virtio::DeviceState;
use vm_superio::serial::SerialState;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the VM state cannot be captured or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM read or wrote fewer MSRs than asked.
    #[error("KVM {what} handled {done} of {wanted} MSRs (first refused: {first_refused:#x})")]
    Msrs {
        /// Which ioctl.
        what: &'static str,
        /// How many it handled.
        done: usize,
        /// How many were given.
        wanted: usize,
        /// The MSR it stopped at.
        first_refused: u32,
    },
    /// An MSR list could not be built (more than KVM's maximum).
    #[error("cannot build an MSR list of {0} entries")]
    MsrList(usize),
    /// The file is not a state this build can apply.
    #[error(transparent)]
    Format(#[from] VmStateError),
    /// The file does not describe this VM.
    #[error("the VM state does not match this VM: {0}")]
    Mismatch(String),
    /// A live virtio device's rings could not be stopped for a save or
    /// started again at a restore.
    #[error("the vrings of a live virtio device")]
    Virtio(#[source] crate::virtio::suspend::SuspendError),
    /// A vCPU that has not run yet could not be put in its boot state.
    #[error("cannot set up a vCPU that has not run yet")]
    Boot(#[source] crate::vm::VmError),
}

/// Result of state capture and restore.
pub type Result<T> = std::result::Result<T, StateError>;

pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

/// Builds a KVM MSR list.
pub(crate) fn msr_list(entries: &[kvm_bindings::kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|_| StateError::MsrList(entries.len()))
}

/// Everything of a VM this module saves, decoded.
#[derive(Clone)]
pub struct VmState {
    /// One per plugged vCPU, in slot order.
    pub vcpus: Vec<VcpuState>,
    /// irqchip, PIT, clock.
    pub platform: PlatformState,
    /// The virtio-mmio transports.
    pub devices: Vec<DeviceState>,
    /// COM1.
    pub serial: SerialState,
    /// The GED's latched events.
    pub ged: u8,
    /// The CPU hotplug registers.
    pub cpu_hotplug: acpi::CpuHotplugState,
    /// The run state at the save ([`run`]); `None` in a file written
    /// before the `run-state` section existed.
    pub run_state: Option<ipc_proto::vcpu::RunState>,
}

impl VmState {
    /// Reads the state of `vm`; every vCPU must be parked. The live virtio
    /// devices are suspended first (their rings drained and stopped at
    /// their backends; an interrupt that raises is then in the irqchip
    /// state read below) and stay suspended. A vCPU that has not run
    /// since the VM's creation or reset gets its boot state first
    /// (`Vm::settle_boot`), so the capture starts the guest where its
    /// first run would.
    pub fn capture(vm: &Vm) -> Result<Self> {
        vm.settle_boot().map_err(StateError::Boot)?;
        vm.devices.suspend_all().map_err(StateError::Virtio)?;
        let msrs = cpu::saved_msr_indices(vm.kvm())?;
        let vcpus = vm
            .vcpus
            .iter()
            .map(|v| VcpuState::capture(v.slot, &v.view, &msrs))
            .collect::<Result<Vec<_>>>()?;
        Ok(VmState {
            vcpus,
            platform: PlatformState::capture(&vm.fd)?,
            devices: DeviceState::capture(&vm.devices)?,
            serial: lock(&vm.serial).state(),
            ged: lock(&vm.ged).pending(),
            cpu_hotplug: {
                let regs = vm.cpu_regs();
                let (selector, command) = regs.selector_and_command();
                acpi::CpuHotplugState {
                    selector,
                    command,
                    slots: regs.slots().to_vec(),
                }
            },
            // Written only when needed (QEMU's vmstate `needed`): a live
            // state tells a target nothing its absence does not, and a file
            // without the section loads in builds that predate it.
            run_state: Some(vm.global_state.to_save()).filter(|s| !run::is_live(*s)),
        })
    }

    /// Writes this state into `vm` (paused, same vCPU slots plugged): the
    /// platform devices, then each vCPU, then kvm-clock.
    pub fn restore(&self, vm: &Vm) -> Result<()> {
        let mut slots: Vec<u32> = vm.vcpus.iter().map(|v| v.slot).collect();
        let mut saved: Vec<u32> = self.vcpus.iter().map(|v| v.slot).collect();
        slots.sort_unstable();
        saved.sort_unstable();
        if slots != saved {
            return Err(StateError::Mismatch(format!(
                "the state has vCPUs {saved:?}, the VM has {slots:?}"
            )));
        }
        DeviceState::check(&self.devices, &vm.devices)?;
        let plugged: Vec<u32> = (0..self.cpu_hotplug.slots.len() as u32)
            .filter(|&i| self.cpu_hotplug.slots[i as usize].present)
            .collect();
        if plugged != saved {
            return Err(StateError::Mismatch(format!(
                "the CPU hotplug registers have CPUs {plugged:?} plugged, the state vCPUs {saved:?}"
            )));
        }
        // The hotplug block is checked (APIC ids) before any KVM write and
        // written after the last one that can fail: `restore` either
        // changes everything or nothing.
        let mut regs = vm.cpu_regs();
        let (selector, command) = regs.selector_and_command();
        let before = regs.slots().to_vec();
        regs.restore(
            self.cpu_hotplug.selector,
            self.cpu_hotplug.command,
            &self.cpu_hotplug.slots,
        )
        .map_err(StateError::Mismatch)?;
        drop(regs);
        let undo = || {
            if let Err(e) = vm.cpu_regs().restore(selector, command, &before) {
                tracing::warn!("cannot put the CPU hotplug registers back: {e}");
            }
        };
        if let Err(e) = self.restore_kvm(vm) {
            undo();
            return Err(e);
        }
        lock(&vm.ged).set_pending(self.ged);
        vm.global_state.set_loaded(self.run_state);
        // A fresh VM's threads would otherwise boot their vCPUs on resume.
        vm.sync.mark_restored(&slots);
        Ok(())
    }

    /// The KVM and emulated-device part of [`VmState::restore`].
    fn restore_kvm(&self, vm: &Vm) -> Result<()> {
        self.platform.restore_devices(&vm.fd)?;
        for v in &vm.vcpus {
            if let Some(s) = self.vcpus.iter().find(|s| s.slot == v.slot) {
                s.restore(&v.view)?;
            }
        }
        DeviceState::restore(&self.devices, &vm.devices)?;
        lock(&vm.serial)
            .restore(&self.serial)
            .map_err(|e| StateError::Mismatch(e.to_string()))?;
        self.platform.restore_clock(&vm.fd)
    }

    /// The state as a VM-state file.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut sections = self
            .vcpus
            .iter()
            .map(|v| {
                Ok(OwnedSection {
                    id: SectionId::Vcpu,
                    payload: v.encode()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sections.extend(self.platform.encode()?);
        for d in &self.devices {
            sections.push(d.encode()?);
        }
        sections.push(serial::encode(&self.serial)?);
        sections.push(acpi::encode_ged(self.ged));
        sections.push(acpi::encode_cpu_hotplug(&self.cpu_hotplug));
        if let Some(state) = self.run_state {
            sections.push(run::encode(state)?);
        }
        Ok(vmstate::encode(&sections)?)
    }

    /// Reads a VM-state file; every section must be present once (a vCPU
    /// section once per slot), except `run-state`, which is at most once.
    pub fn decode(file: &[u8]) -> Result<Self> {
        let mut vcpus: Vec<VcpuState> = Vec::new();
        let mut platform = platform::Builder::default();
        let mut devices: Vec<DeviceState> = Vec::new();
        let mut uart: Option<SerialState> = None;
        let mut ged: Option<u8> = None;
        let mut cpu_hotplug: Option<acpi::CpuHotplugState> = None;
        let mut run_state = None;
        for s in vmstate::decode(file)? {
            match s.id {
                SectionId::Vcpu => {
                    let v = VcpuState::decode(&s)?;
                    if vcpus.iter().any(|o| o.slot == v.slot) {
                        return Err(s.malformed(format!("vCPU {} appears twice", v.slot)).into());
                    }
                    vcpus.push(v);
                }
                SectionId::Irqchip | SectionId::Pit | SectionId::Clock => platform.add(&s)?,
                SectionId::VirtioMmio => {
                    let d = DeviceState::decode(&s)?;
                    if devices.iter().any(|o| o.id == d.id || o.slot == d.slot) {
                        return Err(s
                            .malformed(format!("device {} (slot {}) appears twice", d.id, d.slot))
                            .into());
                    }
                    devices.push(d);
                }
                SectionId::Serial => {
                    if uart.replace(serial::decode(&s)?).is_some() {
                        return Err(s.malformed("the section appears twice").into());
                    }
                }
                SectionId::Ged => {
                    if ged.replace(acpi::decode_ged(&s)?).is_some() {
                        return Err(s.malformed("the section appears twice").into());
                    }
                }
                SectionId::CpuHotplug => {
                    if cpu_hotplug.replace(acpi::decode_cpu_hotplug(&s)?).is_some() {
                        return Err(s.malformed("the section appears twice").into());
                    }
                }
                SectionId::RunState => {
                    if run_state.replace(run::decode(&s)?).is_some() {
                        return Err(s.malformed("the section appears twice").into());
                    }
                }
            }
        }
        if vcpus.is_empty() {
            return Err(StateError::Mismatch("the state has no vCPU".into()));
        }
        Ok(VmState {
            vcpus,
            platform: platform.finish()?,
            devices,
            serial: uart
                .ok_or_else(|| StateError::Mismatch("the state has no serial section".into()))?,
            ged: ged.ok_or_else(|| StateError::Mismatch("the state has no ged section".into()))?,
            cpu_hotplug: cpu_hotplug.ok_or_else(|| {
                StateError::Mismatch("the state has no cpu-hotplug section".into())
            })?,
            run_state,
        })
    }
}

/// Captures `vm` (paused) as a VM-state file. Its live virtio devices are
/// left suspended: resume them (`vm.devices.resume_all()`) when the VM
/// continues here; the controller does so before the vCPUs run.
pub fn save(vm: &Vm) -> Result<Vec<u8>> {
    VmState::capture(vm)?.encode()
}

/// Checks `file` whole, then restores it into `vm` (paused).
pub fn load(vm: &Vm, file: &[u8]) -> Result<()> {
    VmState::decode(file)?.restore(vm)
}

#[cfg(test)]
pub(crate) mod tests;
