//! One NIC export: `vhost-backend-common`'s
//! [`export`](vhost_backend_common::export) thread (one frontend
//! connection at a time) around the NIC's [`NicDevice`]. Connections come
//! only from [`Export::attach`] (the broker hands over one end of a
//! socketpair; `--standalone` attaches what it accepted), so no socket
//! exists that another process could reach. Of several attached while one
//! is served, only the newest waits.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use ipc_proto::net::NetEvent;
use vhost_backend_common::export::{Export as Served, Source};

use super::backend::{Nic, NicDevice};

/// A running NIC export.
pub struct Export {
    nic: Arc<Nic>,
    served: Served<NicDevice>,
}

impl Export {
    /// Serve `nic` to the frontends attached later.
    pub fn start(nic: Arc<Nic>) -> std::io::Result<Self> {
        let events = nic.events.clone();
        let id = nic.id.clone();
        let connected = move |up: bool| {
            let id = id.clone();
            let e = if up {
                NetEvent::NicConnected { id }
            } else {
                NetEvent::NicDisconnected { id }
            };
            if let Some(tx) = &events {
                let _ = tx.send(e);
            }
        };
        let served = Served::start(
            format!("NIC {}", nic.id),
            format!("nic-{}", nic.id),
            Source::Attached,
            NicDevice::new(nic.clone()),
            connected,
        )?;
        Ok(Export { nic, served })
    }

    /// The NIC served.
    pub fn nic(&self) -> &Arc<Nic> {
        &self.nic
    }

    /// Queues `stream` as the next connection to serve.
    pub fn attach(&self, stream: UnixStream) -> std::io::Result<()> {
        self.served.attach(stream)
    }

    /// Tells the connected frontend the config space changed.
    pub fn config_changed(&self) {
        self.served.config_changed();
    }
}
