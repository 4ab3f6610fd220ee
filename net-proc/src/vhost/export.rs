//! One NIC export: a thread that serves one frontend connection at a time
//! and, when it ends, takes the next. Connections come only from
//! [`Export::attach`] (the broker hands over one end of a socketpair), so
//! no socket exists that another process could reach. Of several attached
//! while one is served, only the newest waits.
//!
//! A request the handler refuses is answered with a failed REPLY_ACK and
//! the connection stays; only a broken or out-of-step stream ends it.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipc_proto::net::NetEvent;
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::vhost_user::{BackendReqHandler, VhostUserBackendReqHandlerMut};
use vhost_backend_common::poll::wait;

use super::backend::{NetBackend, Nic};
use super::backend_channel::{ack, peek_code, take_request, SET_BACKEND_REQ_FD};
use super::early_enable;

struct Inbox {
    waiting: Mutex<VecDeque<UnixStream>>,
    ready: EventFd,
}

/// A running NIC export.
pub struct Export {
    nic: Arc<Nic>,
    backend: Arc<Mutex<NetBackend>>,
    stop: Arc<EventFd>,
    inbox: Arc<Inbox>,
    handle: Option<JoinHandle<()>>,
}

impl Export {
    /// Serve `nic` to the frontends attached later.
    pub fn start(nic: Arc<Nic>) -> std::io::Result<Self> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let stop = Arc::new(EventFd::from_flags(flags)?);
        let inbox = Arc::new(Inbox {
            waiting: Mutex::new(VecDeque::new()),
            ready: EventFd::from_flags(flags)?,
        });
        let backend = Arc::new(Mutex::new(NetBackend::new(nic.clone())));
        let server = Server {
            nic: nic.clone(),
            inbox: inbox.clone(),
            backend: backend.clone(),
            stop: stop.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("nic-{}", nic.id))
            .spawn(move || server.run())?;
        Ok(Export {
            nic,
            backend,
            stop,
            inbox,
            handle: Some(handle),
        })
    }

    /// The NIC served.
    pub fn nic(&self) -> &Arc<Nic> {
        &self.nic
    }

    /// Queues `stream` as the next connection to serve.
    pub fn attach(&self, stream: UnixStream) -> std::io::Result<()> {
        {
            let mut q = self.inbox.waiting.lock().unwrap_or_else(|p| p.into_inner());
            q.clear();
            q.push_back(stream);
        }
        self.inbox.ready.write(1)?;
        Ok(())
    }

    /// Tells the connected frontend the config space changed.
    pub fn config_changed(&self) {
        if let Ok(mut b) = self.backend.lock() {
            b.notify_config_change();
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Server {
    nic: Arc<Nic>,
    inbox: Arc<Inbox>,
    backend: Arc<Mutex<NetBackend>>,
    stop: Arc<EventFd>,
}

impl Server {
    fn send(&self, e: NetEvent) {
        if let Some(tx) = &self.nic.events {
            let _ = tx.send(e);
        }
    }

    fn next_connection(&self) -> Option<UnixStream> {
        loop {
            let _ = self.inbox.ready.read();
            let next = self
                .inbox
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some(s) = next {
                return Some(s);
            }
            wait(&[self.inbox.ready.as_fd()], &self.stop)?;
        }
    }

    fn run(self) {
        while let Some(stream) = self.next_connection() {
            let stopping = self.serve(stream);
            if let Ok(mut b) = self.backend.lock() {
                b.disconnect();
            }
            self.send(NetEvent::NicDisconnected {
                id: self.nic.id.clone(),
            });
            if stopping {
                return;
            }
        }
    }

    fn take_channel(&self, stream: &UnixStream) -> bool {
        let (channel, need_reply) = match take_request(stream) {
            Ok(r) => r,
            Err(e) => {
                ipc_proto::warn_limited!("NIC {}: {e}, dropping connection", self.nic.id);
                return false;
            }
        };
        let ok = self
            .backend
            .lock()
            .map(|mut b| b.set_channel(channel))
            .unwrap_or(false);
        !need_reply || ack(stream, ok).is_ok()
    }

    fn proto_acked(&self) -> bool {
        self.backend
            .lock()
            .map(|b| b.protocol_features_acked())
            .unwrap_or(true)
    }

    /// Applies an early SET_VRING_ENABLE (see [`early_enable`]).
    fn early_enable(&self, stream: &UnixStream) -> bool {
        let m = match early_enable::take(stream) {
            Ok(m) => m,
            Err(e) => {
                ipc_proto::warn_limited!("NIC {}: {e}, dropping connection", self.nic.id);
                return false;
            }
        };
        let ok = self
            .backend
            .lock()
            .map(|mut b| b.set_vring_enable(m.index, m.enable).is_ok())
            .unwrap_or(false);
        !m.need_reply || early_enable::ack(stream, ok).is_ok()
    }

    /// Serves one connection until it ends (false) or the export stops
    /// (true).
    fn serve(&self, stream: UnixStream) -> bool {
        let Ok(watch) = stream.try_clone() else {
            return false;
        };
        self.send(NetEvent::NicConnected {
            id: self.nic.id.clone(),
        });
        let mut handler = BackendReqHandler::from_stream(stream, self.backend.clone());
        loop {
            if wait(&[watch.as_fd()], &self.stop).is_none() {
                return true;
            }
            if peek_code(&watch) == Some(early_enable::SET_VRING_ENABLE) && !self.proto_acked() {
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
            let hang_up = self
                .backend
                .lock()
                .map(|mut b| b.take_hang_up())
                .unwrap_or(false);
            if handled.is_ok() && hang_up {
                return false;
            }
            if let Err(e) = handled {
                let refused = self
                    .backend
                    .lock()
                    .map(|mut b| b.take_refusal())
                    .unwrap_or(false);
                match e {
                    vhost::vhost_user::Error::InvalidParam
                    | vhost::vhost_user::Error::InvalidOperation(_)
                        if refused =>
                    {
                        ipc_proto::warn_limited!(
                            "NIC {}: vhost-user request refused: {e}",
                            self.nic.id
                        );
                        continue;
                    }
                    vhost::vhost_user::Error::Disconnected
                    | vhost::vhost_user::Error::PartialMessage => {}
                    e => ipc_proto::warn_limited!(
                        "NIC {}: vhost-user error, dropping connection: {e}",
                        self.nic.id
                    ),
                }
                return false;
            }
        }
    }
}
