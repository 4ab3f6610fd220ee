//! What a device plugs into the shared protocol handler
//! ([`super::VhostBackend`]): its feature bits, config space, queue count,
//! how a queue starts, and the inflight region if it keeps one.

use std::fmt::Display;
use std::fs::File;
use std::sync::Arc;

use ipc_proto::trace::TracePoint;
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Error as VuError, Result as VuResult};

use crate::log::QueueLog;
use crate::memory::Mem;

/// A queue the handler found ready to run: memory, ring addresses inside
/// the memory table, a kick fd and — with `VHOST_USER_F_PROTOCOL_FEATURES`
/// — enabled. The device starts its worker on it.
pub struct ReadyQueue {
    /// Virtqueue index.
    pub index: u16,
    /// Ring size (SET_VRING_NUM).
    pub size: u16,
    /// Descriptor table, guest physical.
    pub desc: u64,
    /// Avail ring, guest physical.
    pub avail: u64,
    /// Used ring, guest physical.
    pub used: u64,
    /// First avail index to process (SET_VRING_BASE, or where the queue
    /// stopped last).
    pub base: u16,
    /// The virtio features the frontend acked.
    pub acked_features: u64,
    /// Guest memory.
    pub mem: Arc<Mem>,
    /// Kick eventfd.
    pub kick: File,
    /// Call eventfd, if the frontend gave one.
    pub call: Option<File>,
    /// The dirty log, while the frontend has logging on.
    pub log: Option<QueueLog>,
}

/// A running queue as the handler holds it.
pub trait RunningQueue {
    /// Stops the queue (after its started requests complete); returns the
    /// next avail index to process (GET_VRING_BASE).
    fn stop(self) -> u16;
}

/// The device half of a vhost-user backend: what differs between
/// block-proc's exports and net-proc's NICs. The shared handler does the
/// protocol bookkeeping (owner, features, memory table, vring state, dirty
/// log, REPLY_ACK refusals) and calls these hooks.
pub trait BackendDevice: Send + 'static {
    /// A running queue.
    type Queue: RunningQueue + Send;
    /// Why a queue could not start.
    type StartError: Display;

    /// Whether SET_VRING_ENABLE may arrive before
    /// `VHOST_USER_F_PROTOCOL_FEATURES` is acked and must then be applied
    /// (QEMU's virtio-net sends it; see [`crate::early_enable`]).
    const EARLY_VRING_ENABLE: bool = false;

    /// The device's name in trace points (a node, an export, a NIC id).
    fn name(&self) -> &str;
    /// The device in log lines (`export of NODE`, `NIC ID`).
    fn label(&self) -> String;
    /// The process's trace point for a handled vhost-user message, with
    /// three arguments: the device's name, the message, its argument.
    fn msg_point(&self) -> &'static TracePoint;
    /// Virtio feature bits offered, with the vhost-user ones: with
    /// `VHOST_F_LOG_ALL` ([`crate::log::LOG_ALL`]) when the device's queues
    /// log their writes in [`ReadyQueue::log`].
    fn features(&self) -> u64;
    /// vhost-user protocol features offered.
    fn protocol_features(&self) -> VhostUserProtocolFeatures;
    /// vhost-user queues (GET_QUEUE_NUM), fixed for the device's life.
    fn num_queues(&self) -> u16;
    /// The largest queue size accepted.
    fn max_queue_size(&self) -> u16;
    /// The frontend acked `features` (already checked against
    /// [`BackendDevice::features`] and recorded); Err: refused.
    fn features_acked(&mut self, features: u64) -> VuResult<()>;
    /// The config space.
    fn config_space(&self) -> Vec<u8>;
    /// A SET_CONFIG of `buf` at `offset`; Err: refused.
    fn set_config(&mut self, offset: u32, buf: &[u8]) -> VuResult<()>;
    /// Starts the worker of `queue`.
    fn start_queue(&mut self, queue: ReadyQueue) -> Result<Self::Queue, Self::StartError>;
    /// GET_INFLIGHT_FD: a fresh inflight region for the frontend to keep.
    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        let _ = inflight;
        Err(VuError::InvalidOperation("INFLIGHT_SHMFD not offered"))
    }
    /// SET_INFLIGHT_FD: the region the queues mark in from now on; on Ok
    /// the handler restarts the running queues so that they use it.
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        let _ = (inflight, file);
        Err(VuError::InvalidOperation("INFLIGHT_SHMFD not offered"))
    }
    /// The connection ended (or was reset): drop what belongs to it (its
    /// queues are already stopped).
    fn disconnect(&mut self) {}
}
