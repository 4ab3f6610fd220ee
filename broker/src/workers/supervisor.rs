//! Supervision in one place: one thread watches every worker's pidfd,
//! reaps the worker when it exits and hands the exit to the callback that
//! was registered with it (which applies that worker's policy).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use ipc_proto::WorkerKind;
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called exit with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The signal's name (`SIGKILL`), or its number if unknown.
    pub fn signal_name(sig: i32) -> String {
        nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {sig}"))
    }
}

/// What the supervisor reports when a worker exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerExit {
    /// Which worker.
    pub kind: WorkerKind,
    /// Its pid.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
}

type OnExit = Box<dyn FnOnce(WorkerExit) + Send>;

struct Watched {
    kind: WorkerKind,
    pid: u32,
    pidfd: OwnedFd,
    on_exit: OnExit,
}

/// Watches workers and reports their exits.
pub struct Supervisor {
    watched: Mutex<Vec<Watched>>,
    wake: EventFd,
}

impl Supervisor {
    /// Starts the supervisor thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?;
        let sup = Arc::new(Supervisor {
            watched: Mutex::new(Vec::new()),
            wake,
        });
        let s = sup.clone();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || s.run())?;
        Ok(sup)
    }

    /// Watches the worker with `pidfd`; `on_exit` runs (on a fresh thread)
    /// once it has exited and been reaped. The pidfd is duplicated, so the
    /// caller keeps its own for signalling.
    pub fn watch(
        &self,
        kind: WorkerKind,
        pid: u32,
        pidfd: &OwnedFd,
        on_exit: impl FnOnce(WorkerExit) + Send + 'static,
    ) -> std::io::Result<()> {
        let pidfd = pidfd.try_clone()?;
        self.lock().push(Watched {
            kind,
            pid,
            pidfd,
            on_exit: Box::new(on_exit),
        });
        // Wake the poll loop so it watches the new fd too.
        let _ = self.wake.write(1);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            // Only this thread removes entries, so the raw fds stay open
            // while we poll them without holding the lock.
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.wake.as_fd().as_raw_fd())
                .chain(self.lock().iter().map(|w| w.pidfd.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("supervisor poll failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let _ = self.wake.read();
            }
            let ready: Vec<i32> = fds[1..]
                .iter()
                .filter(|f| f.revents != 0)
                .map(|f| f.fd)
                .collect();
            if ready.is_empty() {
                continue;
            }
            let exited: Vec<Watched> = {
                let mut watched = self.lock();
                let (gone, alive) = watched
                    .drain(..)
                    .partition(|w| ready.contains(&w.pidfd.as_raw_fd()));
                *watched = alive;
                gone
            };
            for w in exited {
                let status = reap(&w.pidfd);
                let exit = WorkerExit {
                    kind: w.kind,
                    pid: w.pid,
                    status,
                };
                let on_exit = w.on_exit;
                let spawned = std::thread::Builder::new()
                    .name("worker-exit".into())
                    .spawn(move || on_exit(exit));
                if let Err(e) = spawned {
                    tracing::error!("cannot handle the exit of worker {}: {e}", w.pid);
                }
            }
        }
    }
}

/// `waitid(P_PIDFD, WEXITED | extra_flags)` on `pidfd`: the child's
/// siginfo once it has been reaped, `Ok(None)` when `WNOHANG` found it
/// still running.
pub fn wait_pidfd(pidfd: &OwnedFd, extra_flags: i32) -> std::io::Result<Option<libc::siginfo_t>> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: waitid(P_PIDFD) writes only into `info`, which is large enough.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            info.as_mut_ptr(),
            libc::WEXITED | extra_flags,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded and filled `info` (zeroed before, so fully initialised).
    let info = unsafe { info.assume_init() };
    // SAFETY: siginfo from waitid: si_pid is valid (0 when WNOHANG found
    // nothing to reap).
    let reaped = unsafe { info.si_pid() } != 0;
    Ok(reaped.then_some(info))
}

/// Reaps the process behind `pidfd` and returns how it ended.
fn reap(pidfd: &OwnedFd) -> ExitStatus {
    let Ok(Some(info)) = wait_pidfd(pidfd, 0) else {
        return ExitStatus::Code(-1);
    };
    // SAFETY: for SIGCHLD-style siginfo from waitid, si_status is valid.
    let status = unsafe { info.si_status() };
    if info.si_code == libc::CLD_EXITED {
        ExitStatus::Code(status)
    } else {
        ExitStatus::Signal(status)
    }
}
