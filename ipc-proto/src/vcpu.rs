//! The broker ↔ vcpu-proc channel: VM creation, lifecycle control and the
//! guest's lifecycle events.
//!
//! File descriptors travel beside a request in the frame; a request refers
//! to them by [`FdSlot`], their index in that frame's fd list.

use serde::{Deserialize, Serialize};

/// Index of an fd in the fd list of the frame that carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdSlot(pub u8);

/// Where the 16550 UART's bytes go and come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SerialConfig {
    /// Output discarded, no input (`-serial null`).
    Null,
    /// A byte stream: output written to `output`, input read from `input`
    /// if any (`-serial stdio`, `-serial file:PATH`).
    Stream {
        /// Where guest output goes.
        output: FdSlot,
        /// Where guest input comes from.
        input: Option<FdSlot>,
    },
    /// A listening socket (Unix or TCP) the broker bound; vcpu-proc
    /// accepts one client at a time (`-serial unix:PATH,server=on,wait=off`,
    /// `-serial tcp:HOST:PORT,server=on,wait=off`).
    Listener(FdSlot),
    /// A listening socket whose first client the broker already accepted
    /// (QEMU's `server=on` with its default `wait=on`: the guest starts
    /// only once a client is there); later clients as for `Listener`.
    ListenerWithClient {
        /// The listening socket.
        listener: FdSlot,
        /// The first client's connection.
        client: FdSlot,
    },
}

/// Everything vcpu-proc needs to build the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// `/dev/kvm`, opened by the broker.
    pub kvm: FdSlot,
    /// Guest RAM: a memfd of `mem_size` bytes, sealed against shrinking.
    pub memory: FdSlot,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Number of vCPUs present at start (slots `0..cpus`).
    pub cpus: u8,
    /// `-smp`'s topology: the possible CPUs and their APIC ids.
    pub topology: crate::cpu_topology::CpuTopology,
    /// The kernel image (bzImage or ELF); `None` boots the built-in test guest.
    pub kernel: Option<FdSlot>,
    /// The initial ramdisk.
    pub initrd: Option<FdSlot>,
    /// The kernel command line.
    pub cmdline: String,
    /// The serial port backend.
    pub serial: SerialConfig,
    /// `-S`: stay in `prelaunch` until `cont`.
    pub start_paused: bool,
    /// `-no-shutdown`: a guest shutdown pauses the VM instead of ending it.
    pub no_shutdown: bool,
    /// `-no-reboot`: a guest reset is treated as a shutdown.
    pub no_reboot: bool,
    /// `-cpu`: the CPU model the guest sees in CPUID.
    pub cpu: CpuModel,
    /// `-name debug-threads=on`: vCPU threads are named `CPU N/KVM`, as
    /// QEMU's (otherwise they carry the process's name, as QEMU's).
    pub thread_names: bool,
    /// `-machine dump-guest-core=off`: guest RAM is left out of
    /// vcpu-proc's core dumps (MADV_DONTDUMP), as QEMU does.
    pub no_dump_guest_core: bool,
    /// `-incoming`: the guest is not loaded into RAM and the vCPUs do not
    /// start; the VM waits in `inmigrate` for its RAM and state (an
    /// incoming migration or `xen-load-devices-state`).
    pub incoming: bool,
}

/// The CPU model of `-cpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModel {
    /// The named model.
    pub base: CpuBase,
    /// `+feature` / `-feature` edits, applied after the model (a feature
    /// KVM cannot give stays off).
    pub features: Vec<CpuFeature>,
}

/// The named CPU models bulkhead has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuBase {
    /// `host` (and `max`, the same under KVM): everything KVM supports.
    Host,
    /// `qemu64`: QEMU's qemu64 model (AMD vendor, family 15, its feature
    /// set), within what KVM supports.
    Qemu64,
}

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuidReg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One CPUID feature bit turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeature {
    /// CPUID leaf.
    pub leaf: u32,
    /// Sub-leaf (ECX input).
    pub subleaf: u32,
    /// Register.
    pub reg: CpuidReg,
    /// Bit number.
    pub bit: u8,
    /// On (`+feat`) or off (`-feat`).
    pub on: bool,
}

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel {
            base: CpuBase::Host,
            features: Vec::new(),
        }
    }
}

/// The kind of device a vhost-user backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VhostUserKind {
    /// virtio-blk (device type 2).
    Block,
    /// virtio-scsi (device type 8).
    Scsi,
    /// virtio-net (device type 1).
    Net,
}

/// A virtio-mmio device whose queues a vhost-user backend serves. The
/// broker connects the socket (vcpu-proc opens nothing) and passes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserDeviceConfig {
    /// Device id (QMP `id`).
    pub id: String,
    /// virtio-mmio slot: base `0xd000_0000 + 0x1000 * slot`, GSI `5 + slot`.
    pub slot: u32,
    /// The device type.
    pub kind: VhostUserKind,
    /// The socket, already connected to the backend.
    pub socket: FdSlot,
    /// Queues wanted (capped by what the backend serves). For
    /// [`VhostUserKind::Scsi`] every virtqueue counts: control, event and
    /// the request queues (at least 3; QEMU's `num_queues` + 2).
    pub num_queues: u16,
    /// Largest queue size offered to the guest (a power of two).
    pub queue_size: u16,
    /// A NIC's `mac=`: the address vcpu-proc shows the guest when the
    /// backend serves no config space (None for other kinds).
    pub mac: Option<[u8; 6]>,
}

/// QEMU's RunState values (QAPI `RunState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// QEMU's `debug`.
    Debug,
    /// QEMU's `inmigrate`.
    Inmigrate,
    /// QEMU's `internal-error`: the guest crashed or its vCPU worker died.
    InternalError,
    /// QEMU's `io-error`.
    IoError,
    /// QEMU's `paused`.
    Paused,
    /// QEMU's `postmigrate`.
    Postmigrate,
    /// QEMU's `prelaunch`: created with `-S`, never run.
    Prelaunch,
    /// QEMU's `finish-migrate`.
    FinishMigrate,
    /// QEMU's `restore-vm`.
    RestoreVm,
    /// QEMU's `running`.
    Running,
    /// QEMU's `save-vm`.
    SaveVm,
    /// QEMU's `shutdown`: the guest powered off (with `-no-shutdown`).
    Shutdown,
    /// QEMU's `suspended`.
    Suspended,
    /// QEMU's `watchdog`.
    Watchdog,
    /// QEMU's `guest-panicked`.
    GuestPanicked,
    /// QEMU's `colo`.
    Colo,
}

impl RunState {
    /// The name QMP uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Debug => "debug",
            RunState::Inmigrate => "inmigrate",
            RunState::InternalError => "internal-error",
            RunState::IoError => "io-error",
            RunState::Paused => "paused",
            RunState::Postmigrate => "postmigrate",
            RunState::Prelaunch => "prelaunch",
            RunState::FinishMigrate => "finish-migrate",
            RunState::RestoreVm => "restore-vm",
            RunState::Running => "running",
            RunState::SaveVm => "save-vm",
            RunState::Shutdown => "shutdown",
            RunState::Suspended => "suspended",
            RunState::Watchdog => "watchdog",
            RunState::GuestPanicked => "guest-panicked",
            RunState::Colo => "colo",
        }
    }

    /// Every value, in QAPI order (for the schema).
    pub const ALL: [RunState; 16] = [
        RunState::Debug,
        RunState::Inmigrate,
        RunState::InternalError,
        RunState::IoError,
        RunState::Paused,
        RunState::Postmigrate,
        RunState::Prelaunch,
        RunState::FinishMigrate,
        RunState::RestoreVm,
        RunState::Running,
        RunState::SaveVm,
        RunState::Shutdown,
        RunState::Suspended,
        RunState::Watchdog,
        RunState::GuestPanicked,
        RunState::Colo,
    ];
}

/// QEMU's ShutdownCause values (the `reason` of SHUTDOWN and RESET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShutdownCause {
    /// `none`.
    None,
    /// `host-error`.
    HostError,
    /// `host-qmp-quit`.
    HostQmpQuit,
    /// `host-qmp-system-reset`.
    HostQmpSystemReset,
    /// `host-signal`.
    HostSignal,
    /// `host-ui`.
    HostUi,
    /// `guest-shutdown`.
    GuestShutdown,
    /// `guest-reset`.
    GuestReset,
    /// `guest-panic`.
    GuestPanic,
    /// `subsystem-reset`.
    SubsystemReset,
    /// `snapshot-load`.
    SnapshotLoad,
}

impl ShutdownCause {
    /// The name QMP uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownCause::None => "none",
            ShutdownCause::HostError => "host-error",
            ShutdownCause::HostQmpQuit => "host-qmp-quit",
            ShutdownCause::HostQmpSystemReset => "host-qmp-system-reset",
            ShutdownCause::HostSignal => "host-signal",
            ShutdownCause::HostUi => "host-ui",
            ShutdownCause::GuestShutdown => "guest-shutdown",
            ShutdownCause::GuestReset => "guest-reset",
            ShutdownCause::GuestPanic => "guest-panic",
            ShutdownCause::SubsystemReset => "subsystem-reset",
            ShutdownCause::SnapshotLoad => "snapshot-load",
        }
    }

    /// True for causes that originate in the guest (the events' `guest` field).
    pub fn is_guest(self) -> bool {
        matches!(
            self,
            ShutdownCause::GuestShutdown | ShutdownCause::GuestReset | ShutdownCause::GuestPanic
        )
    }
}

/// The VM's run status (`query-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// True when the vCPUs run.
    pub running: bool,
    /// True when single-stepping (always false: not supported).
    pub singlestep: bool,
    /// The run state.
    pub status: RunState,
    /// The VM is in the run state its migration source had (QEMU's global
    /// state: the source did not run), set when the incoming migration
    /// ended and kept until the VM runs or is reset: autostart does not
    /// apply to it. Not part of QMP's `query-status`.
    pub source_state: bool,
}

/// One vCPU as `query-cpus-fast` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Index of the vCPU.
    pub cpu_index: u32,
    /// Host thread id of the vCPU thread.
    pub thread_id: i64,
    /// Socket, core and thread ids (`props`).
    pub socket_id: u32,
    /// Core within the socket.
    pub core_id: u32,
    /// Thread within the core.
    pub thread_in_core: u32,
}

/// Requests the broker sends to vcpu-proc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VcpuRequest {
    /// Build the VM (memory, kernel, vCPUs, devices); it starts running
    /// unless `start_paused`. Fds: per [`VmConfig`]'s slots.
    CreateVm(VmConfig),
    /// Resume the vCPUs (`cont`).
    Cont,
    /// Pause the vCPUs (`stop`).
    Stop,
    /// Report [`StatusInfo`].
    QueryStatus,
    /// Reset the machine (`system_reset`).
    SystemReset,
    /// Press the ACPI power button (`system_powerdown`).
    SystemPowerdown,
    /// Report every vCPU (`query-cpus-fast`).
    QueryCpus,
    /// The broker's liveness check: answered with [`VcpuReply::Done`]
    /// straight from the IPC loop, without touching the VM.
    Ping,
    /// Trace points: their states, or the states the broker wants
    /// (with `to_file`, the frame's first fd is the trace file).
    Trace(crate::trace::TraceRequest),
    /// [`VcpuRequest::CreateVm`] with vhost-user devices attached before
    /// the firmware tables are written and before any vCPU runs. Fds: per
    /// the config's and the devices' slots.
    CreateVmWithDevices {
        /// The VM.
        config: VmConfig,
        /// Its devices, in slot order.
        devices: Vec<VhostUserDeviceConfig>,
    },
    /// Attach a vhost-user device to a VM that has never run (`prelaunch`);
    /// the ACPI tables are rewritten to list it. Refused once the guest ran.
    AttachVhostUser(VhostUserDeviceConfig),
    /// Hand device `id` to a restarted backend on `socket` (connected);
    /// the session, the vrings and the inflight region are replayed.
    ReconnectVhostUser {
        /// Device id.
        id: String,
        /// The new connection.
        socket: FdSlot,
    },
    /// Plug the CPU of possible-CPU slot `slot` while the guest runs: a
    /// new vCPU parked in wait-for-SIPI, announced to the guest through
    /// the ACPI CPU hotplug registers (insert event) and the GED.
    PlugCpu {
        /// Possible-CPU slot (`cpu-index`).
        slot: u32,
    },
    /// Ask the guest to eject the CPU of `slot` (remove event); it is
    /// gone when [`VcpuEvent::CpuEjected`] arrives.
    UnplugCpu {
        /// Possible-CPU slot.
        slot: u32,
    },
    /// Start writing an ELF core of the guest to the fd in `fd`
    /// (`dump-guest-memory`): the VM is stopped (`save-vm`) while the
    /// registers are captured and the memory written, then resumed if it
    /// ran. Replies [`VcpuReply::DumpStarted`] at once; the end comes as
    /// [`VcpuEvent::DumpCompleted`].
    DumpGuestMemory(DumpRequest),
    /// Report the running dump's progress ([`VcpuReply::DumpProgress`]).
    QueryDump,
    /// Device state save/load and live migration.
    Migration(crate::migration::MigrationRequest),
    /// Ask the external vhost-user backend of NIC `id` to broadcast a
    /// RARP for `mac` (VHOST_USER_SEND_RARP, QEMU's
    /// `vhost_user_migration_done`): one announcement round of a NIC whose
    /// frames bulkhead does not carry. Refused when the backend did not
    /// negotiate VHOST_USER_PROTOCOL_F_RARP or is not connected.
    SendRarp {
        /// The NIC's device id.
        id: String,
        /// The MAC announced.
        mac: [u8; 6],
    },
    /// Test hooks only: run an escape attempt inside the sandboxed worker.
    /// Replies [`VcpuReply::Done`] if it worked, else the error of
    /// [`crate::escape::Outcome::into_reply`] (or no reply at all:
    /// seccomp kills the worker). Last, so the other variants' indexes do
    /// not depend on the feature.
    #[cfg(feature = "test-hooks")]
    TestEscape(crate::escape::Escape),
}

/// What `dump-guest-memory` asks of vcpu-proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpRequest {
    /// Where the core goes (a file or pipe the broker opened or got).
    pub fd: FdSlot,
    /// `paging`: PT_LOAD segments carry the guest's virtual addresses,
    /// found by walking its page tables.
    pub paging: bool,
    /// `begin`/`length`: only guest-physical `[begin, begin + length)`.
    pub filter: Option<DumpFilter>,
}

/// The guest-physical range of a filtered dump, as QMP gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFilter {
    /// First guest-physical address.
    pub begin: i64,
    /// Length in bytes.
    pub length: i64,
}

/// Replies of vcpu-proc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VcpuReply {
    /// The request was carried out.
    Done,
    /// Answer to a `Trace` request: the process's trace points.
    Trace(crate::trace::TraceReply),
    /// Answer to [`VcpuRequest::QueryStatus`].
    Status(StatusInfo),
    /// Answer to [`VcpuRequest::QueryCpus`].
    Cpus(Vec<CpuInfo>),
    /// Answer to [`VcpuRequest::DumpGuestMemory`]: the dump runs; `total`
    /// bytes of guest memory will be written.
    DumpStarted {
        /// Guest memory bytes the dump covers.
        total: u64,
    },
    /// Answer to [`VcpuRequest::QueryDump`]: guest memory bytes written so
    /// far (0 when no dump runs).
    DumpProgress {
        /// Bytes written.
        completed: u64,
    },
    /// Answer to [`crate::migration::MigrationRequest::Query`] (boxed:
    /// the largest reply by far).
    Migration(Box<crate::migration::MigrationStats>),
}

/// Events vcpu-proc reports; the broker turns them into QMP events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VcpuEvent {
    /// The vCPUs stopped (QMP `STOP`).
    Stopped,
    /// The vCPUs resumed (QMP `RESUME`).
    Resumed,
    /// The machine reset (QMP `RESET`).
    Reset {
        /// Why.
        reason: ShutdownCause,
    },
    /// The guest or host shut the machine down (QMP `SHUTDOWN`).
    Shutdown {
        /// Why.
        reason: ShutdownCause,
    },
    /// The power button was pressed (QMP `POWERDOWN`).
    Powerdown,
    /// The guest crashed (KVM internal error, failed entry, triple fault
    /// without reset); the VM is in `internal-error`.
    GuestCrashed {
        /// A human description: exit reason, RIP and instruction bytes.
        detail: String,
    },
    /// The guest wrote `code` to the debug-exit port; the VM has ended.
    DebugExit {
        /// The value written.
        code: u32,
    },
    /// A vhost-user backend hung up; the device waits for
    /// [`VcpuRequest::ReconnectVhostUser`] (the guest's requests wait too).
    VhostUserDisconnected {
        /// Device id.
        id: String,
    },
    /// A new backend took over device `id`.
    VhostUserReconnected {
        /// Device id.
        id: String,
    },
    /// The dump ended (QMP `DUMP_COMPLETED`), before the VM resumes.
    DumpCompleted {
        /// Guest memory bytes written.
        completed: u64,
        /// Guest memory bytes the dump covers.
        total: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// The guest ejected the CPU of `slot` (after an unplug request); its
    /// vCPU has stopped.
    CpuEjected {
        /// Possible-CPU slot.
        slot: u32,
    },
    /// The guest's `_OST` for the CPU of `slot` (QMP `ACPI_DEVICE_OST`).
    CpuOst {
        /// Possible-CPU slot.
        slot: u32,
        /// The OST source event.
        source: u32,
        /// The OST status.
        status: u32,
    },
    /// A migration's progress (outgoing or incoming).
    Migration(crate::migration::MigrationEvent),
}
