//! Starting a worker process: its executable is found beside the broker's,
//! its end of a socketpair becomes fd 3 (`--control-fd 3`), it gets a
//! parent-death signal so it never outlives the broker, ignores the
//! terminal's SIGINT (the broker handles that and stops the workers in
//! order), and starts with a clean environment.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ipc_proto::WorkerKind;

/// The fd number a worker finds its control socket at.
pub const CONTROL_FD: i32 = 3;

/// The fd number a sandboxed worker finds its death-note pipe at.
pub const DEATH_NOTE_FD: i32 = 4;

/// The unprivileged identity a VM's sandboxed workers run as. Each VM gets
/// its own, so tenants' workers cannot signal or ptrace each other and do
/// not share an `RLIMIT_NPROC` budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxIdentity {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// How a worker is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerSandbox {
    /// Sandboxed as this identity (the default).
    On(SandboxIdentity),
    /// `-sandbox off`: no sandbox (debugging only; the worker warns loudly).
    Off,
}

/// Environment variables passed through to workers; everything else is
/// cleared.
const KEPT_ENV: &[&str] = &[
    "RUST_BACKTRACE",
    "BULKHEAD_LOG",
    "JOURNAL_STREAM",
    ipc_proto::logging::TIMESTAMP_ENV,
];

/// Errors of spawning a worker.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The worker executable does not exist beside the broker.
    #[error("worker executable {0} not found")]
    NotFound(PathBuf),
    /// Creating the socketpair or pidfd, or exec, failed.
    #[error("cannot start {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// A started worker: its pid, a pidfd to watch it, and the broker's end of
/// its control socket. Dropping it kills the process (SIGKILL) and reaps
/// it, so a worker dropped after a failed handshake or replay never stays
/// behind as a zombie.
#[derive(Debug)]
pub struct SpawnedWorker {
    /// What it is.
    pub kind: WorkerKind,
    /// Its pid.
    pub pid: u32,
    /// A pidfd referring to it (readable once it exits).
    pub pidfd: OwnedFd,
    /// The broker's end of the control socket.
    pub control: Option<UnixStream>,
    /// The read end of its death-note pipe (sandboxed workers only): after
    /// the exit, `sandbox::death_note::read_note` names the
    /// forbidden syscall that killed it, if that is how it died.
    pub death_note: Option<OwnedFd>,
}

impl SpawnedWorker {
    /// Sends `sig` to the worker through its pidfd (no pid-reuse race).
    pub fn signal(&self, sig: i32) {
        send_signal(&self.pidfd, sig);
    }
}

impl SpawnedWorker {
    /// Ends the worker in order: waits up to `grace` for it to exit by
    /// itself (its control channel closed), then SIGKILLs it; either way it
    /// is reaped before this returns (bounded by [`KILL_REAP_WAIT`] after
    /// the SIGKILL).
    pub fn stop(self, grace: Duration) {
        if !reap_within(&self.pidfd, grace) {
            tracing::warn!(
                "{} worker (pid {}) did not exit within {grace:?}; killing it",
                self.kind.name(),
                self.pid
            );
        }
        // Drop sends SIGKILL (a no-op once it exited) and reaps.
    }
}

/// How long dropping a worker waits for the kernel to finish a SIGKILLed
/// worker before giving up on reaping it (a task stuck in uninterruptible
/// sleep; the supervisor still reaps it once it exits).
pub const KILL_REAP_WAIT: Duration = Duration::from_secs(5);

impl Drop for SpawnedWorker {
    fn drop(&mut self) {
        send_signal(&self.pidfd, libc::SIGKILL);
        if !reap_within(&self.pidfd, KILL_REAP_WAIT) {
            tracing::error!(
                "{} worker (pid {}) did not die within {KILL_REAP_WAIT:?} of SIGKILL",
                self.kind.name(),
                self.pid
            );
        }
    }
}

/// Waits up to `timeout` for the process behind `pidfd` to exit and reaps
/// it. True once it is gone: reaped here, or already reaped elsewhere (the
/// supervisor).
pub fn reap_within(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd; poll writes only its `revents`.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if rc <= 0 {
            return false;
        }
        match super::supervisor::wait_pidfd(pidfd, libc::WNOHANG) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            // ECHILD: someone else (the supervisor) reaped it first.
            Err(e) => return e.raw_os_error() == Some(libc::ECHILD),
        }
        // Readable but not yet waitable (its last threads still exiting).
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `sig` through `pidfd`; a process that already exited is not an error.
pub fn send_signal(pidfd: &OwnedFd, sig: i32) {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no
    // siginfo and no flags; it touches no memory of ours.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// The directory holding the broker's executable (and so the workers').
pub fn default_worker_dir() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}

type SpawnJob = (
    WorkerKind,
    PathBuf,
    WorkerSandbox,
    SyncSender<Result<SpawnedWorker, SpawnError>>,
);

/// The spawner thread's queue. `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked the child exits, not the process; so every worker is forked
/// by this one thread, which lives as long as the broker.
static SPAWNER: OnceLock<Mutex<Sender<SpawnJob>>> = OnceLock::new();

fn spawner() -> &'static Mutex<Sender<SpawnJob>> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (kind, dir, sandbox, reply) in rx {
                    let _ = reply.send(spawn_here(kind, &dir, sandbox));
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

/// Spawns the `kind` worker from `dir` (on the spawner thread, see
/// [`SPAWNER`]).
pub fn spawn_worker(
    kind: WorkerKind,
    dir: &Path,
    sandbox: WorkerSandbox,
) -> Result<SpawnedWorker, SpawnError> {
    let (tx, rx) = sync_channel(1);
    let gone = || {
        SpawnError::Io(
            dir.join(kind.executable()),
            std::io::Error::other("spawner thread is gone"),
        )
    };
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((kind, dir.to_path_buf(), sandbox, tx))
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

fn spawn_here(
    kind: WorkerKind,
    dir: &Path,
    sandbox: WorkerSandbox,
) -> Result<SpawnedWorker, SpawnError> {
    let exe = dir.join(kind.executable());
    if !exe.is_file() {
        return Err(SpawnError::NotFound(exe));
    }
    let io_err = |e| SpawnError::Io(exe.clone(), e);
    let (ours, theirs) = UnixStream::pair().map_err(io_err)?;
    let theirs_fd = theirs.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let sandboxed = matches!(sandbox, WorkerSandbox::On(_));

    let (note_r, note_w) = if sandboxed {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err(e.into()))?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let note_fd = note_w.as_ref().map_or(-1, |w| w.as_raw_fd());
    let mut cmd = Command::new(&exe);
    cmd.arg("--control-fd").arg(CONTROL_FD.to_string());
    if let WorkerSandbox::On(id) = sandbox {
        cmd.args(
            sandbox::SandboxArgs {
                uid: id.uid,
                gid: id.gid,
                max_fds: sandbox::args::DEFAULT_MAX_FDS,
                max_threads: sandbox::args::DEFAULT_MAX_THREADS,
                death_note_fd: Some(DEATH_NOTE_FD),
                seccomp_log: std::env::var_os("BULKHEAD_SECCOMP_LOG").is_some(),
            }
            .to_args(),
        );
    }
    if sandbox == WorkerSandbox::Off {
        cmd.arg(sandbox::args::NO_SANDBOX_FLAG);
    }
    cmd.env_clear()
        .envs(
            KEPT_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (dup2, fcntl, prctl, signal, getppid,
    // kill) on values captured by copy.
    unsafe {
        cmd.pre_exec(move || child_setup(theirs_fd, note_fd, parent));
    }
    let child = if sandboxed {
        sandbox::namespaces::spawn_in_new_pid_ns(&mut cmd)
    } else {
        cmd.spawn()
    }
    .map_err(io_err)?;
    drop(theirs);
    drop(note_w);
    let pid = child.id();
    // SAFETY: pidfd_open on our own child (not yet reaped: only we reap it,
    // through the pidfd); it returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        // Without a pidfd nothing could watch or reap it: end it here.
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(io_err(err));
    }
    // SAFETY: `raw` is a fresh fd returned by pidfd_open that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    // The Child handle is dropped without waiting: the supervisor reaps
    // through the pidfd.
    drop(child);
    Ok(SpawnedWorker {
        kind,
        pid,
        pidfd,
        control: Some(ours),
        death_note: note_r,
    })
}

/// Runs in the child between fork and exec: only async-signal-safe calls.
fn child_setup(control: i32, note: i32, parent: libc::pid_t) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // Move both out of the way first, so neither target number clobbers
    // the other's source; the copies are close-on-exec.
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an open fd; no memory involved.
    let control_high = unsafe { libc::fcntl(control, libc::F_DUPFD_CLOEXEC, 10) };
    check(control_high)?;
    // SAFETY: dup2 on two fd numbers; clears close-on-exec on the target.
    check(unsafe { libc::dup2(control_high, CONTROL_FD) })?;
    if note >= 0 {
        // SAFETY: as above.
        let note_high = unsafe { libc::fcntl(note, libc::F_DUPFD_CLOEXEC, 10) };
        check(note_high)?;
        // SAFETY: as above.
        check(unsafe { libc::dup2(note_high, DEATH_NOTE_FD) })?;
    }
    let sig = libc::SIGKILL as libc::c_ulong;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) })?;
    // In a new pid namespace the parent is outside it: getppid() is 0.
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if ppid != parent && ppid != 0 {
        // The broker died between fork and prctl.
        // SAFETY: _exit ends this forked child at once, as intended.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: sets SIGINT's disposition to ignore; no handler code involved.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    Ok(())
}
