//! The backend→frontend channel of one session
//! (`VHOST_USER_PROTOCOL_F_BACKEND_REQ`), as QEMU's frontend has it: a
//! socket pair whose far end goes to the backend with
//! `SET_BACKEND_REQ_FD`, served by a thread of its own with the `vhost`
//! crate's [`FrontendReqHandler`]. The backend sends
//! `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` on it when its config space
//! changed (a resized disk); the session then fetches the config space
//! again (GET_CONFIG, on the session thread) and hands it to the device
//! through its [`ConfigSink`], which raises the guest's config-change
//! interrupt.
//!
//! A backend that does not offer BACKEND_REQ gets no channel and works as
//! before (it is then noticed only on a reconnect or a driver start).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::thread::JoinHandle;

use ipc_proto::{trace_point, warn_limited};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

use super::vhost_user::{Connection, VhostUserError};
use crate::trace;

/// Errors of opening the channel.
#[derive(Debug, thiserror::Error)]
pub enum BackendReqError {
    /// The socket pair could not be made.
    #[error("cannot create the backend request channel")]
    Pair(#[source] vhost::vhost_user::Error),
    /// A socket or the thread could not be set up.
    #[error("cannot set up the backend request channel")]
    Io(#[source] std::io::Error),
    /// The backend refused SET_BACKEND_REQ_FD.
    #[error("backend request channel")]
    Request(#[source] VhostUserError),
}

type Deliver = Box<dyn FnMut(Vec<u8>) + Send>;

/// Where a session delivers a config space the backend announced: the
/// device connects to it once it exists; a delivery before that is kept
/// and handed over on connection.
#[derive(Default)]
pub struct ConfigSink {
    state: Mutex<(Option<Deliver>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for ConfigSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSink")
    }
}

impl ConfigSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Deliver>, Option<Vec<u8>>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, fresh config spaces go to `deliver` (with the one
    /// that came before, if any).
    pub fn connect(&self, mut deliver: impl FnMut(Vec<u8>) + Send + 'static) {
        let mut st = self.lock();
        if let Some(missed) = st.1.take() {
            deliver(missed);
        }
        st.0 = Some(Box::new(deliver));
    }

    /// Hands `fresh` to the device (or keeps it until one connects).
    pub fn deliver(&self, fresh: Vec<u8>) {
        let mut st = self.lock();
        match st.0.as_mut() {
            Some(d) => d(fresh),
            None => st.1 = Some(fresh),
        }
    }
}

/// What a backend request does in this frontend.
struct Handler {
    on_config_change: Box<dyn Fn() + Send + Sync>,
}

impl VhostUserFrontendReqHandler for Handler {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        trace_point!(trace::vhost_user_frontend_msg("CONFIG_CHANGE_MSG", true));
        // Only queued: the GET_CONFIG runs on the session thread, so a
        // backend waiting for our REPLY_ACK is answered at once.
        (self.on_config_change)();
        Ok(0)
    }
}

/// A live backend request channel; dropping it stops its thread.
#[derive(Debug)]
pub struct BackendChannel {
    /// A second handle on our end, shut down to end the thread.
    ours: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl BackendChannel {
    /// Makes the channel, hands its far end to the backend on `conn`
    /// (SET_BACKEND_REQ_FD) and serves it on a thread: each
    /// CONFIG_CHANGE_MSG calls `on_config_change`.
    pub fn open(
        conn: &mut Connection,
        id: &str,
        on_config_change: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, BackendReqError> {
        let handler = std::sync::Arc::new(Handler {
            on_config_change: Box::new(on_config_change),
        });
        let mut server = FrontendReqHandler::new(handler).map_err(BackendReqError::Pair)?;
        // A request with NEED_REPLY is answered, as QEMU does.
        server.set_reply_ack_flag(true);
        // SAFETY: the handler owns this fd and outlives the borrow.
        let ours = unsafe { BorrowedFd::borrow_raw(server.as_raw_fd()) }
            .try_clone_to_owned()
            .map(UnixStream::from)
            .map_err(BackendReqError::Io)?;
        // SAFETY: as above, for the far end the handler keeps open.
        let far = unsafe { BorrowedFd::borrow_raw(server.get_tx_raw_fd()) };
        conn.set_backend_req_fd(&far)
            .map_err(BackendReqError::Request)?;
        let name = id.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("vu-backend-req-{id}"))
            .spawn(move || serve(&mut server, &name))
            .map_err(BackendReqError::Io)?;
        Ok(BackendChannel {
            ours,
            thread: Some(thread),
        })
    }
}

fn serve(server: &mut FrontendReqHandler<Handler>, id: &str) {
    loop {
        let Err(e) = server.handle_request() else {
            continue;
        };
        // Our own shutdown (the session ended) reads as EOF.
        let eof = matches!(e, vhost::vhost_user::Error::Disconnected);
        let e = VhostUserError::Request {
            op: "backend request",
            source: vhost::Error::VhostUserProtocol(e),
        };
        if eof {
            return;
        }
        warn_limited!("vhost-user device {id}: {}", super::device::error_chain(&e));
        if e.connection_lost() {
            return;
        }
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        let _ = self.ours.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_config_space_delivered_before_the_device_connects_is_handed_over() {
        let sink = ConfigSink::default();
        sink.deliver(vec![1, 2]);
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        sink.connect(move |c| g.lock().unwrap().push(c));
        sink.deliver(vec![3]);
        assert_eq!(*got.lock().unwrap(), vec![vec![1, 2], vec![3]]);
    }
}
