//! vcpu-proc: Bulkhead's vCPU worker. It owns the KVM VM, guest memory (the
//! broker's memfd), the vCPU threads and the platform devices, and serves
//! the broker's `VcpuRequest`s (ipc-proto `vcpu` channel).
//!
//! Crate map:
//! - [`server`]: the control-channel loop (requests → controller, replies,
//!   events).
//! - [`control`]: the controller — pause/resume/reset/power button, event
//!   emission; [`runstate`]: the pure run-state machine (QEMU's rules).
//! - [`vm`]: building the machine from a `VmConfig` and the frame's fds.
//! - [`vcpu`]: vCPU threads, exit dispatch, kick signal, crash reports.
//! - [`memory`]: memfd-backed guest RAM; [`layout`]: the platform map.
//! - [`loader`]: ELF / bzImage loading, command line, initrd, zero page;
//!   [`builtin_guest`]: the default guest and a tiny ELF builder.
//! - [`regs`], [`gdt`], [`paging`], [`cpuid`]: boot CPU state.
//! - [`acpi`]: RSDP/XSDT/FADT/MADT/DSDT; [`mptable`]: the MP table.
//! - [`trace`]: vcpu-proc's trace points (KVM exits per vCPU, virtio-mmio,
//!   vhost-user frontend, IPC).
//! - [`bus`]: port-I/O and MMIO buses of devices by address range.
//! - [`dump`]: `dump-guest-memory`, the ELF core of RAM and registers.
//! - [`devices`]: serial, i8042, debug-exit, ACPI PM registers, GED, irq lines.

pub mod acpi;
pub mod builtin_guest;
pub mod bus;
pub mod control;
pub mod cpu_model;
pub mod cpuid;
pub mod devices;
pub mod dump;
pub mod gdt;
pub mod hotplug;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod migration;
pub mod mptable;
pub mod paging;
pub mod regs;
pub mod runstate;
pub mod server;
pub mod state;
pub mod trace;
pub mod vcpu;
pub mod virtio;
pub mod vm;

// The test VM fixture, the very file the integration tests have as
// `common::test_vm` (one builder for both).
#[cfg(test)]
#[path = "../tests/common/test_vm.rs"]
pub(crate) mod test_vm;

// Where the block-proc binary is, the file the integration tests have as
// `common::block_proc_bin`.
#[cfg(test)]
#[path = "../tests/common/block_proc_bin.rs"]
pub(crate) mod block_proc_bin;

use std::path::PathBuf;

use ipc_proto::handshake::WorkerKind;
use ipc_proto::vcpu::{VcpuEvent, VcpuReply, VcpuRequest};

/// Errors that end vcpu-proc, one exit code each.
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    /// Bad command line.
    #[error(
        "usage: vcpu-proc --control-fd N | vcpu-proc --dump-acpi DIR [--cpus N] [--maxcpus M]"
    )]
    Usage,
    /// Start-up (control fd, handshake) failed.
    #[error("start-up failed")]
    Startup(#[from] ipc_proto::worker::StartupError),
    /// Serving failed.
    #[error("serving the broker failed")]
    Server(#[from] server::ServerError),
    /// Dumping the ACPI tables failed.
    #[error("cannot dump the ACPI tables")]
    Dump(#[source] std::io::Error),
    /// The sandbox could not be set up.
    #[error("cannot enter the sandbox")]
    Sandbox(#[from] sandbox::SandboxError),
}

impl MainError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            MainError::Usage => 2,
            MainError::Startup(_) => 3,
            MainError::Server(_) => 4,
            MainError::Dump(_) => 5,
            MainError::Sandbox(_) => 6,
        }
    }
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Runs vcpu-proc with `args` (including the program name).
pub fn run(args: Vec<String>) -> Result<(), MainError> {
    if let Some(dir) = arg_value(&args, "--dump-acpi") {
        let cpus = match arg_value(&args, "--cpus") {
            Some(v) => v.parse().map_err(|_| MainError::Usage)?,
            None => 1,
        };
        let devices: Vec<acpi::VirtioMmioDevice> = (0..layout::VIRTIO_MMIO_SLOTS)
            .map(|i| acpi::VirtioMmioDevice {
                base: layout::VIRTIO_MMIO_BASE + u64::from(i) * layout::VIRTIO_MMIO_SIZE,
                size: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::VIRTIO_MMIO_GSI_BASE + i,
            })
            .collect();
        let max_cpus = match arg_value(&args, "--maxcpus") {
            Some(v) => v.parse().map_err(|_| MainError::Usage)?,
            None => cpus,
        };
        if cpus == 0 || max_cpus < cpus || max_cpus > 254 {
            return Err(MainError::Usage);
        }
        let possible = hotplug::PossibleCpus::at_start(
            &ipc_proto::cpu_topology::CpuTopology::flat(max_cpus),
            cpus,
        );
        acpi::dump_tables(&PathBuf::from(dir), &possible, &devices).map_err(MainError::Dump)?;
        return Ok(());
    }
    // The seccomp filter is compiled before the handshake, the sandbox
    // entered right after it: before any guest-controlled data arrives.
    let sandbox = sandbox::Sandbox::from_args(WorkerKind::Vcpu, &args)?;
    let fd = ipc_proto::worker::control_fd_from_args(args)?;
    let channel =
        ipc_proto::worker::connect::<VcpuRequest, VcpuReply, VcpuEvent>(WorkerKind::Vcpu, fd)?;
    if let Some(report) = sandbox.enter()? {
        if let Some(w) = report.landlock.warning() {
            tracing::warn!("{w}");
        }
    }
    server::serve(channel)?;
    Ok(())
}
