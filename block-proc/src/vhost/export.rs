//! One vhost-user export (virtio-blk or virtio-scsi): a thread that serves one frontend
//! connection at a time and, when it ends, takes the next.
//!
//! Where connections come from ([`Source`]):
//! - under the broker, only from [`Export::attach`]: the broker hands over
//!   one end of a socketpair per connection (`AttachExportConnection`), so
//!   there is no socket anyone else could connect to. A connection attached
//!   while another is served waits until that one ends (the frontend drops
//!   its old connection before it uses a new one); of several waiting, only
//!   the newest is kept.
//! - in `--standalone` mode, from a listening socket: a peer whose uid is
//!   neither ours nor root's (`SO_PEERCRED`) is hung up on at once.
//!
//! A request the handler refuses (an unsupported SET_CONFIG, a bad ring
//! size, ...) is answered with a failed REPLY_ACK and the connection stays;
//! only a broken or out-of-step stream ends it, or a refused GET_CONFIG
//! (whose zero-size error reply the `vhost` crate's frontend cannot read).

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use vhost::vhost_user::BackendReqHandler;
use vhost_backend_common::poll::wait;

use super::backend::VhostBackend;
use super::backend_channel::{ack, peek_code, take_request, SET_BACKEND_REQ_FD};
use super::device::DeviceModel;

/// Connection events of an export.
#[derive(Debug, Clone)]
pub enum ExportEvent {
    /// A frontend connected.
    Connected(String),
    /// The frontend disconnected.
    Disconnected(String),
    /// A request failed on the host (rate limited per queue).
    IoError {
        /// Node name.
        node_name: String,
        /// `read`, `write`, `flush` or `discard`.
        operation: &'static str,
        /// strerror text.
        reason: String,
    },
    /// A block-layer event that is not an export's (write thresholds,
    /// what a guest changed on a SCSI drive).
    Block(ipc_proto::block::BlockEvent),
    /// A block-layer event whose sender waits until it is on the broker's
    /// link before the guest may see its cause complete (what a guest
    /// changed on a SCSI drive): `()` is sent on the second field once the
    /// event was written; the sender is dropped if it cannot be.
    Acked(ipc_proto::block::BlockEvent, std::sync::mpsc::Sender<()>),
}

/// Where an export's frontend connections come from.
pub enum Source {
    /// Only from [`Export::attach`] (under the broker).
    Attached,
    /// Accepted on a listening socket, from peers running as our uid or
    /// root (`--standalone`).
    Listener(UnixListener),
}

/// Connections attached but not served yet, and the eventfd that says so.
struct Inbox {
    waiting: Mutex<VecDeque<UnixStream>>,
    ready: EventFd,
}

/// A running export.
pub struct Export {
    dev: Arc<dyn DeviceModel>,
    backend: Arc<Mutex<VhostBackend>>,
    stop: Arc<EventFd>,
    inbox: Arc<Inbox>,
    handle: Option<JoinHandle<()>>,
}

impl Export {
    /// Serve `dev` to the frontends that come from `source`.
    pub fn start(
        id: String,
        source: Source,
        dev: Arc<dyn DeviceModel>,
        events: Option<Sender<ExportEvent>>,
    ) -> std::io::Result<Self> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let stop = Arc::new(EventFd::from_flags(flags)?);
        let inbox = Arc::new(Inbox {
            waiting: Mutex::new(VecDeque::new()),
            ready: EventFd::from_flags(flags)?,
        });
        let backend = Arc::new(Mutex::new(VhostBackend::new(dev.clone(), events.clone())));
        let server = Server {
            id: id.clone(),
            source,
            inbox: inbox.clone(),
            backend: backend.clone(),
            stop: stop.clone(),
            events,
        };
        dev.acquire();
        let handle = std::thread::Builder::new()
            .name(format!("export-{id}"))
            .spawn(move || server.run());
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                dev.release();
                return Err(e);
            }
        };
        Ok(Export {
            dev,
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
    /// the config space (the capacity) changed.
    pub fn config_changed(&self) {
        if let Ok(mut b) = self.backend.lock() {
            b.notify_config_change();
        }
    }

    /// Stop serving (disconnects the frontend) and release the node.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
            self.dev.release();
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True if the peer of `s` runs as our effective uid or as root.
fn peer_allowed(s: &UnixStream) -> std::io::Result<bool> {
    let cred = getsockopt(s, PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    Ok(cred.uid() == me || cred.uid() == 0)
}

/// The export's thread.
struct Server {
    id: String,
    source: Source,
    inbox: Arc<Inbox>,
    backend: Arc<Mutex<VhostBackend>>,
    stop: Arc<EventFd>,
    events: Option<Sender<ExportEvent>>,
}

impl Server {
    fn send(&self, e: ExportEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
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
                    Ok(false) => {
                        ipc_proto::warn_limited!(
                            "export {}: refused a connection from another user",
                            self.id
                        );
                    }
                    Err(e) => {
                        ipc_proto::warn_limited!(
                            "export {}: cannot check a connection's peer, refused: {e}",
                            self.id
                        );
                    }
                },
                Err(e) => ipc_proto::warn_limited!("export {}: accept failed: {e}", self.id),
            }
        }
    }

    fn run(self) {
        while let Some(stream) = self.next_connection() {
            let stopping = self.serve(stream);
            if let Ok(mut b) = self.backend.lock() {
                b.disconnect();
            }
            tracing::debug!("export {}: frontend disconnected", self.id);
            self.send(ExportEvent::Disconnected(self.id.clone()));
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
                ipc_proto::warn_limited!("export {}: {e}, dropping connection", self.id);
                return false;
            }
        };
        let ok = self
            .backend
            .lock()
            .map(|mut b| b.set_channel(channel))
            .unwrap_or(false);
        if !ok {
            ipc_proto::warn_limited!(
                "export {}: SET_BACKEND_REQ_FD without VHOST_USER_PROTOCOL_F_BACKEND_REQ",
                self.id
            );
        }
        !need_reply || ack(stream, ok).is_ok()
    }

    /// Serves one connection until it ends (false) or the export stops
    /// (true).
    fn serve(&self, stream: UnixStream) -> bool {
        let Ok(watch) = stream.try_clone() else {
            return false;
        };
        tracing::debug!("export {}: frontend connected", self.id);
        self.send(ExportEvent::Connected(self.id.clone()));
        let mut handler = BackendReqHandler::from_stream(stream, self.backend.clone());
        loop {
            if wait(&[watch.as_fd()], &self.stop).is_none() {
                return true;
            }
            if peek_code(&watch) == Some(SET_BACKEND_REQ_FD) {
                if !self.take_channel(&watch) {
                    return false;
                }
                continue;
            }
            let handled = handler.handle_request();
            let hang_up = self
                .backend
                .lock()
                .map(|mut b| b.take_hang_up())
                .unwrap_or(false);
            if handled.is_ok() && hang_up {
                ipc_proto::warn_limited!(
                    "export {}: GET_CONFIG out of range, dropping connection",
                    self.id
                );
                return false;
            }
            if let Err(e) = handled {
                let refused = self
                    .backend
                    .lock()
                    .map(|mut b| b.take_refusal())
                    .unwrap_or(false);
                match e {
                    // Answered with a failed REPLY_ACK (or, without
                    // REPLY_ACK, not answered at all, as the protocol
                    // says): the stream is still in step.
                    vhost::vhost_user::Error::InvalidParam
                    | vhost::vhost_user::Error::InvalidOperation(_)
                        if refused =>
                    {
                        ipc_proto::warn_limited!(
                            "export {}: vhost-user request refused: {e}",
                            self.id
                        );
                        continue;
                    }
                    vhost::vhost_user::Error::Disconnected
                    | vhost::vhost_user::Error::PartialMessage => {}
                    e => ipc_proto::warn_limited!(
                        "export {}: vhost-user error, dropping connection: {e}",
                        self.id
                    ),
                }
                return false;
            }
        }
    }
}
