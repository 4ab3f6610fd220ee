//! The QMP monitors' listening sockets: bound from a path, or taken over
//! from an inherited fd (`-chardev socket,fd=N,server=on`, as libvirt
//! passes them); with `wait=on` (QEMU's default for a server) the first
//! client is accepted here, before the VM starts, as QEMU does.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use crate::cli::{MonitorSocket, MonitorSpec};
use crate::machine::vm_setup;
use crate::qmp::server::QmpListener;

/// Errors of setting up a monitor socket.
#[derive(Debug, thiserror::Error)]
pub enum MonitorSocketError {
    /// Binding a path failed.
    #[error("cannot listen on QMP socket '{0}'")]
    Bind(PathBuf, #[source] std::io::Error),
    /// `fd=N` is not an open listening Unix socket.
    #[error("chardev: socket: fd={0} is not a listening Unix socket")]
    BadFd(i32),
    /// Waiting for the first client failed.
    #[error("waiting for a QMP client")]
    Accept(#[source] std::io::Error),
}

/// Binds (or takes over) every monitor socket; waits for the first client
/// of each `wait=on` one. On error, the socket files made so far are
/// removed.
pub fn bind_all(specs: &[MonitorSpec]) -> Result<Vec<QmpListener>, MonitorSocketError> {
    let mut out: Vec<QmpListener> = Vec::new();
    for spec in specs {
        match open(spec) {
            Ok(l) => out.push(l),
            Err(e) => {
                for p in out.iter().filter_map(|l| l.path.as_ref()) {
                    vm_setup::remove_stale_socket(p);
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn open(spec: &MonitorSpec) -> Result<QmpListener, MonitorSocketError> {
    let (listener, path) = match &spec.socket {
        MonitorSocket::Path(p) => {
            vm_setup::remove_stale_socket(p);
            let l = UnixListener::bind(p).map_err(|e| MonitorSocketError::Bind(p.clone(), e))?;
            (l, Some(p.clone()))
        }
        MonitorSocket::Fd(fd) => (inherited_listener(*fd)?, None),
    };
    let first = if spec.wait {
        let what = match &spec.socket {
            MonitorSocket::Path(p) => format!("unix:{},server=on", p.display()),
            MonitorSocket::Fd(fd) => format!("fd={fd},server=on"),
        };
        eprintln!("bulkhead: info: waiting for connection on: disconnected:{what}");
        let accepted = listener.accept().map_err(MonitorSocketError::Accept);
        match accepted {
            Ok((s, _)) => Some(s),
            Err(e) => {
                if let Some(p) = &path {
                    vm_setup::remove_stale_socket(p);
                }
                return Err(e);
            }
        }
    } else {
        None
    };
    Ok(QmpListener {
        listener,
        path,
        first,
    })
}

/// Takes over inherited fd `fd` if it is a listening Unix stream socket.
fn inherited_listener(fd: i32) -> Result<UnixListener, MonitorSocketError> {
    let bad = || MonitorSocketError::BadFd(fd);
    if fd < 3 {
        return Err(bad());
    }
    let get = |opt: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`; a bad fd
        // only makes it fail.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    if get(libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || get(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || get(libc::SO_ACCEPTCONN) != Some(1)
    {
        return Err(bad());
    }
    // SAFETY: `fd` is an open listening socket (checked above) that was
    // inherited for this purpose; nothing else in the broker owns it
    // (`-add-fd` fds are moved into fd sets and closed first).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(UnixListener::from(owned))
}
