//! The device half of an export's vhost-user backend (virtio-blk or
//! virtio-scsi: the device specifics come from its [`DeviceModel`]); the
//! protocol bookkeeping is `vhost-backend-common`'s
//! [`VhostBackend`](vhost_backend_common::backend::VhostBackend).
//!
//! What block-proc adds: the inflight region (SET_INFLIGHT_FD; changing
//! it restarts running queues, so that they mark their requests in the
//! region the frontend set last; GET_INFLIGHT_FD only hands a fresh one
//! out), each queue's role (requests or idle) and its worker.

use std::fs::File;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use ipc_proto::trace::TracePoint;
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Error as VuError, Result as VuResult};
use vhost_backend_common::backend::{BackendDevice, ReadyQueue, RunningQueue};
use vhost_backend_common::log::LOG_ALL;

use super::device::{DeviceModel, QueueRole};
use super::export::ExportEvent;
use super::queue::{QueueParams, QueueWorker};
use crate::inflight::InflightRegion;
use crate::virtio_blk::feat;
use crate::vring::VringConfig;

/// The device half of one export's backend.
pub struct ExportDevice {
    dev: Arc<dyn DeviceModel>,
    /// Where the queues report I/O failures.
    events: Option<Sender<ExportEvent>>,
    /// The inflight region the frontend set last (SET_INFLIGHT_FD).
    inflight: Option<InflightRegion>,
}

impl ExportDevice {
    /// The backend half of `dev`, reporting I/O failures to `events`.
    pub fn new(dev: Arc<dyn DeviceModel>, events: Option<Sender<ExportEvent>>) -> Self {
        ExportDevice {
            dev,
            events,
            inflight: None,
        }
    }
}

impl RunningQueue for QueueWorker {
    fn stop(self) -> u16 {
        QueueWorker::stop(self)
    }
}

impl BackendDevice for ExportDevice {
    type Queue = QueueWorker;
    type StartError = std::io::Error;

    fn name(&self) -> &str {
        self.dev.name()
    }

    fn label(&self) -> String {
        format!("export of {}", self.dev.name())
    }

    fn msg_point(&self) -> &'static TracePoint {
        &crate::trace::vhost_user_backend_msg::POINT
    }

    fn features(&self) -> u64 {
        self.dev.features() | LOG_ALL
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn num_queues(&self) -> u16 {
        self.dev.num_queues()
    }

    fn max_queue_size(&self) -> u16 {
        self.dev.max_queue_size()
    }

    fn features_acked(&mut self, _features: u64) -> VuResult<()> {
        // Nothing of the device depends on them but the queues, which
        // read them when they start.
        Ok(())
    }

    fn config_space(&self) -> Vec<u8> {
        self.dev.config_space()
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> VuResult<()> {
        self.dev
            .set_config(offset, buf)
            .map_err(VuError::InvalidOperation)
    }

    fn start_queue(&mut self, q: ReadyQueue) -> std::io::Result<QueueWorker> {
        let handler = match self.dev.queue(q.index) {
            QueueRole::Requests(h) => h,
            QueueRole::Idle => return Ok(QueueWorker::idle(q.base)),
        };
        let inflight = self.inflight.as_ref().and_then(|r| r.queue(q.index));
        QueueWorker::start(QueueParams {
            index: q.index,
            ring: VringConfig {
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            },
            base: q.base,
            event_idx: q.acked_features & feat::EVENT_IDX != 0,
            mem: q.mem,
            handler,
            kick: q.kick,
            call: q.call,
            inflight,
            events: self.events.clone(),
            log: q.log,
        })
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        let nq = inflight.num_queues.min(self.dev.num_queues());
        // Handed out only: the queues track in the region the frontend
        // sets (SET_INFLIGHT_FD), which it keeps across our crashes. Taking
        // this one here would move a running queue's marks into a region
        // the frontend may never set, at the queue's next restart.
        let (_region, file, size) =
            InflightRegion::create(nq, inflight.queue_size).map_err(|e| {
                ipc_proto::warn_limited!("GET_INFLIGHT_FD failed: {e}");
                VuError::InvalidParam
            })?;
        Ok((
            VhostUserInflight::new(size, 0, nq, inflight.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        let region = InflightRegion::map(
            &file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(|e| {
            ipc_proto::warn_limited!("SET_INFLIGHT_FD failed: {e}");
            VuError::InvalidParam
        })?;
        self.inflight = Some(region);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.inflight = None;
    }
}
