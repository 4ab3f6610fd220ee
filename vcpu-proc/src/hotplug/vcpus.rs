//! Adding and removing vCPUs while the guest runs. A plugged CPU is a new
//! vCPU thread (KVM_CREATE_VCPU works after the VM started) parked in
//! wait-for-SIPI, announced by the insert event; an unplug request sets
//! the remove event, and when the guest ejects the CPU (register write)
//! the vCPU thread ends and leaves its vCPU fd parked for a later plug of
//! the same slot, since KVM cannot create a vCPU id twice (QEMU parks it
//! the same way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;

use kvm_ioctls::VcpuFd;

use super::registers::GuestCpuMsg;
use crate::devices::ged::EVENT_CPU_HOTPLUG;
use crate::vcpu::InitialState;
use crate::vm::{Vm, VmError};

/// Errors of plugging and unplugging CPUs.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The slot is beyond `maxcpus`.
    #[error("CPU slot {0} does not exist")]
    NoSlot(u32),
    /// The slot already holds a CPU.
    #[error("CPU slot {0} is taken")]
    Taken(u32),
    /// The slot holds no CPU.
    #[error("CPU slot {0} is empty")]
    Empty(u32),
    /// The boot CPU stays.
    #[error("Boot CPU is unpluggable")]
    BootCpu,
    /// The vCPU could not be created or started.
    #[error("cannot start the vCPU")]
    Vcpu(#[source] VmError),
}

/// How a vCPU thread is asked to end for an unplug, and where it leaves
/// its vCPU.
#[derive(Default)]
pub struct Unplug {
    requested: AtomicBool,
    parked: Mutex<Option<(VcpuFd, InitialState)>>,
}

impl std::fmt::Debug for Unplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unplug")
            .field("requested", &self.is_requested())
            .finish_non_exhaustive()
    }
}

impl Unplug {
    /// Whether the thread should end.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Called by the ending thread: keeps its vCPU for a later plug.
    pub fn park(&self, vcpu: VcpuFd, initial: InitialState) {
        *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some((vcpu, initial));
    }

    fn take(&self) -> Option<(VcpuFd, InitialState)> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn notify_guest(vm: &Vm) {
    let r = vm
        .ged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .notify(EVENT_CPU_HOTPLUG);
    if let Err(e) = r {
        ipc_proto::warn_limited!("cannot raise the GED interrupt: {e}");
    }
}

/// Plugs a CPU into `slot`: a new vCPU in wait-for-SIPI, then the insert
/// event and the GED interrupt. Before the guest first ran (`prelaunch`)
/// the firmware tables are written again, so they list it enabled, as
/// QEMU's (built when the firmware reads them) do.
pub fn plug(vm: &mut Vm, slot: u32, prelaunch: bool) -> Result<(), HotplugError> {
    if slot >= vm.topology.max_cpus {
        return Err(HotplugError::NoSlot(slot));
    }
    if vm.cpu_regs().is_present(slot) {
        return Err(HotplugError::Taken(slot));
    }
    vm.spawn_vcpu(slot).map_err(HotplugError::Vcpu)?;
    vm.wait_vcpu_tids().map_err(HotplugError::Vcpu)?;
    vm.cpu_regs().plug(slot, true);
    if prelaunch {
        // The CPU is plugged either way: a failed rewrite only leaves it
        // announced by the insert event alone.
        if let Err(e) = vm.write_cpu_tables() {
            tracing::warn!(
                "firmware tables not rewritten for CPU slot {slot}: {}",
                ipc_proto::envelope::error_chain(&e)
            );
        }
    }
    notify_guest(vm);
    Ok(())
}

/// Asks the guest to eject the CPU of `slot` (remove event + GED).
pub fn request_unplug(vm: &mut Vm, slot: u32) -> Result<(), HotplugError> {
    if slot >= vm.topology.max_cpus {
        return Err(HotplugError::NoSlot(slot));
    }
    if slot == 0 {
        return Err(HotplugError::BootCpu);
    }
    if !vm.cpu_regs().is_present(slot) {
        return Err(HotplugError::Empty(slot));
    }
    vm.cpu_regs().request_remove(slot);
    notify_guest(vm);
    Ok(())
}

/// Ends the vCPU thread of `slot` after the guest ejected it and parks its
/// vCPU fd; false if no thread served the slot.
pub fn finish_eject(vm: &mut Vm, slot: u32) -> bool {
    use std::os::unix::thread::JoinHandleExt;
    let Some(i) = vm.vcpus.iter().position(|v| v.slot == slot) else {
        return false;
    };
    let handle = vm.vcpus.remove(i);
    handle.unplug.request();
    vm.sync.wake_all();
    crate::vcpu::kick(handle.thread.as_pthread_t());
    if handle.thread.join().is_err() {
        tracing::warn!("vCPU thread of slot {slot} panicked while ending");
    }
    // Its DeadGuard counted it; the pause accounting must not.
    vm.sync.forget_dead();
    if let Some(parked) = handle.unplug.take() {
        vm.parked_vcpus.insert(slot, parked);
    }
    true
}

/// Serves what the register block reports (ejects, OST statuses), one at
/// a time, with `serve` (which ends an ejected vCPU and tells the broker),
/// off the vCPU thread that wrote the register.
pub fn spawn_eject_thread(
    reports: Receiver<GuestCpuMsg>,
    mut serve: impl FnMut(GuestCpuMsg) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cpu-eject".into())
        .spawn(move || {
            for msg in reports {
                serve(msg);
            }
        })
        .map(|_| ())
}
