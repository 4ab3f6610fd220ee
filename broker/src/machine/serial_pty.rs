//! `-serial pty` / `-chardev pty`: the broker opens a pseudo-terminal pair
//! once, keeps both ends for the broker's life (a second `prepare` gets
//! the same `/dev/pts/N`), and gives vcpu-proc the master as the serial's
//! byte stream; a user opens the slave, as with QEMU, which prints
//! `char device redirected to /dev/pts/N (label X)` on stderr.
//!
//! The master is non-blocking: guest output no user reads is dropped
//! rather than stalling the vCPU (QEMU drops it too); vcpu-proc's input
//! pump polls. The broker's own slave fd, in raw mode, keeps the master
//! readable while no user has the terminal open (no EIO) and keeps the
//! line discipline from echoing guest output back as input.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// Why the pty could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// A step of opening the pair failed.
    #[error("could not open a pty ({0})")]
    Open(&'static str, #[source] nix::Error),
}

/// The open pair and the slave's path.
struct Pty {
    master: OwnedFd,
    _slave: OwnedFd,
    path: PathBuf,
}

static PTY: OnceLock<Pty> = OnceLock::new();

/// The master (a new fd each call), opening the pair and printing QEMU's
/// line for `label` on first use.
pub fn master(label: &str) -> Result<OwnedFd, PtyError> {
    let pty = match PTY.get() {
        Some(p) => p,
        None => {
            let p = open()?;
            eprintln!(
                "char device redirected to {} (label {label})",
                p.path.display()
            );
            PTY.get_or_init(|| p)
        }
    };
    pty.master
        .try_clone()
        .map_err(|e| PtyError::Open("dup", nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))
}

/// The slave's path, once the pty is open.
pub fn path() -> Option<PathBuf> {
    PTY.get().map(|p| p.path.clone())
}

fn open() -> Result<Pty, PtyError> {
    let e = |what| move |err| PtyError::Open(what, err);
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).map_err(e("posix_openpt"))?;
    grantpt(&master).map_err(e("grantpt"))?;
    unlockpt(&master).map_err(e("unlockpt"))?;
    let path = PathBuf::from(ptsname_r(&master).map_err(e("ptsname"))?);
    let slave: OwnedFd = nix::fcntl::open(
        &path,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(e("open slave"))?;
    let mut t = tcgetattr(slave.as_fd()).map_err(e("tcgetattr"))?;
    cfmakeraw(&mut t);
    tcsetattr(slave.as_fd(), SetArg::TCSANOW, &t).map_err(e("tcsetattr"))?;
    let master: OwnedFd = master.into();
    fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(e("O_NONBLOCK"))?;
    fcntl(&master, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(e("cloexec"))?;
    Ok(Pty {
        master,
        _slave: slave,
        path,
    })
}
