//! One vhost-user export (virtio-blk or virtio-scsi): `vhost-backend-common`'s
//! [`export`](vhost_backend_common::export) thread (one frontend
//! connection at a time) around this export's [`ExportDevice`], holding
//! the device's nodes while it runs.
//!
//! Where connections come from ([`Source`]): under the broker only from
//! [`Export::attach`] (one end of a socketpair per connection,
//! `AttachExportConnection`); in `--standalone` mode from a listening
//! socket, peers of other users (`SO_PEERCRED`) hung up on at once.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use vhost_backend_common::export::Export as Served;
pub use vhost_backend_common::export::Source;

use super::backend::ExportDevice;
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

/// A running export.
pub struct Export {
    dev: Arc<dyn DeviceModel>,
    served: Served<ExportDevice>,
}

impl Export {
    /// Serve `dev` to the frontends that come from `source`.
    pub fn start(
        id: String,
        source: Source,
        dev: Arc<dyn DeviceModel>,
        events: Option<Sender<ExportEvent>>,
    ) -> std::io::Result<Self> {
        let half = ExportDevice::new(dev.clone(), events.clone());
        let label = format!("export {id}");
        let thread = format!("export-{id}");
        let connected = move |up: bool| {
            let e = if up {
                ExportEvent::Connected(id.clone())
            } else {
                ExportEvent::Disconnected(id.clone())
            };
            if let Some(tx) = &events {
                let _ = tx.send(e);
            }
        };
        dev.acquire();
        match Served::start(label, thread, source, half, connected) {
            Ok(served) => Ok(Export { dev, served }),
            Err(e) => {
                dev.release();
                Err(e)
            }
        }
    }

    /// Queues `stream` (a connected socket whose peer is the frontend) as
    /// the next connection to serve; a connection still waiting is dropped.
    pub fn attach(&self, stream: UnixStream) -> std::io::Result<()> {
        self.served.attach(stream)
    }

    /// Tells the connected frontend, if it gave a backend channel, that
    /// the config space (the capacity) changed.
    pub fn config_changed(&self) {
        self.served.config_changed();
    }

    /// Stop serving (disconnects the frontend) and release the node.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.served.shutdown() {
            self.dev.release();
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.shutdown();
    }
}
