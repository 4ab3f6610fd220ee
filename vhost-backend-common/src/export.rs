//! One vhost-user export: a thread that serves one frontend connection at
//! a time with a [`VhostBackend`] and, when it ends, takes the next.
//!
//! Where connections come from ([`Source`]):
//! - under the broker, only from [`Export::attach`]: the broker hands over
//!   one end of a socketpair per connection, so there is no socket anyone
//!   else could connect to. A connection attached while another is served
//!   waits until that one ends (the frontend drops its old connection
//!   before it uses a new one); of several waiting, only the newest is
//!   kept.
//! - from a listening socket (block-proc's `--standalone`): a peer whose
//!   uid is neither ours nor root's (`SO_PEERCRED`) is hung up on at once.
//!
//! A request the handler refuses (an unsupported SET_CONFIG, a bad ring
//! size, ...) is answered with a failed REPLY_ACK and the connection stays;
//! only a broken or out-of-step stream ends it, or a refused GET_CONFIG
//! (whose zero-size error reply the `vhost` crate's frontend cannot read).
//! Before the crate's handler sees a message, the export takes
//! SET_BACKEND_REQ_FD itself ([`crate::backend_channel`]) and, for a
//! device that wants it, an early SET_VRING_ENABLE
//! ([`crate::early_enable`]).

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use vhost::vhost_user::{BackendReqHandler, Error as VuError, VhostUserBackendReqHandlerMut};

use crate::backend::{BackendDevice, VhostBackend};
use crate::backend_channel::{ack, peek_code, take_request, SET_BACKEND_REQ_FD};
use crate::early_enable;
use crate::poll::wait;

/// Where an export's frontend connections come from.
pub enum Source {
    /// Only from [`Export::attach`] (under the broker).
    Attached,
    /// Accepted on a listening socket, from peers running as our uid or
    /// root.
    Listener(UnixListener),
}

/// Connections attached but not served yet, and the eventfd that says so.
struct Inbox {
    waiting: Mutex<VecDeque<UnixStream>>,
    ready: EventFd,
}

/// A running export of a `D`.
pub struct Export<D: BackendDevice> {
    backend: Arc<Mutex<VhostBackend<D>>>,
    stop: Arc<EventFd>,
    inbox: Arc<Inbox>,
    handle: Option<JoinHandle<()>>,
}

impl<D: BackendDevice> Export<D> {
    /// Serves `dev` to the frontends that come from `source`, on a thread
    /// called `thread`; `label` names the export in log lines. `connected`
    /// is told when a frontend connects (`true`) and when its connection
    /// ended (`false`).
    pub fn start(
        label: String,
        thread: String,
        source: Source,
        dev: D,
        connected: impl Fn(bool) + Send + 'static,
    ) -> std::io::Result<Self> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let stop = Arc::new(EventFd::from_flags(flags)?);
        let inbox = Arc::new(Inbox {
            waiting: Mutex::new(VecDeque::new()),
            ready: EventFd::from_flags(flags)?,
        });
        let backend = Arc::new(Mutex::new(VhostBackend::new(dev)));
        let server = Server {
            label,
            source,
            inbox: inbox.clone(),
            backend: backend.clone(),
            stop: stop.clone(),
            connected: Box::new(connected),
        };
        let handle = std::thread::Builder::new()
            .name(thread)
            .spawn(move || server.run())?;
        Ok(Export {
            backend,
            stop,
            inbox,
            handle: Some(handle),
        })
    }

    /// Queues `stream` (a connected socket whose peer is the frontend) as
    /// the next connection to serve; a connection still waiting is dropped.
    pub fn attach(&self, stream: UnixStream) -> std::io::Result<()> {
        {
            let mut q = self.inbox.waiting.lock().unwrap_or_else(|p| p.into_inner());
            q.clear();
            q.push_back(stream);
        }
        self.inbox.ready.write(1)?;
        Ok(())
    }

    /// Tells the connected frontend, if it gave a backend channel, that
    /// the config space changed.
    pub fn config_changed(&self) {
        if let Ok(mut b) = self.backend.lock() {
            b.notify_config_change();
        }
    }

    /// Stops serving (disconnects the frontend); true if the thread was
    /// still running and has now ended.
    pub fn shutdown(&mut self) -> bool {
        let _ = self.stop.write(1);
        match self.handle.take() {
            Some(h) => {
                let _ = h.join();
                true
            }
            None => false,
        }
    }
}

impl<D: BackendDevice> Drop for Export<D> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True if the peer of `s` runs as our effective uid or as root.
pub fn peer_allowed(s: &UnixStream) -> std::io::Result<bool> {
    let cred = getsockopt(s, PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    Ok(cred.uid() == me || cred.uid() == 0)
}

/// The export's thread.
struct Server<D: BackendDevice> {
    label: String,
    source: Source,
    inbox: Arc<Inbox>,
    backend: Arc<Mutex<VhostBackend<D>>>,
    stop: Arc<EventFd>,
    connected: Box<dyn Fn(bool) + Send>,
}

impl<D: BackendDevice> Server<D> {
    fn backend(&self) -> Option<MutexGuard<'_, VhostBackend<D>>> {
        self.backend.lock().ok()
    }

    /// The next attached connection, if one waits.
    fn take_attached(&self) -> Option<UnixStream> {
        // Reset the eventfd first: an attach after this read re-arms it.
        let _ = self.inbox.ready.read();
        self.inbox
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// Waits for the next connection; None when stopping.
    fn next_connection(&self) -> Option<UnixStream> {
        loop {
            if let Some(s) = self.take_attached() {
                return Some(s);
            }
            let listener = match &self.source {
                Source::Listener(l) => Some(l),
                Source::Attached => None,
            };
            let mut fds = vec![self.inbox.ready.as_fd()];
            fds.extend(listener.map(|l| l.as_fd()));
            let ready = wait(&fds, &self.stop)?;
            let Some(l) = listener.filter(|_| ready.get(1).copied().unwrap_or(false)) else {
                continue;
            };
            match l.accept() {
                Ok((s, _)) => match peer_allowed(&s) {
                    Ok(true) => return Some(s),
                    Ok(false) => ipc_proto::warn_limited!(
                        "{}: refused a connection from another user",
                        self.label
                    ),
                    Err(e) => ipc_proto::warn_limited!(
                        "{}: cannot check a connection's peer, refused: {e}",
                        self.label
                    ),
                },
                Err(e) => ipc_proto::warn_limited!("{}: accept failed: {e}", self.label),
            }
        }
    }

    fn run(self) {
        while let Some(stream) = self.next_connection() {
            let stopping = self.serve(stream);
            if let Some(mut b) = self.backend() {
                b.disconnect();
            }
            tracing::debug!("{}: frontend disconnected", self.label);
            (self.connected)(false);
            if stopping {
                return;
            }
        }
    }

    /// Reads SET_BACKEND_REQ_FD (the `vhost` crate would hide the channel
    /// from us, see `backend_channel`); false: the stream is out of step.
    fn take_channel(&self, stream: &UnixStream) -> bool {
        let (channel, need_reply) = match take_request(stream) {
            Ok(r) => r,
            Err(e) => {
                ipc_proto::warn_limited!("{}: {e}, dropping connection", self.label);
                return false;
            }
        };
        let ok = self.backend().is_some_and(|mut b| b.set_channel(channel));
        if !ok {
            ipc_proto::warn_limited!(
                "{}: SET_BACKEND_REQ_FD without VHOST_USER_PROTOCOL_F_BACKEND_REQ",
                self.label
            );
        }
        !need_reply || ack(stream, ok).is_ok()
    }

    /// Whether the next message is a SET_VRING_ENABLE the crate would
    /// refuse (PROTOCOL_FEATURES not acked yet) and the device wants.
    fn early_enable_next(&self, stream: &UnixStream) -> bool {
        D::EARLY_VRING_ENABLE
            && peek_code(stream) == Some(early_enable::SET_VRING_ENABLE)
            && !self.backend().is_none_or(|b| b.protocol_features_acked())
    }

    /// Applies an early SET_VRING_ENABLE (see [`early_enable`]); false:
    /// the stream is out of step.
    fn early_enable(&self, stream: &UnixStream) -> bool {
        let m = match early_enable::take(stream) {
            Ok(m) => m,
            Err(e) => {
                ipc_proto::warn_limited!("{}: {e}, dropping connection", self.label);
                return false;
            }
        };
        let ok = self
            .backend()
            .is_some_and(|mut b| b.set_vring_enable(m.index, m.enable).is_ok());
        !m.need_reply || early_enable::ack(stream, ok).is_ok()
    }

    /// Serves one connection until it ends (false) or the export stops
    /// (true).
    fn serve(&self, stream: UnixStream) -> bool {
        let Ok(watch) = stream.try_clone() else {
            return false;
        };
        tracing::debug!("{}: frontend connected", self.label);
        (self.connected)(true);
        let mut handler = BackendReqHandler::from_stream(stream, self.backend.clone());
        loop {
            if wait(&[watch.as_fd()], &self.stop).is_none() {
                return true;
            }
            if self.early_enable_next(&watch) {
                if !self.early_enable(&watch) {
                    return false;
                }
                continue;
            }
            if peek_code(&watch) == Some(SET_BACKEND_REQ_FD) {
                if !self.take_channel(&watch) {
                    return false;
                }
                continue;
            }
            let handled = handler.handle_request();
            let hang_up = self.backend().is_some_and(|mut b| b.take_hang_up());
            if handled.is_ok() && hang_up {
                ipc_proto::warn_limited!(
                    "{}: GET_CONFIG out of range, dropping connection",
                    self.label
                );
                return false;
            }
            if let Err(e) = handled {
                let refused = self.backend().is_some_and(|mut b| b.take_refusal());
                match e {
                    // Answered with a failed REPLY_ACK (or, without
                    // REPLY_ACK, not answered at all, as the protocol
                    // says): the stream is still in step.
                    VuError::InvalidParam | VuError::InvalidOperation(_) if refused => {
                        ipc_proto::warn_limited!("{}: vhost-user request refused: {e}", self.label);
                        continue;
                    }
                    VuError::Disconnected | VuError::PartialMessage => {}
                    e => ipc_proto::warn_limited!(
                        "{}: vhost-user error, dropping connection: {e}",
                        self.label
                    ),
                }
                return false;
            }
        }
    }
}
