//! One vhost-user-blk export: a thread that accepts frontend connections
//! on a listening Unix socket (one at a time) and serves vhost-user
//! messages until the frontend goes away, then waits for the next one —
//! this is how a restarted frontend, or the same frontend after a
//! block-proc restart, reconnects.

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::vhost_user::BackendReqHandler;

use super::backend::BlkBackend;
use crate::block::Node;
use crate::virtio_blk::BlkConfig;

/// Connection events of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A running export.
pub struct Export {
    node: Arc<Node>,
    stop: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
}

impl Export {
    /// Serve `node` on `listener`.
    pub fn start(
        id: String,
        listener: UnixListener,
        node: Arc<Node>,
        cfg: BlkConfig,
        events: Option<Sender<ExportEvent>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let backend = Arc::new(Mutex::new(BlkBackend::new(
            node.clone(),
            cfg,
            events.clone(),
        )));
        let st = stop.clone();
        node.acquire();
        let handle = std::thread::Builder::new()
            .name(format!("export-{id}"))
            .spawn(move || serve(id, listener, backend, st, events))?;
        Ok(Export {
            node,
            stop,
            handle: Some(handle),
        })
    }

    /// Stop serving (disconnects the frontend) and release the node.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
            self.node.release();
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Wait until `fd` is readable or `stop` fires; true when stopping.
fn wait(fd: std::os::fd::BorrowedFd<'_>, stop: &EventFd) -> bool {
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return fds[1].revents().is_some_and(|r| !r.is_empty()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

fn serve(
    id: String,
    listener: UnixListener,
    backend: Arc<Mutex<BlkBackend>>,
    stop: Arc<EventFd>,
    events: Option<Sender<ExportEvent>>,
) {
    let send = |e: ExportEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    loop {
        if wait(listener.as_fd(), &stop) {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("export {id}: accept failed: {e}");
                continue;
            }
        };
        let Ok(watch) = stream.try_clone() else {
            continue;
        };
        tracing::debug!("export {id}: frontend connected");
        send(ExportEvent::Connected(id.clone()));
        let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
        let stopping = loop {
            if wait(watch.as_fd(), &stop) {
                break true;
            }
            if let Err(e) = handler.handle_request() {
                match e {
                    vhost::vhost_user::Error::Disconnected
                    | vhost::vhost_user::Error::PartialMessage => {}
                    e => ipc_proto::warn_limited!(
                        "export {id}: vhost-user error, dropping connection: {e}"
                    ),
                }
                break false;
            }
        };
        if let Ok(mut b) = backend.lock() {
            b.disconnect();
        }
        tracing::debug!("export {id}: frontend disconnected");
        send(ExportEvent::Disconnected(id.clone()));
        if stopping {
            return;
        }
    }
}
