//! A worker (block-proc, net-proc) under its IPC control channel, as the
//! broker drives it: spawned on a socketpair with the sandbox on, past the
//! handshake, and a blocking request/reply call that keeps the events
//! arriving meanwhile aside. Its vhost-user side is for the rest of the
//! harness.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};

use ipc_proto::worker::BrokerChannel;
use ipc_proto::{BrokerMsg, FlatError, WorkerKind, WorkerMsg};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{HarnessError, Result};

/// A running worker taking requests `R`, answering `P` and sending events
/// `E`, with the broker's end of its control channel; killed on drop.
pub struct ControlledWorker<R, P, E> {
    /// The worker process.
    pub child: Child,
    /// The broker's end of the control channel.
    pub chan: BrokerChannel<R, P, E>,
    /// The id of the next request.
    pub next: u64,
    /// Events received while waiting for replies.
    pub events: Vec<E>,
}

impl<R, P, E> Drop for ControlledWorker<R, P, E> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl<R: Serialize, P: DeserializeOwned, E: DeserializeOwned> ControlledWorker<R, P, E> {
    /// Starts `bin --control-fd N --sandbox-uid UID` (sandboxed as under
    /// the broker, which needs root) on a socketpair and completes the
    /// handshake as the broker of a worker of `kind`.
    pub fn spawn(bin: &Path, kind: WorkerKind, sandbox_uid: u32) -> Result<Self> {
        let (broker, worker) = UnixStream::pair()?;
        // The worker's end stays open across exec.
        nix::fcntl::fcntl(
            &worker,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(std::io::Error::from)?;
        let mut child = Command::new(bin)
            .arg("--control-fd")
            .arg(worker.as_raw_fd().to_string())
            .args(["--sandbox-uid", &sandbox_uid.to_string()])
            .spawn()?;
        drop(worker);
        let (chan, hello) = match ipc_proto::worker::accept(broker, kind) {
            Ok(accepted) => accepted,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Handshake(e));
            }
        };
        let w = ControlledWorker {
            child,
            chan,
            next: 1,
            events: Vec::new(),
        };
        if hello.pid != w.child.id() {
            return Err(HarnessError::WorkerAnswer(format!(
                "the handshake came from pid {}, not from the worker {}",
                hello.pid,
                w.child.id()
            )));
        }
        Ok(w)
    }

    /// Sends `body` with `fds` and waits for its reply, keeping the events
    /// that come first in [`ControlledWorker::events`]; the outer error is
    /// the channel's (or a reply to another request), the inner one the
    /// worker's answer.
    pub fn call(
        &mut self,
        body: R,
        fds: &[BorrowedFd<'_>],
    ) -> Result<std::result::Result<P, FlatError>> {
        let id = self.next;
        self.next += 1;
        self.chan
            .send(&BrokerMsg::Request { id, body }, fds)
            .map_err(HarnessError::Control)?;
        loop {
            match self.chan.recv().map_err(HarnessError::Control)?.0 {
                WorkerMsg::Reply { id: got, result } if got == id => return Ok(result),
                WorkerMsg::Reply { id: got, .. } => {
                    return Err(HarnessError::WorkerAnswer(format!(
                        "reply to request {got} while waiting for {id}"
                    )))
                }
                WorkerMsg::Event(e) => self.events.push(e),
            }
        }
    }
}

/// Declares a test crate's worker type `NAME`: a newtype over
/// [`ControlledWorker`]`<REQUEST, REPLY, EVENT>` that derefs to it (its
/// `child`, `chan`, `events`), so that the crate can add its own requests
/// as methods, with a `call` that fails the test if the control channel
/// does. The crate using it depends on `ipc-proto`.
#[macro_export]
macro_rules! controlled_worker {
    ($(#[$meta:meta])* $name:ident, $req:ty, $reply:ty, $event:ty) => {
        $(#[$meta])*
        pub struct $name(pub $crate::worker::ControlledWorker<$req, $reply, $event>);

        impl ::std::ops::Deref for $name {
            type Target = $crate::worker::ControlledWorker<$req, $reply, $event>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }

        impl $name {
            /// Sends `body` with `fds` and waits for its reply, keeping
            /// the events that come first in `events`; panics if the
            /// control channel fails.
            pub fn call(
                &mut self,
                body: $req,
                fds: &[::std::os::fd::BorrowedFd<'_>],
            ) -> ::std::result::Result<$reply, ::ipc_proto::FlatError> {
                self.0.call(body, fds).expect("the worker's control channel")
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_never_says_hello_is_a_handshake_error() {
        let r =
            ControlledWorker::<u8, u8, u8>::spawn(Path::new("/bin/true"), WorkerKind::Block, 61002);
        assert!(matches!(r, Err(HarnessError::Handshake(_))));
    }

    #[test]
    fn a_missing_program_is_an_io_error() {
        let bin = Path::new("/nonexistent/block-proc");
        let r = ControlledWorker::<u8, u8, u8>::spawn(bin, WorkerKind::Block, 61002);
        assert!(matches!(r, Err(HarnessError::Io(_))));
    }
}
