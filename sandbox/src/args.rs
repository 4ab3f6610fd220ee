//! The sandbox's worker command-line flags, written by the broker with
//! [`SandboxArgs::to_args`] and read by the worker with
//! [`Sandbox::from_args`]:
//!
//! - `--no-sandbox`: run without the sandbox (`-sandbox off`, debugging);
//! - `--sandbox-uid N`, `--sandbox-gid N`: the per-VM unprivileged ids;
//! - `--sandbox-max-fds N`, `--sandbox-max-threads N`: rlimits;
//! - `--death-note-fd N`: the write end of the death-note pipe;
//! - `--seccomp-log`: log instead of trap (syscall discovery only).

use std::os::fd::RawFd;

use super::death_note::DEATH_NOTE_FD_FLAG;
use super::{prepare, Prepared, Result, SandboxConfig, SandboxError, SandboxReport, SeccompMode};
use ipc_proto::WorkerKind;

/// `--no-sandbox`.
pub const NO_SANDBOX_FLAG: &str = "--no-sandbox";
const UID_FLAG: &str = "--sandbox-uid";
const GID_FLAG: &str = "--sandbox-gid";
const MAX_FDS_FLAG: &str = "--sandbox-max-fds";
const MAX_THREADS_FLAG: &str = "--sandbox-max-threads";
const SECCOMP_LOG_FLAG: &str = "--seccomp-log";

/// Every flag of this module that takes a value (for workers' own argument
/// parsers to skip).
pub const VALUE_FLAGS: &[&str] = &[
    UID_FLAG,
    GID_FLAG,
    MAX_FDS_FLAG,
    MAX_THREADS_FLAG,
    DEATH_NOTE_FD_FLAG,
];

/// Every flag of this module that takes no value.
pub const SWITCH_FLAGS: &[&str] = &[NO_SANDBOX_FLAG, SECCOMP_LOG_FLAG];

/// Default `RLIMIT_NOFILE`.
pub const DEFAULT_MAX_FDS: u64 = 1024;
/// Default `RLIMIT_NPROC` (tasks of the VM's uid across its workers).
pub const DEFAULT_MAX_THREADS: u64 = 256;

/// What the broker tells a worker about its sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxArgs {
    /// Per-VM uid.
    pub uid: u32,
    /// Per-VM gid.
    pub gid: u32,
    /// `RLIMIT_NOFILE`.
    pub max_fds: u64,
    /// `RLIMIT_NPROC`.
    pub max_threads: u64,
    /// Write end of the death-note pipe as numbered in the worker.
    pub death_note_fd: Option<RawFd>,
    /// Log instead of trap.
    pub seccomp_log: bool,
}

impl SandboxArgs {
    /// The worker command-line flags for these settings.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec![
            UID_FLAG.to_owned(),
            self.uid.to_string(),
            GID_FLAG.to_owned(),
            self.gid.to_string(),
            MAX_FDS_FLAG.to_owned(),
            self.max_fds.to_string(),
            MAX_THREADS_FLAG.to_owned(),
            self.max_threads.to_string(),
        ];
        if let Some(fd) = self.death_note_fd {
            out.push(DEATH_NOTE_FD_FLAG.to_owned());
            out.push(fd.to_string());
        }
        if self.seccomp_log {
            out.push(SECCOMP_LOG_FLAG.to_owned());
        }
        out
    }
}

/// The sandbox a worker was asked for, ready to enter.
#[derive(Debug)]
pub enum Sandbox {
    /// `--no-sandbox`: entering only warns, loudly.
    Disabled(WorkerKind),
    /// The sandbox, its seccomp filter compiled.
    Enabled(Box<Prepared>),
}

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

fn number<T: std::str::FromStr>(args: &[String], flag: &str) -> Result<Option<T>> {
    value(args, flag)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| SandboxError::BadArgument(format!("{flag} {v}")))
        })
        .transpose()
}

impl Sandbox {
    /// Reads the sandbox flags from the worker's arguments and compiles the
    /// seccomp filter. Call before the handshake.
    pub fn from_args(kind: WorkerKind, args: &[String]) -> Result<Self> {
        if args.iter().any(|a| a == NO_SANDBOX_FLAG) {
            return Ok(Sandbox::Disabled(kind));
        }
        let uid = number::<u32>(args, UID_FLAG)?
            .ok_or_else(|| SandboxError::BadArgument(format!("{UID_FLAG} is required")))?;
        let gid = number::<u32>(args, GID_FLAG)?.unwrap_or(uid);
        let death_note_fd = number::<RawFd>(args, DEATH_NOTE_FD_FLAG)?;
        if death_note_fd.is_some_and(|fd| fd < 3) {
            return Err(SandboxError::BadArgument(format!(
                "{DEATH_NOTE_FD_FLAG} must be 3 or above"
            )));
        }
        let config = SandboxConfig {
            kind,
            uid,
            gid,
            max_fds: number(args, MAX_FDS_FLAG)?.unwrap_or(DEFAULT_MAX_FDS),
            max_threads: number(args, MAX_THREADS_FLAG)?.unwrap_or(DEFAULT_MAX_THREADS),
            seccomp: if args.iter().any(|a| a == SECCOMP_LOG_FLAG) {
                SeccompMode::Log
            } else {
                SeccompMode::Enforce
            },
            death_note_fd,
        };
        Ok(Sandbox::Enabled(Box::new(prepare(config)?)))
    }

    /// Enters the sandbox (or warns that there is none). `None` when
    /// disabled.
    pub fn enter(self) -> Result<Option<SandboxReport>> {
        match self {
            Sandbox::Disabled(kind) => {
                eprintln!(
                    "bulkhead: WARNING: the {} worker runs WITHOUT its sandbox \
                     (-sandbox off): no namespaces, no seccomp, full privileges",
                    kind.name()
                );
                Ok(None)
            }
            Sandbox::Enabled(p) => super::enter(*p).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_sandbox_flag_disables() {
        let s = Sandbox::from_args(WorkerKind::Net, &strings(&["x", "--no-sandbox"])).unwrap();
        assert!(matches!(s, Sandbox::Disabled(WorkerKind::Net)));
    }

    #[test]
    fn to_args_round_trips_through_from_args() {
        let a = SandboxArgs {
            uid: 61000,
            gid: 61001,
            max_fds: 77,
            max_threads: 33,
            death_note_fd: Some(4),
            seccomp_log: true,
        };
        let s = Sandbox::from_args(WorkerKind::Block, &a.to_args()).unwrap();
        let Sandbox::Enabled(p) = s else {
            panic!("sandbox disabled")
        };
        let c = p.config();
        assert_eq!(
            (c.uid, c.gid, c.max_fds, c.max_threads),
            (61000, 61001, 77, 33)
        );
        assert_eq!(c.death_note_fd, Some(4));
        assert_eq!(c.seccomp, SeccompMode::Log);
    }

    #[test]
    fn missing_uid_is_an_error() {
        let r = Sandbox::from_args(WorkerKind::Vcpu, &strings(&["x"]));
        assert!(matches!(r, Err(SandboxError::BadArgument(_))));
    }

    #[test]
    fn root_uid_is_refused() {
        let r = Sandbox::from_args(WorkerKind::Vcpu, &strings(&["--sandbox-uid", "0"]));
        assert!(matches!(r, Err(SandboxError::RootTarget)));
    }

    #[test]
    fn malformed_number_is_an_error() {
        let r = Sandbox::from_args(WorkerKind::Vcpu, &strings(&["--sandbox-uid=abc"]));
        assert!(matches!(r, Err(SandboxError::BadArgument(_))));
    }
}
