//! The worker side of start-up: the broker spawns each worker with its end
//! of a socketpair as an inherited fd named by `--control-fd N`; the worker
//! takes ownership of it, says [`Hello`](crate::handshake::Hello) and waits
//! for the broker's acceptance. The broker also sets a parent-death signal
//! before exec, and a closed control socket ends the worker, so no worker
//! outlives its broker.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Channel;
use crate::codec;
use crate::envelope::{BrokerMsg, WorkerMsg};
use crate::frame;
use crate::handshake::{Hello, HelloReply, WorkerKind, PROTOCOL_VERSION};

/// The command-line flag naming the inherited control fd.
pub const CONTROL_FD_FLAG: &str = "--control-fd";

/// Errors of worker start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `--control-fd N` is missing or malformed.
    #[error("missing or invalid {CONTROL_FD_FLAG} argument")]
    NoControlFd,
    /// The named fd is not an open socket.
    #[error("control fd {0} is not an open socket")]
    BadControlFd(RawFd),
    /// The handshake could not be sent or received.
    #[error("handshake failed")]
    Channel(#[from] crate::channel::ChannelError),
    /// The broker refused this worker.
    #[error("broker refused the worker: {0}")]
    Refused(String),
}

/// Result of start-up operations.
pub type Result<T> = std::result::Result<T, StartupError>;

/// The worker's end of its control channel.
pub type WorkerChannel<R, P, E> = Channel<WorkerMsg<P, E>, BrokerMsg<R>>;

/// The broker's end of a worker's control channel.
pub type BrokerChannel<R, P, E> = Channel<BrokerMsg<R>, WorkerMsg<P, E>>;

/// Finds `--control-fd N` in `args` and takes ownership of that fd.
pub fn control_fd_from_args<I: IntoIterator<Item = String>>(args: I) -> Result<OwnedFd> {
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let value = if a == CONTROL_FD_FLAG {
            it.next()
        } else {
            a.strip_prefix(CONTROL_FD_FLAG)
                .and_then(|v| v.strip_prefix('='))
                .map(str::to_owned)
        };
        if let Some(v) = value {
            let fd: RawFd = v.parse().map_err(|_| StartupError::NoControlFd)?;
            return take_socket_fd(fd);
        }
    }
    Err(StartupError::NoControlFd)
}

fn take_socket_fd(fd: RawFd) -> Result<OwnedFd> {
    if fd < 3 {
        return Err(StartupError::BadControlFd(fd));
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes into `st`, which is large enough.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return Err(StartupError::BadControlFd(fd));
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(StartupError::BadControlFd(fd));
    }
    // SAFETY: the broker gave this fd to us alone (it is our inherited end of
    // a socketpair) and nothing else in this process has taken ownership.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Performs the handshake on `fd` as a worker of `kind` and returns the
/// typed channel.
pub fn connect<R, P, E>(kind: WorkerKind, fd: OwnedFd) -> Result<WorkerChannel<R, P, E>>
where
    R: DeserializeOwned,
    P: Serialize,
    E: Serialize,
{
    let sock = UnixStream::from(fd);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        kind,
        pid: std::process::id(),
    };
    let bytes = codec::encode(&hello).map_err(crate::channel::ChannelError::from)?;
    frame::send_frame(&sock, &bytes, &[]).map_err(crate::channel::ChannelError::from)?;
    let (reply, _) = frame::recv_frame(&sock).map_err(crate::channel::ChannelError::from)?;
    match codec::decode::<HelloReply>(&reply).map_err(crate::channel::ChannelError::from)? {
        HelloReply::Accepted { .. } => Ok(Channel::new(sock)),
        HelloReply::Refused { reason } => Err(StartupError::Refused(reason)),
    }
}

/// The broker side of the handshake: reads the worker's [`Hello`], checks
/// it against `expected`, answers, and returns the typed channel and the
/// hello. A refused worker gets its reason before the error returns.
pub fn accept<R, P, E>(
    sock: UnixStream,
    expected: WorkerKind,
) -> Result<(BrokerChannel<R, P, E>, Hello)>
where
    R: Serialize,
    P: DeserializeOwned,
    E: DeserializeOwned,
{
    let (bytes, _) = frame::recv_frame(&sock).map_err(crate::channel::ChannelError::from)?;
    let hello: Hello = codec::decode(&bytes).map_err(crate::channel::ChannelError::from)?;
    let reply = crate::handshake::check_hello(&hello, expected);
    let out = codec::encode(&reply).map_err(crate::channel::ChannelError::from)?;
    frame::send_frame(&sock, &out, &[]).map_err(crate::channel::ChannelError::from)?;
    match reply {
        HelloReply::Accepted { .. } => Ok((Channel::new(sock), hello)),
        HelloReply::Refused { reason } => Err(StartupError::Refused(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_accepts_matching_worker() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            accept::<u8, u8, u8>(a, WorkerKind::Vcpu).map(|(_, h)| h.kind)
        });
        let ch = connect::<u8, u8, u8>(WorkerKind::Vcpu, OwnedFd::from(b));
        assert!(ch.is_ok());
        assert_eq!(t.join().unwrap().unwrap(), WorkerKind::Vcpu);
    }

    #[test]
    fn handshake_refuses_wrong_kind() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || accept::<u8, u8, u8>(a, WorkerKind::Block).is_err());
        let ch = connect::<u8, u8, u8>(WorkerKind::Net, OwnedFd::from(b));
        assert!(matches!(ch, Err(StartupError::Refused(_))));
        assert!(t.join().unwrap());
    }

    #[test]
    fn control_fd_argument_is_required() {
        let r = control_fd_from_args(vec!["worker".to_string()]);
        assert!(matches!(r, Err(StartupError::NoControlFd)));
    }

    #[test]
    fn control_fd_must_be_a_socket() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::IntoRawFd;
        let raw = f.into_raw_fd();
        let r = control_fd_from_args(vec![CONTROL_FD_FLAG.to_string(), raw.to_string()]);
        assert!(matches!(r, Err(StartupError::BadControlFd(_))));
        // SAFETY: `raw` came from into_raw_fd above and was not taken.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
}
