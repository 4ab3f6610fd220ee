//! The test VM of vcpu-proc's tests: a [`VmConfig`] for a test guest —
//! one vCPU and 64 MiB unless asked otherwise — with the fds its slots
//! name (/dev/kvm, a sealed guest-RAM memfd as the broker makes it, the
//! serial pipe's write end, the kernel) and the pipe's read end; created
//! in this process ([`TestVm::create`]) or sent to a vcpu-proc process
//! (`CreateVm`, `common::Vmm`).
//!
//! One file for both kinds of tests: the integration tests have it as
//! `common::test_vm`, the library's own tests include it as
//! `crate::test_vm` (`src/lib.rs`). Paths into vcpu-proc therefore go
//! through the includer, which names `runstate` and `vm`: the crate's
//! modules in the library, `vcpu_proc::…` in the integration tests.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use ipc_proto::cpu_topology::CpuTopology;
use ipc_proto::vcpu::{FdSlot, SerialConfig, VmConfig};

use super::runstate::Input;
use super::vm::{FdTable, Vm};

/// Guest RAM of a test VM unless [`TestVmBuilder::mem_size`] says
/// otherwise.
pub const MEM_SIZE: u64 = 64 << 20;

/// How long a created VM's vCPUs may take to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);

/// Where test guest `name` is built.
pub fn guest_path(name: &str) -> PathBuf {
    Path::new(env!("BULKHEAD_TEST_GUEST_DIR")).join(name)
}

/// /dev/kvm, read-write; panics with a clear message when it is unusable.
pub fn open_kvm() -> OwnedFd {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
        .unwrap_or_else(|e| panic!("this test needs /dev/kvm (read-write): {e}"))
        .into()
}

/// A memfd of `size` bytes sealed against shrinking, as the broker
/// creates guest RAM.
pub fn guest_memfd(size: u64) -> OwnedFd {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"guest-ram",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    nix::unistd::ftruncate(&fd, i64::try_from(size).unwrap()).unwrap();
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
    fd
}

/// Reads the serial pipe's `read` end on a thread of its own, handing
/// what comes to `sink` until the pipe closes or `sink` says stop.
pub fn pump_serial(read: OwnedFd, mut sink: impl FnMut(&[u8]) -> bool + Send + 'static) {
    std::thread::spawn(move || {
        let mut f = File::from(read);
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 || !sink(&buf[..n]) {
                return;
            }
        }
    });
}

/// What a test VM is made of: [`TestVmBuilder::build`].
pub struct TestVm {
    /// The configuration; its slots index `fds`.
    pub cfg: VmConfig,
    /// /dev/kvm (slot 0), guest RAM (1), the serial output (2), the kernel
    /// if any (3), then what [`TestVm::push_fd`] added.
    pub fds: Vec<OwnedFd>,
    /// A dup of the guest-RAM memfd.
    pub ram: File,
    /// The read end of the serial pipe (what the guest prints on COM1).
    pub serial: OwnedFd,
}

/// Builds a [`TestVm`].
pub struct TestVmBuilder {
    kernel: Option<OwnedFd>,
    cpus: u8,
    mem_size: u64,
}

impl TestVmBuilder {
    /// Test guest `name` as the kernel; panics if it is not built.
    pub fn guest(name: &str) -> Self {
        let path = guest_path(name);
        let kernel = File::open(&path)
            .unwrap_or_else(|e| panic!("test guest {name} not built ({}): {e}", path.display()));
        Self::kernel(Some(kernel.into()))
    }

    /// `kernel` as the kernel image; None: vcpu-proc's built-in guest.
    pub fn kernel(kernel: Option<OwnedFd>) -> Self {
        TestVmBuilder {
            kernel,
            cpus: 1,
            mem_size: MEM_SIZE,
        }
    }

    /// `n` vCPUs (flat topology).
    pub fn cpus(mut self, n: u8) -> Self {
        self.cpus = n;
        self
    }

    /// `bytes` of guest RAM.
    pub fn mem_size(mut self, bytes: u64) -> Self {
        self.mem_size = bytes;
        self
    }

    /// Opens /dev/kvm and creates the RAM memfd and the serial pipe.
    pub fn build(self) -> TestVm {
        let mem = guest_memfd(self.mem_size);
        let ram = File::from(mem.try_clone().unwrap());
        let (serial, serial_w) = nix::unistd::pipe().unwrap();
        let mut fds = vec![open_kvm(), mem, serial_w];
        let kernel = self.kernel.map(|k| {
            fds.push(k);
            FdSlot(3)
        });
        let cfg = VmConfig {
            kvm: FdSlot(0),
            memory: FdSlot(1),
            mem_size: self.mem_size,
            cpus: self.cpus,
            topology: CpuTopology::flat(u32::from(self.cpus)),
            kernel,
            initrd: None,
            cmdline: String::new(),
            serial: SerialConfig::Stream {
                output: FdSlot(2),
                input: None,
            },
            start_paused: false,
            no_shutdown: false,
            no_reboot: false,
            cpu: Default::default(),
            thread_names: false,
            no_dump_guest_core: false,
            incoming: false,
        };
        TestVm {
            cfg,
            fds,
            ram,
            serial,
        }
    }
}

/// A test VM created in this process, its vCPUs parked (not run yet).
pub struct CreatedVm {
    /// The VM.
    pub vm: Vm,
    /// A dup of the guest-RAM memfd.
    pub ram: File,
    /// The read end of the serial pipe.
    pub serial: OwnedFd,
    /// What the vCPUs ask of the VM's owner (debug exit, crash, ...).
    pub actions: Receiver<Input>,
}

impl TestVm {
    /// Adds `fd` to the fds sent with the configuration; its slot.
    pub fn push_fd(&mut self, fd: OwnedFd) -> FdSlot {
        self.fds.push(fd);
        FdSlot(u8::try_from(self.fds.len() - 1).unwrap())
    }

    /// Creates the VM in this process (`Vm::create`) and waits until its
    /// vCPUs are parked.
    pub fn create(self) -> CreatedVm {
        let (tx, actions) = channel();
        let vm = Vm::create(&self.cfg, FdTable::new(self.fds), tx).expect("VM built");
        assert!(
            vm.sync.wait_parked(vm.vcpus.len(), PARK_TIMEOUT),
            "the vCPUs did not park"
        );
        CreatedVm {
            vm,
            ram: self.ram,
            serial: self.serial,
            actions,
        }
    }
}
