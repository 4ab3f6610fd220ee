//! Building the machine from a [`VmConfig`]: KVM VM, guest memory, in-kernel
//! irqchip and PIT with QEMU's GSI routing, the buses and platform devices,
//! the vhost-user virtio-mmio devices (on sockets the broker connected),
//! the firmware tables, the kernel and the (parked) vCPU threads. A device
//! attached later ([`Vm::attach_vhost_user`], before the guest first runs)
//! rewrites the ACPI tables so the DSDT lists it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::vcpu::{FdSlot, SerialConfig, VhostUserDeviceConfig, VhostUserKind, VmConfig};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_pit_config, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};

use crate::acpi::{self, VirtioMmioDevice};
use crate::bus::{Bus, BusError};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::debug_exit::DebugExit;
use crate::devices::ged::Ged;
use crate::devices::i8042::I8042;
use crate::devices::irq::{IrqError, IrqLine};
use crate::devices::serial::{self, SerialDevice, SerialIrq, SerialOut};
use crate::hotplug::{CpuHotplugRegs, PossibleCpus, Unplug};
use crate::layout;
use crate::loader::{self, BootSource, KernelImage};
use crate::memory::{self, GuestMemoryMmap};
use crate::regs::EntryPoint;
use crate::vcpu::{self, ActionSender, InitialState, VcpuSync, VcpuThread};
use crate::virtio::{
    VhostUserBlkParams, VirtioDevices, VirtioError, VirtioEvent, VirtioMmioDevice as MmioDevice,
};
use crate::{cpuid, mptable, paging, regs};
use ipc_proto::cpu_topology::CpuTopology;

const IOAPIC_PINS: u32 = 24;
const TID_WAIT: Duration = Duration::from_secs(10);

/// Errors of building the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A slot names no fd of the frame, or one already used.
    #[error("fd slot {0} is missing or used twice")]
    FdSlot(u8),
    /// The configuration is invalid.
    #[error("invalid VM configuration: {0}")]
    Config(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] memory::MemoryError),
    /// The kernel could not be loaded.
    #[error("kernel loading")]
    Loader(#[from] loader::LoaderError),
    /// The ACPI tables could not be written.
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// Boot structures could not be written.
    #[error("cannot write boot structures to guest memory")]
    BootMemory(#[source] vm_memory::GuestMemoryError),
    /// A device could not be registered.
    #[error("device registration")]
    Bus(#[from] BusError),
    /// An interrupt line could not be created.
    #[error("interrupt line")]
    Irq(#[from] IrqError),
    /// vCPU register setup failed.
    #[error("vCPU setup")]
    Regs(#[from] regs::RegsError),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// A vCPU thread did not start in time.
    #[error("vCPU threads did not start")]
    ThreadStart,
    /// A vhost-user device could not be attached.
    #[error("cannot attach device '{id}'")]
    Device {
        /// Device id.
        id: String,
        /// The cause.
        #[source]
        source: VirtioError,
    },
}

/// Result of VM building.
pub type Result<T> = std::result::Result<T, VmError>;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The fds of a `CreateVm` frame, each taken at most once.
#[derive(Debug)]
pub struct FdTable(Vec<Option<OwnedFd>>);

impl FdTable {
    /// Wraps the frame's fds.
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        FdTable(fds.into_iter().map(Some).collect())
    }

    /// Takes the fd of `slot`.
    pub fn take(&mut self, slot: FdSlot) -> Result<OwnedFd> {
        self.0
            .get_mut(usize::from(slot.0))
            .and_then(Option::take)
            .ok_or(VmError::FdSlot(slot.0))
    }
}

/// A vCPU thread as the controller sees it.
#[derive(Debug)]
pub struct VcpuHandle {
    /// The thread (never joined: vCPU threads live as long as the process).
    pub thread: JoinHandle<()>,
    /// Its host tid.
    pub tid: Arc<AtomicI64>,
    /// A second handle on the vCPU (a dup of its fd) to read its registers
    /// while it is parked (`dump-guest-memory`).
    pub view: kvm_ioctls::VcpuFd,
    /// Its possible-CPU slot (`cpu-index`).
    pub slot: u32,
    /// Ends it for a CPU hot-unplug.
    pub unplug: Arc<Unplug>,
    /// What its vCPU boots from (its thread has the same).
    pub initial: crate::vcpu::InitialState,
}

/// What every vCPU, also a hot-plugged one, is built from.
struct VcpuSetup {
    supported: kvm_bindings::CpuId,
    model: ipc_proto::vcpu::CpuModel,
    thread_names: bool,
    actions: ActionSender,
}

/// The built machine.
pub struct Vm {
    /// The VM fd.
    pub fd: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Port-I/O bus.
    pub io: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// The Generic Event Device.
    pub ged: Arc<Mutex<Ged>>,
    /// COM1 (its registers are part of the VM state).
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The kernel etc., for reloading on reset.
    pub boot: BootSource,
    /// vCPU control.
    pub sync: Arc<VcpuSync>,
    /// The vCPU threads.
    pub vcpus: Vec<VcpuHandle>,
    /// virtio-mmio devices declared in the DSDT.
    pub virtio: Vec<VirtioMmioDevice>,
    /// The vhost-user devices behind those virtio-mmio windows.
    pub devices: VirtioDevices,
    /// `-smp`'s topology of the possible CPUs.
    pub topology: CpuTopology,
    /// The ACPI CPU hotplug registers (which slots hold a CPU).
    pub cpu_hotplug: Arc<Mutex<CpuHotplugRegs>>,
    /// The run state a capture writes and the one a restore read
    /// (QEMU's migration global state).
    pub global_state: crate::state::run::GlobalState,
    /// vCPUs of unplugged slots, kept for a later plug (KVM cannot create
    /// a vCPU id twice), with their power-on state.
    pub(crate) parked_vcpus: std::collections::HashMap<u32, (kvm_ioctls::VcpuFd, InitialState)>,
    /// The guest's ejects, until the server starts their thread.
    cpu_ejects: Option<std::sync::mpsc::Receiver<crate::hotplug::registers::GuestCpuMsg>>,
    vcpu_setup: Option<VcpuSetup>,
    irqchips: Vec<kvm_irqchip>,
    _kvm: Kvm,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("cpus", &self.cpus)
            .field("io", &self.io)
            .field("mmio", &self.mmio)
            .finish_non_exhaustive()
    }
}

/// QEMU's PC routing: GSI 0 → PIC pin 0 and IOAPIC pin 2 (the PIT),
/// GSI 1..15 → PIC and IOAPIC pin n, GSI 16..23 → IOAPIC pin n.
fn gsi_routing() -> Result<KvmIrqRouting> {
    let entry = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut entries = Vec::new();
    for gsi in 0..16 {
        if gsi == 2 {
            continue;
        }
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        entries.push(entry(gsi, chip, pin));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => entries.push(entry(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            n => entries.push(entry(n, KVM_IRQCHIP_IOAPIC, n)),
        }
    }
    KvmIrqRouting::from_entries(&entries).map_err(|_| VmError::Config("GSI routing table"))
}

fn platform_setup(vm: &VmFd) -> Result<()> {
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    vm.set_gsi_routing(&gsi_routing()?)
        .map_err(kvm_err("KVM_SET_GSI_ROUTING"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))
}

/// Programs the in-kernel 8259 pair as a PC BIOS leaves it (vectors 0x08 and
/// 0x70, every line masked), so a guest that never touches the PIC does not
/// take ExtINT interrupts on exception vectors through LINT0.
fn bios_pic_setup(vm: &VmFd) -> Result<()> {
    for (chip_id, irq_base) in [
        (KVM_IRQCHIP_PIC_MASTER, 0x08),
        (KVM_IRQCHIP_PIC_SLAVE, 0x70),
    ] {
        let mut c = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        // SAFETY: chip_id selects a PIC, so `pic` is the union member KVM filled.
        let mut pic = unsafe { c.chip.pic };
        pic.imr = 0xff;
        pic.irq_base = irq_base;
        pic.init4 = 1;
        pic.init_state = 0;
        c.chip.pic = pic;
        vm.set_irqchip(&c).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

fn snapshot_irqchips(vm: &VmFd) -> Result<Vec<kvm_irqchip>> {
    [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ]
    .into_iter()
    .map(|chip_id| {
        let mut c = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        Ok(c)
    })
    .collect()
}

fn setup_serial(
    vm: &VmFd,
    io: &Bus,
    cfg: &SerialConfig,
    fds: &mut FdTable,
) -> Result<Arc<Mutex<SerialDevice>>> {
    let irq = SerialIrq(Some(Arc::new(IrqLine::new(vm, layout::COM1_GSI)?)));
    let (out, input, listener) = match cfg {
        SerialConfig::Null => (SerialOut::Null, None, None),
        SerialConfig::Stream { output, input } => {
            let out = SerialOut::File(Arc::new(File::from(fds.take(*output)?)));
            let input = input.map(|s| fds.take(s)).transpose()?;
            (out, input, None)
        }
        SerialConfig::Listener(slot) => {
            let listener = fds.take(*slot)?;
            let client = Arc::new(Mutex::new(None));
            (
                SerialOut::Client(client.clone()),
                None,
                Some((listener, client, None)),
            )
        }
        SerialConfig::ListenerWithClient {
            listener,
            client: first,
        } => {
            let listener = fds.take(*listener)?;
            let first = File::from(fds.take(*first)?);
            let client = Arc::new(Mutex::new(None));
            (
                SerialOut::Client(client.clone()),
                None,
                Some((listener, client, Some(first))),
            )
        }
    };
    let dev = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
    io.insert(u64::from(layout::COM1_PORT), 8, dev.clone())?;
    let handle = dev.clone();
    if let Some(input) = input {
        serial::spawn_stream_input(dev.clone(), input).map_err(VmError::Thread)?;
    }
    if let Some((listener, client, first)) = listener {
        serial::spawn_listener(dev, listener, client, first).map_err(VmError::Thread)?;
    }
    Ok(handle)
}

/// A second `VcpuFd` on `vcpu`'s vCPU, from a dup of its fd.
fn vcpu_view(vm: &VmFd, vcpu: &kvm_ioctls::VcpuFd) -> Result<kvm_ioctls::VcpuFd> {
    use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
    // SAFETY: `vcpu` owns its fd and outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(vcpu.as_raw_fd()) }
        .try_clone_to_owned()
        .map_err(|e| VmError::Kvm {
            what: "dup of a vCPU fd",
            source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EBADF)),
        })?;
    // SAFETY: `fd` is a vCPU fd of `vm`, owned here and handed over.
    unsafe { vm.create_vcpu_from_rawfd(fd.into_raw_fd()) }
        .map_err(kvm_err("KVM_CREATE_VCPU (view)"))
}

impl Vm {
    /// Builds the VM; its vCPUs are parked until [`VcpuSync::resume`].
    pub fn create(cfg: &VmConfig, fds: FdTable, actions: ActionSender) -> Result<Vm> {
        let (events, _) = std::sync::mpsc::channel();
        Self::create_with_devices(cfg, &[], fds, actions, events)
    }

    /// Builds the VM with vhost-user `devices` attached (their sockets are
    /// slots of `fds`) before the firmware tables are written and before
    /// any vCPU exists; their connection events go to `events`.
    pub fn create_with_devices(
        cfg: &VmConfig,
        devices: &[VhostUserDeviceConfig],
        mut fds: FdTable,
        actions: ActionSender,
        events: Sender<VirtioEvent>,
    ) -> Result<Vm> {
        if cfg.cpus == 0 || cfg.cpus > 254 {
            return Err(VmError::Config("cpus must be 1..=254"));
        }
        let t = cfg.topology;
        let product = [t.dies, t.cores, t.threads]
            .iter()
            .try_fold(t.sockets, |acc, n| acc.checked_mul(*n));
        if u32::from(cfg.cpus) > t.max_cpus
            || t.max_cpus == 0
            || t.max_cpus > 255
            || product != Some(t.max_cpus)
            || t.apic_id(t.max_cpus - 1) >= 255
        {
            return Err(VmError::Config(
                "the topology does not fit cpus and maxcpus (APIC ids below 255)",
            ));
        }
        vcpu::install_kick_handler().map_err(VmError::Thread)?;
        // SAFETY: the broker opened /dev/kvm for us and passed the fd to
        // this process alone; Kvm takes ownership of it.
        let kvm = unsafe {
            <Kvm as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                fds.take(cfg.kvm)?,
            ))
        };
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mem = memory::map_guest_memory(File::from(fds.take(cfg.memory)?), cfg.mem_size)?;
        memory::register_with_kvm(&vm, &mem)?;
        if cfg.no_dump_guest_core {
            memory::exclude_from_core_dumps(&mem)?;
        }
        platform_setup(&vm)?;
        bios_pic_setup(&vm)?;
        let irqchips = snapshot_irqchips(&vm)?;

        let io = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let serial = setup_serial(&vm, &io, &cfg.serial, &mut fds)?;
        io.insert(
            u64::from(layout::I8042_DATA_PORT),
            5,
            Arc::new(Mutex::new(I8042)),
        )?;
        io.insert(
            u64::from(layout::DEBUG_EXIT_PORT),
            4,
            Arc::new(Mutex::new(DebugExit)),
        )?;
        io.insert(
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
            3,
            Arc::new(Mutex::new(AcpiPm)),
        )?;
        let ged_irq = Arc::new(IrqLine::new(&vm, layout::GED_GSI)?);
        let ged = Arc::new(Mutex::new(Ged::new(Some(ged_irq))));
        mmio.insert(layout::GED_ADDR, layout::GED_SIZE, ged.clone())?;
        let (eject_tx, cpu_ejects) = std::sync::mpsc::channel();
        let apic_ids: Vec<u32> = (0..t.max_cpus).map(|i| t.apic_id(i)).collect();
        let cpu_hotplug = Arc::new(Mutex::new(CpuHotplugRegs::new(
            &apic_ids,
            u32::from(cfg.cpus),
            Some(eject_tx),
        )));
        io.insert(
            u64::from(layout::CPU_HOTPLUG_PORT),
            crate::hotplug::registers::REG_LEN,
            cpu_hotplug.clone(),
        )?;

        let kernel = match cfg.kernel {
            Some(slot) => KernelImage::File(File::from(fds.take(slot)?)),
            None => KernelImage::Bytes(crate::builtin_guest::hello()),
        };
        let initrd = cfg
            .initrd
            .map(|s| fds.take(s).map(File::from))
            .transpose()?;
        let boot = BootSource {
            kernel,
            initrd,
            cmdline: cfg.cmdline.clone(),
            mem_size: cfg.mem_size,
        };
        let mut machine = Vm {
            fd: Arc::new(vm),
            mem,
            cpus: cfg.cpus,
            io,
            mmio,
            ged,
            serial,
            boot,
            sync: Arc::new(VcpuSync::new(EntryPoint { rip: 0, rsi: 0 })),
            vcpus: Vec::new(),
            virtio: Vec::new(),
            devices: VirtioDevices::new(),
            topology: t,
            cpu_hotplug,
            global_state: Default::default(),
            parked_vcpus: std::collections::HashMap::new(),
            cpu_ejects: Some(cpu_ejects),
            vcpu_setup: None,
            irqchips,
            _kvm: kvm,
        };
        for d in devices {
            let socket = UnixStream::from(fds.take(d.socket)?);
            machine.add_device(d, socket, events.clone())?;
        }
        // An incoming VM's RAM is the saved guest's (a memory file, or a
        // migration to come): nothing is written into it, and its vCPUs
        // wait for their saved state (`VcpuSync::mark_restored`).
        if !cfg.incoming {
            let entry = machine.load_guest()?;
            machine.sync.new_epoch(entry);
        }
        machine.vcpu_setup = Some(VcpuSetup {
            supported,
            model: cfg.cpu.clone(),
            thread_names: cfg.thread_names,
            actions,
        });
        for slot in 0..u32::from(cfg.cpus) {
            machine.spawn_vcpu(slot)?;
        }
        machine.wait_vcpu_tids()?;
        Ok(machine)
    }

    /// Writes the boot structures and the kernel into memory; returns the
    /// boot CPU's entry.
    pub fn load_guest(&mut self) -> Result<EntryPoint> {
        let mem = &self.mem;
        for (i, e) in crate::gdt::BOOT_GDT.iter().enumerate() {
            vm_memory::Bytes::write_obj(
                mem,
                *e,
                vm_memory::GuestAddress(layout::GDT_START + 8 * i as u64),
            )
            .map_err(VmError::BootMemory)?;
        }
        vm_memory::Bytes::write_obj(mem, 0u64, vm_memory::GuestAddress(layout::IDT_START))
            .map_err(VmError::BootMemory)?;
        paging::write_boot_page_tables(mem).map_err(VmError::BootMemory)?;
        self.write_cpu_tables()?;
        let extra = loader::virtio_mmio_cmdline(&self.virtio);
        Ok(loader::load(mem, &mut self.boot, &extra)?)
    }

    /// Writes the MP table and the ACPI tables for the CPUs plugged now.
    pub fn write_cpu_tables(&self) -> Result<()> {
        let cpus = self.possible_cpus();
        mptable::write(&self.mem, &cpus).map_err(VmError::BootMemory)?;
        acpi::write_tables(&self.mem, &cpus, &self.virtio)?;
        Ok(())
    }

    /// Attaches a vhost-user device on `socket` (connected to its backend)
    /// and lists it for the DSDT; the tables are written later.
    fn add_device(
        &mut self,
        d: &VhostUserDeviceConfig,
        socket: UnixStream,
        events: Sender<VirtioEvent>,
    ) -> Result<()> {
        let err = |source| VmError::Device {
            id: d.id.clone(),
            source,
        };
        if self.devices.get(&d.id).is_some() {
            return Err(err(VirtioError::DuplicateId(d.id.clone())));
        }
        let params = VhostUserBlkParams {
            id: d.id.clone(),
            slot: d.slot,
            socket,
            mem: self.mem.clone(),
            vm: &self.fd,
            bus: &self.mmio,
            events,
            num_queues: d.num_queues,
            queue_size: d.queue_size,
        };
        let dev = match d.kind {
            VhostUserKind::Block => MmioDevice::new_vhost_user_blk(params).map_err(err)?,
            VhostUserKind::Net => MmioDevice::new_vhost_user_net(params, d.mac).map_err(err)?,
            VhostUserKind::Scsi => MmioDevice::new_vhost_user_scsi(params).map_err(err)?,
        };
        self.devices.add(dev).map_err(err)?;
        self.virtio = self.devices.acpi_devices();
        Ok(())
    }

    /// Attaches a vhost-user device to a VM whose guest has not run yet
    /// and loads the guest again, so the DSDT and the kernel command line
    /// (`virtio_mmio.device=`) list it.
    pub fn attach_vhost_user(
        &mut self,
        d: &VhostUserDeviceConfig,
        socket: UnixStream,
        events: Sender<VirtioEvent>,
    ) -> Result<()> {
        self.add_device(d, socket, events)?;
        let entry = self.load_guest()?;
        self.sync.new_epoch(entry);
        Ok(())
    }

    /// Writes the boot state of every vCPU that has not run since the
    /// VM's creation or last reset (a VM in `prelaunch`, a CPU plugged
    /// while paused) through its second handle, as its thread would when
    /// it first runs, and lets the thread resume that state instead. A
    /// VM-state capture then holds the VM as it is at its first
    /// instruction, not the vCPUs' KVM reset state (QEMU's CPUs are reset
    /// at creation). The vCPUs must be parked.
    pub fn settle_boot(&self) -> Result<()> {
        let slots: Vec<u32> = self.vcpus.iter().map(|v| v.slot).collect();
        let (pending, entry) = self.sync.boot_pending(&slots);
        for v in self.vcpus.iter().filter(|v| pending.contains(&v.slot)) {
            v.initial
                .boot(&v.view, v.slot, entry)
                .map_err(VmError::Regs)?;
        }
        self.sync.add_restored(&pending);
        Ok(())
    }

    /// Restores the interrupt controllers to their power-on state.
    pub fn reset_irqchips(&self) -> Result<()> {
        for c in &self.irqchips {
            self.fd.set_irqchip(c).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    /// The possible CPUs and which of them are plugged now.
    pub fn possible_cpus(&self) -> PossibleCpus {
        PossibleCpus::from_regs(&self.cpu_regs())
    }

    /// The CPU hotplug registers.
    pub fn cpu_regs(&self) -> std::sync::MutexGuard<'_, CpuHotplugRegs> {
        self.cpu_hotplug.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest's CPU ejects (once: the server's eject thread takes them).
    pub fn take_cpu_ejects(
        &mut self,
    ) -> Option<std::sync::mpsc::Receiver<crate::hotplug::registers::GuestCpuMsg>> {
        self.cpu_ejects.take()
    }

    /// Starts the vCPU thread of possible-CPU `slot` (KVM vCPU id = its
    /// APIC id), reusing the vCPU an unplug of that slot left.
    pub(crate) fn spawn_vcpu(&mut self, slot: u32) -> Result<()> {
        let Some(setup) = &self.vcpu_setup else {
            return Err(VmError::Config("vCPU setup missing"));
        };
        let apic_id = self.topology.apic_id(slot);
        let (vcpu, initial) = match self.parked_vcpus.remove(&slot) {
            Some(parked) => parked,
            None => {
                let vcpu = self
                    .fd
                    .create_vcpu(u64::from(apic_id))
                    .map_err(kvm_err("KVM_CREATE_VCPU"))?;
                let mut cpuid = setup.supported.clone();
                cpuid::filter(&mut cpuid, apic_id, &self.topology);
                let warnings = crate::cpu_model::apply(&mut cpuid, &setup.model);
                if slot == 0 {
                    for w in warnings {
                        tracing::warn!("{w}");
                    }
                }
                vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
                regs::setup_msrs(&vcpu)?;
                regs::setup_lint(&vcpu)?;
                let initial = InitialState {
                    lapic: vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?,
                    events: kvm_bindings::kvm_vcpu_events::default(),
                };
                (vcpu, initial)
            }
        };
        let tid = Arc::new(AtomicI64::new(0));
        let unplug = Arc::new(Unplug::default());
        let view = vcpu_view(&self.fd, &vcpu)?;
        self.sync.forget_taken(slot);
        let t = VcpuThread {
            index: slot,
            vcpu,
            sync: self.sync.clone(),
            io: self.io.clone(),
            mmio: self.mmio.clone(),
            mem: self.mem.clone(),
            actions: setup.actions.clone(),
            initial,
            tid: tid.clone(),
            unplug: unplug.clone(),
        };
        let thread = std::thread::Builder::new()
            // QEMU's names: `CPU N/KVM` with debug-threads=on, else
            // the process's own name.
            .name(if setup.thread_names {
                format!("CPU {slot}/KVM")
            } else {
                "vcpu-proc".to_owned()
            })
            .spawn(move || t.run())
            .map_err(VmError::Thread)?;
        self.vcpus.push(VcpuHandle {
            thread,
            tid,
            slot,
            unplug,
            view,
            initial,
        });
        Ok(())
    }

    /// Waits until every vCPU thread published its tid.
    pub(crate) fn wait_vcpu_tids(&self) -> Result<()> {
        let deadline = Instant::now() + TID_WAIT;
        while self.vcpus.iter().any(|v| v.tid.load(Ordering::SeqCst) == 0) {
            if Instant::now() > deadline {
                return Err(VmError::ThreadStart);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The /dev/kvm handle (the VM-state code asks it which MSRs to save).
    pub fn kvm(&self) -> &Kvm {
        &self._kvm
    }

    /// Kicks every vCPU thread out of `KVM_RUN`.
    pub fn kick_all(&self) {
        use std::os::unix::thread::JoinHandleExt;
        for v in &self.vcpus {
            vcpu::kick(v.thread.as_pthread_t());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_sends_gsi0_to_ioapic_pin2_and_skips_gsi2() {
        let r = gsi_routing().unwrap();
        let e = r.as_slice();
        let ioapic: Vec<(u32, u32)> = e
            .iter()
            .filter(|x| {
                // SAFETY: every entry was built as an irqchip entry.
                let chip = unsafe { x.u.irqchip.irqchip };
                chip == KVM_IRQCHIP_IOAPIC
            })
            // SAFETY: as above.
            .map(|x| (x.gsi, unsafe { x.u.irqchip.pin }))
            .collect();
        assert!(ioapic.contains(&(0, 2)));
        assert!(!ioapic.iter().any(|(g, _)| *g == 2));
        assert!(ioapic.contains(&(13, 13)));
    }

    #[test]
    fn fd_slots_are_taken_once() {
        let f = File::open("/dev/null").unwrap();
        let mut t = FdTable::new(vec![OwnedFd::from(f)]);
        assert!(t.take(FdSlot(0)).is_ok());
        assert!(matches!(t.take(FdSlot(0)), Err(VmError::FdSlot(0))));
        assert!(matches!(t.take(FdSlot(5)), Err(VmError::FdSlot(5))));
    }
}
