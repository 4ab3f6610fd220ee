//! The worker sandbox: what every worker applies to itself after its
//! handshake and before it touches guest-controlled data, so that it holds
//! no authority beyond the fds it was given.
//!
//! [`enter`] runs, in this order (each step needs the privileges the
//! previous ones still hold):
//! 1. new mount, ipc, uts and net namespaces; the worker is put in
//!    a fresh pid namespace by the broker's spawner (see
//!    [`namespaces::spawn_in_new_pid_ns`]), as a process cannot move itself;
//! 2. the root pivoted into an empty, read-only tmpfs;
//! 3. rlimits: no core files, bounded fds and threads;
//! 4. capabilities: bounding and ambient sets cleared, securebits locked,
//!    then the per-VM non-root uid/gid, then every remaining capability set
//!    emptied and checked; the parent-death signal (cleared by the kernel
//!    on the uid change) is set again;
//! 5. `no_new_privs`;
//! 6. a Landlock ruleset that handles every filesystem and network access
//!    right and allows none, and scopes signals and abstract sockets;
//! 7. the worker kind's seccomp allowlist (compiled once, in [`prepare`]),
//!    installed on every thread. A forbidden syscall traps into a handler
//!    that writes a [`death_note`] for the broker and kills the worker with
//!    SIGSYS.
//!
//! Modules: [`args`] (the worker command-line flags), [`namespaces`],
//! [`privileges`], [`lsm`] (Landlock), [`seccomp`] and its [`rules`],
//! [`death_note`], [`syscall_names`], and with the test-only feature
//! `sandbox-test-hooks`, [`escape`].

pub mod args;
pub mod death_note;
#[cfg(feature = "test-hooks")]
pub mod escape;
pub mod lsm;
pub mod namespaces;
pub mod privileges;
pub mod rules;
pub mod seccomp;
pub mod syscall_names;

use std::os::fd::RawFd;

use ipc_proto::WorkerKind;

pub use args::{Sandbox, SandboxArgs};
pub use death_note::DeathNote;

/// Errors of entering the sandbox. Every one is fatal for the worker: it
/// must not serve without the sandbox it was asked to enter.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A sandbox flag on the command line is malformed.
    #[error("invalid sandbox argument {0}")]
    BadArgument(String),
    /// The sandbox needs root (the broker starts workers as root).
    #[error("the sandbox needs root privileges (run the broker as root or use -sandbox off)")]
    NotRoot,
    /// The per-VM uid or gid is root.
    #[error("the sandbox uid/gid must not be 0")]
    RootTarget,
    /// Entering must happen while the worker has a single thread.
    #[error("the sandbox must be entered before any thread starts ({0} threads running)")]
    Threaded(usize),
    /// A system call of the sandbox set-up failed.
    #[error("sandbox step '{0}' failed")]
    Sys(&'static str, #[source] std::io::Error),
    /// A capability remained after dropping them all.
    #[error("capabilities remain after dropping them: {0}")]
    CapsRemain(String),
    /// The Landlock ruleset could not be built or enforced.
    #[error("Landlock")]
    Landlock(#[source] ::landlock::RulesetError),
    /// The seccomp filter could not be compiled or installed.
    #[error("seccomp")]
    Seccomp(#[source] ::seccompiler::Error),
    /// The seccomp filter could not be built from the rules.
    #[error("seccomp rules")]
    SeccompRules(#[source] ::seccompiler::BackendError),
}

/// Result of sandbox operations.
pub type Result<T> = std::result::Result<T, SandboxError>;

impl SandboxError {
    pub(crate) fn last_os(step: &'static str) -> Self {
        SandboxError::Sys(step, std::io::Error::last_os_error())
    }
}

/// What seccomp does with a syscall outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Trap: the worker dies with SIGSYS and leaves a death note.
    Enforce,
    /// Allow but log to the kernel's audit log: for discovering the
    /// syscalls a worker needs (`--seccomp-log`; never in production).
    Log,
    /// No seccomp filter at all (test hooks only: shows that the other
    /// layers stop escapes on their own).
    #[cfg(feature = "test-hooks")]
    Off,
}

/// Everything [`enter`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Which worker: selects its seccomp allowlist.
    pub kind: WorkerKind,
    /// The per-VM unprivileged uid the worker runs as.
    pub uid: u32,
    /// The per-VM unprivileged gid the worker runs as.
    pub gid: u32,
    /// `RLIMIT_NOFILE`.
    pub max_fds: u64,
    /// `RLIMIT_NPROC`: counts the threads of every process of the uid, so
    /// size it for all the VM's workers (vCPUs + queues + a few).
    pub max_threads: u64,
    /// Seccomp's mismatch action.
    pub seccomp: SeccompMode,
    /// The write end of the broker's death-note pipe, if any.
    pub death_note_fd: Option<RawFd>,
}

/// How the sandbox was applied (for the worker's start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// Landlock's enforcement.
    pub landlock: lsm::LandlockOutcome,
    /// Seccomp's mismatch action.
    pub seccomp: SeccompMode,
}

/// A sandbox ready to enter: the configuration and the seccomp filter,
/// compiled once before the handshake.
#[derive(Debug)]
pub struct Prepared {
    config: SandboxConfig,
    filters: seccomp::CompiledFilters,
}

impl Prepared {
    /// The configuration this sandbox applies.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }
}

/// Checks `config` and compiles its seccomp filter.
pub fn prepare(config: SandboxConfig) -> Result<Prepared> {
    if config.uid == 0 || config.gid == 0 {
        return Err(SandboxError::RootTarget);
    }
    let filters = seccomp::compile(config.kind, config.seccomp)?;
    Ok(Prepared { config, filters })
}

/// Enters the sandbox; see the module documentation for the steps. Must
/// run while the process has a single thread.
pub fn enter(prepared: Prepared) -> Result<SandboxReport> {
    let cfg = &prepared.config;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(SandboxError::NotRoot);
    }
    let threads = namespaces::thread_count()?;
    if threads != 1 {
        return Err(SandboxError::Threaded(threads));
    }
    namespaces::unshare_all(cfg.kind)?;
    namespaces::pivot_to_empty_root()?;
    privileges::set_rlimits(cfg.max_fds, cfg.max_threads)?;
    privileges::drop_to(cfg.uid, cfg.gid)?;
    privileges::rearm_parent_death_signal()?;
    privileges::set_no_new_privs()?;
    privileges::bound_malloc_arenas();
    let landlock = lsm::restrict_all()?;
    seccomp::install(&prepared.filters, cfg.death_note_fd)?;
    Ok(SandboxReport {
        landlock,
        seccomp: cfg.seccomp,
    })
}
