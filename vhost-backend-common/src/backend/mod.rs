//! The vhost-user protocol handler both backends share
//! (`VhostUserBackendReqHandlerMut`; the `vhost` crate parses and
//! validates the messages and implements REPLY_ACK), generic over the
//! device half ([`BackendDevice`]).
//!
//! Queue lifecycle: a queue runs (has a worker) once it has memory, ring
//! addresses, a kick fd and — when `VHOST_USER_F_PROTOCOL_FEATURES` is
//! negotiated — has been enabled. GET_VRING_BASE stops it and returns its
//! avail position. Changing memory, the call fd, the dirty log or the
//! inflight region restarts running queues at their current position.
//!
//! - [`device`]: the hooks a device implements.
//! - `handler`: the message handlers.

pub mod device;
mod handler;

use std::fmt::Debug;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VuError, Result as VuResult};

pub use device::{BackendDevice, ReadyQueue, RunningQueue};

use crate::log::{DirtyLog, QueueLog};
use crate::memory::MemoryTable;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// What the frontend set about one queue.
struct QueueSlot<Q> {
    size: u16,
    /// Frontend virtual addresses: desc, used, avail.
    addr: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    worker: Option<Q>,
    /// The used ring's log address (SET_VRING_ADDR with VHOST_VRING_F_LOG).
    log_addr: Option<u64>,
}

impl<Q> Default for QueueSlot<Q> {
    fn default() -> Self {
        QueueSlot {
            size: 0,
            addr: None,
            base: 0,
            kick: None,
            call: None,
            enabled: false,
            worker: None,
            log_addr: None,
        }
    }
}

/// vhost-user backend state of one connection of `D`.
pub struct VhostBackend<D: BackendDevice> {
    dev: D,
    acked_features: u64,
    acked_protocol: u64,
    mem: Option<MemoryTable>,
    queues: Vec<QueueSlot<D::Queue>>,
    /// Set when a request answered through REPLY_ACK was refused (see
    /// [`VhostBackend::take_refusal`]).
    refused: bool,
    /// Set when the connection must end although the request was answered
    /// (see [`VhostBackend::take_hang_up`]).
    hang_up: bool,
    /// The backend→frontend channel (`SET_BACKEND_REQ_FD`) of this
    /// connection; the frontend passes it again after a reconnection.
    channel: Option<UnixStream>,
    /// The dirty log (SET_LOG_BASE); used while LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
}

fn io_err(msg: &'static str) -> VuError {
    VuError::InvalidOperation(msg)
}

impl<D: BackendDevice> VhostBackend<D> {
    /// A backend serving `dev`.
    pub fn new(dev: D) -> Self {
        let n = usize::from(dev.num_queues());
        VhostBackend {
            dev,
            acked_features: 0,
            acked_protocol: 0,
            mem: None,
            queues: (0..n).map(|_| QueueSlot::default()).collect(),
            refused: false,
            hang_up: false,
            channel: None,
            log: None,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Takes `channel` (from `SET_BACKEND_REQ_FD`) if the frontend acked
    /// `VHOST_USER_PROTOCOL_F_BACKEND_REQ`; false: refused.
    pub fn set_channel(&mut self, channel: UnixStream) -> bool {
        let acked = VhostUserProtocolFeatures::from_bits_truncate(self.acked_protocol)
            .contains(VhostUserProtocolFeatures::BACKEND_REQ);
        if acked {
            self.channel = Some(channel);
        }
        acked
    }

    /// True once the frontend acked `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub fn protocol_features_acked(&self) -> bool {
        self.acked_features & PROTOCOL_FEATURES != 0
    }

    /// Tells the frontend the config space changed (CONFIG_CHANGE_MSG),
    /// if it gave a channel. A failed send drops the channel.
    pub fn notify_config_change(&mut self) {
        let Some(c) = &self.channel else { return };
        self.trace("CONFIG_CHANGE_MSG", &());
        if let Err(e) = crate::backend_channel::send_config_change(c) {
            ipc_proto::warn_limited!("{}: {e}", self.dev.label());
            self.channel = None;
        }
    }

    /// Forget the connection: stop every queue and drop all per-connection
    /// state (the frontend re-sends everything when it reconnects).
    pub fn disconnect(&mut self) {
        for q in &mut self.queues {
            if let Some(w) = q.worker.take() {
                w.stop();
            }
            *q = QueueSlot::default();
        }
        self.mem = None;
        self.dev.disconnect();
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.channel = None;
        self.log = None;
    }

    /// True (once) if the last failed request was refused by this handler
    /// in a request the `vhost` crate answers with REPLY_ACK: the frontend
    /// got its failed ack and the stream is in step, so the connection can
    /// stay. Requests answered with data (GET_*) are not counted: a refusal
    /// there leaves the frontend waiting for a reply it will never get.
    pub fn take_refusal(&mut self) -> bool {
        std::mem::take(&mut self.refused)
    }

    /// True (once) if the last request was answered in a form the frontend
    /// may not be able to read (a refused GET_CONFIG): the connection must
    /// end.
    pub fn take_hang_up(&mut self) -> bool {
        std::mem::take(&mut self.hang_up)
    }

    /// Fires the device's message trace point.
    fn trace(&self, request: &'static str, arg: &dyn Debug) {
        let point = self.dev.msg_point();
        if point.is_enabled() {
            point.write(None, &[&self.dev.name(), &request, arg]);
        }
    }

    /// Runs `f`, a request answered with REPLY_ACK, noting a refusal.
    fn acked<T>(&mut self, f: impl FnOnce(&mut Self) -> VuResult<T>) -> VuResult<T> {
        let r = f(self);
        self.refused = r.is_err();
        r
    }

    fn slot(&mut self, index: u32) -> VuResult<&mut QueueSlot<D::Queue>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
            .ok_or(VuError::InvalidParam)
    }

    fn stop_queue(&mut self, i: usize) {
        if let Some(q) = self.queues.get_mut(i) {
            if let Some(w) = q.worker.take() {
                q.base = w.stop();
            }
        }
    }

    fn maybe_start(&mut self, i: usize) {
        let proto = self.protocol_features_acked();
        let Some(mem) = self.mem.clone() else { return };
        let (acked, log) = (self.acked_features, self.log.clone());
        let Some(q) = self.queues.get_mut(i) else {
            return;
        };
        if q.worker.is_some() || q.size == 0 || (proto && !q.enabled) {
            return;
        }
        let (Some((d, u, a)), Some(kick)) = (q.addr, q.kick.as_ref()) else {
            return;
        };
        let (Some(desc), Some(used), Some(avail)) =
            (mem.va_to_gpa(d), mem.va_to_gpa(u), mem.va_to_gpa(a))
        else {
            ipc_proto::warn_limited!(
                "{} queue {i}: ring address outside the memory table",
                self.dev.label()
            );
            return;
        };
        let (Ok(kick), call) = (
            kick.try_clone(),
            q.call.as_ref().and_then(|c| c.try_clone().ok()),
        ) else {
            return;
        };
        let ready = ReadyQueue {
            index: u16::try_from(i).unwrap_or(u16::MAX),
            size: q.size,
            desc,
            avail,
            used,
            base: q.base,
            acked_features: acked,
            mem: mem.mem.clone(),
            kick,
            call,
            log: QueueLog::new(acked, log.as_ref(), q.log_addr),
        };
        match self.dev.start_queue(ready) {
            Ok(w) => q.worker = Some(w),
            Err(e) => {
                ipc_proto::warn_limited!("{} queue {i}: not started: {e}", self.dev.label())
            }
        }
    }

    fn restart_running(&mut self) {
        let running: Vec<usize> = (0..self.queues.len())
            .filter(|&i| self.queues[i].worker.is_some())
            .collect();
        for &i in &running {
            self.stop_queue(i);
        }
        for i in running {
            self.maybe_start(i);
        }
    }
}

impl<D: BackendDevice> Drop for VhostBackend<D> {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests;
