//! The device half of a NIC export's vhost-user backend, and the [`Nic`]
//! it serves; the protocol bookkeeping is `vhost-backend-common`'s
//! [`VhostBackend`](vhost_backend_common::backend::VhostBackend), as in
//! block-proc.
//!
//! What net-proc adds: the netdev's offloads set from the acked features,
//! the config space (only the MAC writable), and the queue workers
//! (`super::queue`). No inflight region: a net backend need not keep one
//! (a frame in flight at a crash is lost, as on a wire).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use ipc_proto::net::NetEvent;
use ipc_proto::trace::TracePoint;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Error as VuError, Result as VuResult};
use vhost_backend_common::backend::{BackendDevice, ReadyQueue, RunningQueue};
use vhost_backend_common::log::LOG_ALL;

use super::queue::{QueueError, QueueParams, QueueWorker, RingAddrs};
use super::stats::Counters;
use crate::port::Netdev;
use crate::virtio_net::{feat, tap_offloads, NetConfig, MAX_QUEUE_SIZE};

/// What a NIC keeps across connections: its description, link, counters,
/// port, and where its events go.
pub struct Nic {
    /// The NIC id.
    pub id: String,
    /// Its description (the MAC may change through SET_CONFIG).
    pub cfg: Mutex<NetConfig>,
    /// Link state, read by the queue workers.
    pub link_up: Arc<AtomicBool>,
    /// Counters.
    pub stats: Arc<Counters>,
    /// The netdev.
    pub port: Netdev,
    /// Events to the broker.
    pub events: Option<Sender<NetEvent>>,
}

impl Nic {
    fn config(&self) -> NetConfig {
        let mut c = self.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone();
        c.link_up = self.link_up.load(Ordering::Relaxed);
        c
    }
}

/// The device half of a NIC's backend.
pub struct NicDevice {
    nic: Arc<Nic>,
}

impl NicDevice {
    /// The backend half of `nic`.
    pub fn new(nic: Arc<Nic>) -> Self {
        NicDevice { nic }
    }
}

impl RunningQueue for QueueWorker {
    fn stop(self) -> u16 {
        QueueWorker::stop(self)
    }
}

impl BackendDevice for NicDevice {
    type Queue = QueueWorker;
    type StartError = QueueError;

    // QEMU's virtio-net enables its queue pairs before the driver runs.
    const EARLY_VRING_ENABLE: bool = true;

    fn name(&self) -> &str {
        &self.nic.id
    }

    fn label(&self) -> String {
        format!("NIC {}", self.nic.id)
    }

    fn msg_point(&self) -> &'static TracePoint {
        &crate::trace::vhost_user_msg::POINT
    }

    fn features(&self) -> u64 {
        self.nic.config().features() | LOG_ALL
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn num_queues(&self) -> u16 {
        self.nic.config().queue_pairs.saturating_mul(2)
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn features_acked(&mut self, features: u64) -> VuResult<()> {
        if let Err(e) = self.nic.port.set_offloads(tap_offloads(features)) {
            ipc_proto::warn_limited!("NIC {}: TUNSETOFFLOAD failed: {e}", self.nic.id);
            return Err(VuError::InvalidOperation(
                "cannot set the netdev's offloads",
            ));
        }
        Ok(())
    }

    fn config_space(&self) -> Vec<u8> {
        self.nic.config().config_space().to_vec()
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> VuResult<()> {
        // Only the MAC is writable (a legacy driver's MAC change).
        let start = usize::try_from(offset).map_err(|_| VuError::InvalidParam)?;
        let end = start.checked_add(buf.len()).ok_or(VuError::InvalidParam)?;
        if end > 6 || buf.is_empty() {
            return Err(VuError::InvalidOperation(
                "only the MAC of the config space is writable",
            ));
        }
        let mac = {
            let mut c = self.nic.cfg.lock().unwrap_or_else(|p| p.into_inner());
            c.mac[start..end].copy_from_slice(buf);
            c.mac
        };
        if let Some(tx) = &self.nic.events {
            let _ = tx.send(NetEvent::MacChanged {
                id: self.nic.id.clone(),
                mac,
            });
        }
        Ok(())
    }

    fn start_queue(&mut self, q: ReadyQueue) -> Result<QueueWorker, QueueError> {
        let nic = &self.nic;
        QueueWorker::start(QueueParams {
            index: q.index,
            size: q.size,
            addrs: RingAddrs {
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            },
            base: q.base,
            event_idx: q.acked_features & feat::EVENT_IDX != 0,
            mrg_rxbuf: q.acked_features & feat::MRG_RXBUF != 0,
            mem: q.mem,
            netdev: nic.port.clone(),
            link_up: nic.link_up.clone(),
            stats: nic.stats.clone(),
            kick: q.kick,
            call: q.call,
            log: q.log,
        })
    }
}
