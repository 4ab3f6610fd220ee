//! Opens what vcpu-proc may not open itself (it holds no authority):
//! /dev/kvm, the guest-memory memfd, the kernel and initrd, the serial
//! backend; and builds the `CreateVm` request with those fds attached.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use ipc_proto::vcpu::{FdSlot, SerialConfig, VmConfig};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::os::unix::fs::OpenOptionsExt;

use crate::cli::{Config, SerialSpec};

/// Errors of preparing the VM's resources.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be opened.
    #[error("could not open '{0}'")]
    Open(PathBuf, #[source] std::io::Error),
    /// Guest memory could not be created.
    #[error("could not allocate {0} bytes of guest memory")]
    Memory(u64, #[source] std::io::Error),
    /// A memory backend's file could not be opened (QEMU's message).
    #[error("can't open backing store {} for guest RAM", .0.display())]
    BackingStore(PathBuf, #[source] std::io::Error),
    /// A memory backend's file is smaller than the backend (QEMU's message).
    #[error("{id} backing store size {len:#x} is too small for 'size' option {size:#x} plus 'offset' option 0x0")]
    BackingTooSmall {
        /// The backend's id.
        id: String,
        /// The file's size.
        len: u64,
        /// The backend's size.
        size: u64,
    },
    /// `-mem-prealloc` failed.
    #[error("preallocating memory failed")]
    Prealloc(#[source] std::io::Error),
    /// The serial pty could not be opened.
    #[error(transparent)]
    Pty(#[from] super::serial_pty::PtyError),
    /// The serial socket could not be created.
    #[error("could not listen on serial socket '{0}'")]
    SerialSocket(PathBuf, #[source] std::io::Error),
    /// The broker's end of a serial backend it serves itself (TCP, muxed
    /// stdio) is missing or could not be duplicated.
    #[error("serial backend {0}")]
    SerialBackend(&'static str, #[source] std::io::Error),
}

/// The request and the fds it refers to, in slot order.
pub struct PreparedVm {
    /// The VM configuration.
    pub config: VmConfig,
    /// The fds, indexed by [`FdSlot`].
    pub fds: Vec<OwnedFd>,
    /// A serial socket path the broker created and must remove at exit.
    pub serial_socket: Option<PathBuf>,
}

struct Slots(Vec<OwnedFd>);

impl Slots {
    fn push(&mut self, fd: OwnedFd) -> FdSlot {
        self.0.push(fd);
        FdSlot((self.0.len() - 1) as u8)
    }
}

/// Opens every resource `cfg` names.
pub fn prepare(cfg: &Config) -> Result<PreparedVm, SetupError> {
    let mut slots = Slots(Vec::new());
    let kvm_path = Path::new("/dev/kvm");
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_path)
        .map_err(|e| SetupError::Open(kvm_path.into(), e))?;
    let kvm = slots.push(kvm.into());
    let memory = match &cfg.memory_backend {
        Some(b) => backend_memory(b)?,
        None => guest_memory(cfg.mem_size)?,
    };
    if cfg.mem_prealloc {
        preallocate(&memory, cfg.mem_size)?;
    }
    let memory = slots.push(memory);
    let kernel = cfg
        .kernel
        .as_deref()
        .map(open_ro)
        .transpose()?
        .map(|f| slots.push(f.into()));
    let initrd = cfg
        .initrd
        .as_deref()
        .map(open_ro)
        .transpose()?
        .map(|f| slots.push(f.into()));
    let mut serial_socket = None;
    let serial = match &cfg.serial {
        SerialSpec::Null => SerialConfig::Null,
        SerialSpec::Stdio => {
            let out = dup_std(std::io::stdout().as_fd())?;
            let inp = dup_std(std::io::stdin().as_fd())?;
            SerialConfig::Stream {
                output: slots.push(out),
                input: Some(slots.push(inp)),
            }
        }
        SerialSpec::File(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| SetupError::Open(p.clone(), e))?;
            SerialConfig::Stream {
                output: slots.push(f.into()),
                input: None,
            }
        }
        SerialSpec::Unix(p) => {
            remove_stale_socket(p);
            let l = UnixListener::bind(p).map_err(|e| SetupError::SerialSocket(p.clone(), e))?;
            serial_socket = Some(p.clone());
            SerialConfig::Listener(slots.push(l.into()))
        }
        SerialSpec::Tcp(_) => {
            let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
            let (server, fd) = crate::chardev::tcp::socket()
                .unwrap_or_else(|| Err(missing()))
                .map_err(|e| SetupError::SerialBackend("tcp", e))?;
            if server {
                let listener = slots.push(fd);
                match crate::chardev::tcp::take_first_client() {
                    Some(c) => SerialConfig::ListenerWithClient {
                        listener,
                        client: slots.push(c),
                    },
                    None => SerialConfig::Listener(listener),
                }
            } else {
                let input = fd
                    .try_clone()
                    .map_err(|e| SetupError::SerialBackend("tcp", e))?;
                SerialConfig::Stream {
                    output: slots.push(fd),
                    input: Some(slots.push(input)),
                }
            }
        }
        SerialSpec::MonStdio => {
            let end = || {
                crate::chardev::mux::guest_end()
                    .unwrap_or_else(|| Err(std::io::Error::from(std::io::ErrorKind::NotFound)))
                    .map_err(|e| SetupError::SerialBackend("mon:stdio", e))
            };
            SerialConfig::Stream {
                output: slots.push(end()?),
                input: Some(slots.push(end()?)),
            }
        }
        SerialSpec::Pty(label) => SerialConfig::Stream {
            output: slots.push(super::serial_pty::master(label)?),
            input: Some(slots.push(super::serial_pty::master(label)?)),
        },
    };
    let config = VmConfig {
        kvm,
        memory,
        mem_size: cfg.mem_size,
        cpus: cfg.cpus,
        topology: cfg.topology,
        kernel,
        initrd,
        cmdline: cfg.append.clone(),
        serial,
        start_paused: cfg.start_paused,
        no_shutdown: cfg.no_shutdown,
        no_reboot: cfg.no_reboot,
        cpu: cfg.cpu.clone(),
        thread_names: cfg.debug_threads,
        no_dump_guest_core: cfg.no_dump_guest_core,
        incoming: cfg.incoming.is_some(),
    };
    Ok(PreparedVm {
        config,
        fds: slots.0,
        serial_socket,
    })
}

fn open_ro(p: &Path) -> Result<File, SetupError> {
    File::open(p).map_err(|e| SetupError::Open(p.to_path_buf(), e))
}

fn dup_std(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, SetupError> {
    fd.try_clone_to_owned()
        .map_err(|e| SetupError::Open("<stdio>".into(), e))
}

/// Creates guest RAM: a memfd of `size` bytes that can be shared with the
/// vhost-user backends, sealed so nobody can shrink it under the guest.
pub fn guest_memory(size: u64) -> Result<OwnedFd, SetupError> {
    let err = |e: nix::Error| SetupError::Memory(size, e.into());
    let fd = memfd_create(
        c"bulkhead-guest-ram",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(err)?;
    nix::unistd::ftruncate(&fd, size as libc::off_t).map_err(err)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(err)?;
    Ok(fd)
}

/// Guest RAM from `-object memory-backend-*` or `-mem-path`: a memfd for
/// `-ram` and `-memfd`; for `-file`, the file `mem-path` names or, if it
/// is a directory, a new unlinked file in it, as QEMU's `file_ram_alloc`:
/// an empty file is sized to the backend; a non-empty one is never
/// truncated nor extended (its contents are the guest's RAM: a restored
/// VM's), and one smaller than the backend is refused.
fn backend_memory(b: &crate::cli::memory_backend::MemoryBackend) -> Result<OwnedFd, SetupError> {
    use crate::cli::memory_backend::BackendKind;
    let BackendKind::File(path) = &b.kind else {
        return guest_memory(b.size);
    };
    let file = if path.is_dir() {
        unlinked_file_in(path)
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    }
    .map_err(|e| SetupError::BackingStore(path.clone(), e))?;
    let len = file
        .metadata()
        .map_err(|e| SetupError::BackingStore(path.clone(), e))?
        .len();
    if len == 0 {
        file.set_len(b.size)
            .map_err(|e| SetupError::Memory(b.size, e))?;
    } else if len < b.size {
        return Err(SetupError::BackingTooSmall {
            id: b.id.clone(),
            len,
            size: b.size,
        });
    }
    Ok(OwnedFd::from(file))
}

/// A new file in `dir`, already unlinked: `O_TMPFILE`, or where the file
/// system has none (older hugetlbfs), a uniquely named file removed at once.
fn unlinked_file_in(dir: &Path) -> std::io::Result<File> {
    let open = |p: &Path, flags: i32, create_new: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(p)
    };
    match open(dir, libc::O_TMPFILE, false) {
        Err(e)
            if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                || e.raw_os_error() == Some(libc::EISDIR) =>
        {
            for n in 0..1000u32 {
                let p = dir.join(format!("bulkhead_back_mem.{}.{n}", std::process::id()));
                match open(&p, 0, true) {
                    Ok(f) => {
                        std::fs::remove_file(&p)?;
                        return Ok(f);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e)
        }
        other => other,
    }
}

/// `-mem-prealloc`: allocates every page of guest RAM now (the file's
/// blocks), so the guest never faults for want of host memory later.
pub fn preallocate(fd: &OwnedFd, size: u64) -> Result<(), SetupError> {
    nix::fcntl::fallocate(
        fd,
        nix::fcntl::FallocateFlags::empty(),
        0,
        size as libc::off_t,
    )
    .map_err(|e| SetupError::Prealloc(e.into()))
}

/// Removes a leftover socket file at `p` (never a regular file).
pub fn remove_stale_socket(p: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(p);
    }
}
