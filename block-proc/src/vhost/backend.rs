//! The vhost-user protocol handler of one export (virtio-blk or
//! virtio-scsi: the device specifics come from its [`DeviceModel`])
//! (`VhostUserBackendReqHandlerMut`; the `vhost` crate parses and
//! validates the messages and implements REPLY_ACK).
//!
//! Queue lifecycle: a queue runs (has a worker thread) once it has memory,
//! ring addresses, a kick fd and — when `VHOST_USER_F_PROTOCOL_FEATURES`
//! is negotiated — has been enabled. GET_VRING_BASE stops it and returns
//! its avail position. Changing memory, the call fd or the inflight region
//! (SET_INFLIGHT_FD; GET_INFLIGHT_FD only hands a fresh one out) restarts
//! running queues at their current position, so that they mark their
//! requests in the region the frontend set last.

use std::fs::File;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use ipc_proto::trace_point;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;

use super::device::{DeviceModel, QueueRole};
use super::export::ExportEvent;
use super::memory::MemoryTable;
use super::queue::{QueueParams, QueueWorker};
use crate::inflight::InflightRegion;
use crate::trace::vhost_user_backend_msg as vu_msg;
use crate::virtio_blk::feat;
use crate::vring::VringConfig;
use vhost_backend_common::log::{ring_log_addr, DirtyLog, QueueLog, LOG_ALL};

#[derive(Default)]
struct QueueSlot {
    size: u16,
    /// Frontend virtual addresses: desc, used, avail.
    addr: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    worker: Option<QueueWorker>,
    /// The used ring's log address (SET_VRING_ADDR with VHOST_VRING_F_LOG).
    log_addr: Option<u64>,
}

/// vhost-user backend state of one export connection.
pub struct VhostBackend {
    dev: Arc<dyn DeviceModel>,
    acked_features: u64,
    acked_protocol: u64,
    mem: Option<MemoryTable>,
    queues: Vec<QueueSlot>,
    inflight: Option<InflightRegion>,
    events: Option<Sender<ExportEvent>>,
    /// Set when a request answered through REPLY_ACK was refused (see
    /// [`VhostBackend::take_refusal`]).
    refused: bool,
    /// Set when the connection must end although the request was answered
    /// (see [`VhostBackend::take_hang_up`]).
    hang_up: bool,
    /// The backend→frontend channel (`SET_BACKEND_REQ_FD`) of this
    /// connection; the frontend passes it again after a reconnection.
    channel: Option<std::os::unix::net::UnixStream>,
    /// The dirty log (SET_LOG_BASE); used while LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
}

fn io_err(msg: &'static str) -> VuError {
    VuError::InvalidOperation(msg)
}

impl VhostBackend {
    /// A backend serving `dev`, reporting I/O failures to `events`.
    pub fn new(dev: Arc<dyn DeviceModel>, events: Option<Sender<ExportEvent>>) -> Self {
        let n = usize::from(dev.num_queues());
        VhostBackend {
            dev,
            acked_features: 0,
            acked_protocol: 0,
            mem: None,
            queues: (0..n).map(|_| QueueSlot::default()).collect(),
            inflight: None,
            events,
            refused: false,
            hang_up: false,
            channel: None,
            log: None,
        }
    }

    /// Takes `channel` (from `SET_BACKEND_REQ_FD`) if the frontend acked
    /// `VHOST_USER_PROTOCOL_F_BACKEND_REQ`; false: refused.
    pub fn set_channel(&mut self, channel: std::os::unix::net::UnixStream) -> bool {
        let acked = VhostUserProtocolFeatures::from_bits_truncate(self.acked_protocol)
            .contains(VhostUserProtocolFeatures::BACKEND_REQ);
        if acked {
            self.channel = Some(channel);
        }
        acked
    }

    /// Tells the frontend the config space changed (CONFIG_CHANGE_MSG),
    /// if it gave a channel. A failed send drops the channel.
    pub fn notify_config_change(&mut self) {
        let Some(c) = &self.channel else { return };
        trace_point!(vu_msg(self.dev.name(), "CONFIG_CHANGE_MSG", ()));
        if let Err(e) = super::backend_channel::send_config_change(c) {
            ipc_proto::warn_limited!("export of {}: {e}", self.dev.name());
            self.channel = None;
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn DeviceModel> {
        &self.dev
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
        self.inflight = None;
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

    /// Runs `f`, a request answered with REPLY_ACK, noting a refusal.
    fn acked<T>(&mut self, f: impl FnOnce(&mut Self) -> VuResult<T>) -> VuResult<T> {
        let r = f(self);
        self.refused = r.is_err();
        r
    }

    fn slot(&mut self, index: u32) -> VuResult<&mut QueueSlot> {
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
        let proto = self.acked_features & feat::PROTOCOL_FEATURES != 0;
        let event_idx = self.acked_features & feat::EVENT_IDX != 0;
        let Some(mem) = self.mem.clone() else { return };
        let (acked, log) = (self.acked_features, self.log.clone());
        let inflight = self
            .inflight
            .as_ref()
            .and_then(|r| u16::try_from(i).ok().and_then(|q| r.queue(q)));
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
            ipc_proto::warn_limited!("queue {i}: ring address outside the memory table");
            return;
        };
        let (Ok(kick), call) = (
            kick.try_clone(),
            q.call.as_ref().and_then(|c| c.try_clone().ok()),
        ) else {
            return;
        };
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        let handler = match self.dev.queue(index) {
            QueueRole::Requests(h) => h,
            QueueRole::Idle => {
                q.worker = Some(QueueWorker::idle(q.base));
                return;
            }
        };
        let params = QueueParams {
            index,
            ring: VringConfig {
                size: q.size,
                desc,
                avail,
                used,
            },
            base: q.base,
            event_idx,
            mem: mem.mem.clone(),
            handler,
            kick,
            call,
            inflight,
            events: self.events.clone(),
            log: QueueLog::new(acked, log.as_ref(), q.log_addr),
        };
        match QueueWorker::start(params) {
            Ok(w) => q.worker = Some(w),
            Err(e) => tracing::error!("queue {i}: cannot start worker thread: {e}"),
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

impl Drop for VhostBackend {
    fn drop(&mut self) {
        self.disconnect();
    }
}

impl VhostUserBackendReqHandlerMut for VhostBackend {
    fn set_owner(&mut self) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_OWNER", ()));
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "RESET_OWNER", ()));
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "RESET_DEVICE", ()));
        self.disconnect();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        trace_point!(vu_msg(self.dev.name(), "GET_FEATURES", ()));
        Ok(self.dev.features() | LOG_ALL)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_FEATURES", features));
        self.acked(|b| {
            if features & !(b.dev.features() | LOG_ALL) != 0 {
                return Err(VuError::InvalidParam);
            }
            let logging_changed = (b.acked_features ^ features) & LOG_ALL != 0;
            b.acked_features = features;
            if logging_changed {
                b.restart_running();
            }
            Ok(())
        })
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        trace_point!(vu_msg(self.dev.name(), "SET_MEM_TABLE", ctx.len()));
        self.acked(|b| {
            let table = MemoryTable::new(ctx, files).map_err(|e| {
                ipc_proto::warn_limited!("SET_MEM_TABLE rejected: {e}");
                VuError::InvalidParam
            })?;
            b.mem = Some(table);
            b.restart_running();
            Ok(None)
        })
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_NUM", (index, num)));
        self.acked(|b| {
            let max = u32::from(b.dev.max_queue_size());
            if num == 0 || num > max || !num.is_power_of_two() {
                return Err(VuError::InvalidParam);
            }
            let q = b.slot(index)?;
            if q.worker.is_some() {
                return Err(io_err("queue is running"));
            }
            q.size = u16::try_from(num).map_err(|_| VuError::InvalidParam)?;
            Ok(())
        })
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_ADDR", index));
        self.acked(|b| {
            let log_addr = ring_log_addr(flags, log);
            let q = b.slot(index)?;
            if q.worker.is_some() {
                // Dirty logging turned on or off on a live ring: only the
                // log flag may change; while LOG_ALL is acked the ring
                // restarts where it is, logging at the new address.
                if q.addr != Some((descriptor, used, available)) {
                    return Err(io_err("queue is running"));
                }
                q.log_addr = log_addr;
                if b.acked_features & LOG_ALL != 0 {
                    let i = usize::try_from(index).map_err(|_| VuError::InvalidParam)?;
                    b.stop_queue(i);
                    b.maybe_start(i);
                }
                return Ok(());
            }
            q.addr = Some((descriptor, used, available));
            q.log_addr = log_addr;
            Ok(())
        })
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_BASE", (index, base)));
        self.acked(|b| {
            let q = b.slot(index)?;
            if q.worker.is_some() {
                return Err(io_err("queue is running"));
            }
            q.base = u16::try_from(base & 0xffff).map_err(|_| VuError::InvalidParam)?;
            Ok(())
        })
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        trace_point!(vu_msg(self.dev.name(), "GET_VRING_BASE", index));
        let i = usize::try_from(index).map_err(|_| VuError::InvalidParam)?;
        self.slot(index)?;
        self.stop_queue(i);
        let q = self.slot(index)?;
        q.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(q.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_KICK", index));
        self.acked(|b| {
            let i = usize::from(index);
            b.stop_queue(i);
            b.slot(u32::from(index))?.kick = fd;
            b.maybe_start(i);
            Ok(())
        })
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_CALL", index));
        self.acked(|b| {
            let i = usize::from(index);
            let running = b.slot(u32::from(index))?.worker.is_some();
            b.stop_queue(i);
            b.slot(u32::from(index))?.call = fd;
            if running {
                b.maybe_start(i);
            }
            Ok(())
        })
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_ERR", index));
        self.acked(|b| {
            b.slot(u32::from(index))?;
            Ok(())
        })
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        trace_point!(vu_msg(self.dev.name(), "GET_PROTOCOL_FEATURES", ()));
        Ok(VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_PROTOCOL_FEATURES", features));
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        trace_point!(vu_msg(self.dev.name(), "GET_QUEUE_NUM", ()));
        Ok(u64::from(self.dev.num_queues()))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_VRING_ENABLE", (index, enable)));
        self.acked(|b| {
            let i = usize::try_from(index).map_err(|_| VuError::InvalidParam)?;
            b.slot(index)?.enabled = enable;
            if enable {
                b.maybe_start(i);
            } else {
                b.stop_queue(i);
            }
            Ok(())
        })
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        trace_point!(vu_msg(self.dev.name(), "GET_CONFIG", offset));
        let space = self.dev.config_space();
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= space.len());
        match range {
            Some(r) => Ok(space[r].to_vec()),
            None => {
                // The `vhost` crate answers with a zero-size payload (the
                // spec's error reply), which its own frontend — vcpu-proc's
                // — cannot read: it waits for the payload it asked for.
                // Hang up instead of leaving it waiting.
                self.hang_up = true;
                Err(VuError::InvalidParam)
            }
        }
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_CONFIG", offset));
        self.acked(|b| b.dev.set_config(offset, buf).map_err(io_err))
    }

    // Not reached: the export takes SET_BACKEND_REQ_FD before the crate
    // (see `backend_channel`), whose `Backend` cannot send CONFIG_CHANGE.
    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        self.acked(|_| Err(io_err("not a GPU device")))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(io_err("shared objects not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        trace_point!(vu_msg(self.dev.name(), "GET_INFLIGHT_FD", ()));
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
        trace_point!(vu_msg(self.dev.name(), "SET_INFLIGHT_FD", ()));
        self.acked(|b| {
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
            b.inflight = Some(region);
            // Running queues go on in the new region: they would otherwise
            // mark in the old one, which the frontend no longer keeps.
            b.restart_running();
            Ok(())
        })
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(io_err("CONFIGURE_MEM_SLOTS not negotiated"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        self.acked(|_| Err(io_err("CONFIGURE_MEM_SLOTS not negotiated")))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        self.acked(|_| Err(io_err("CONFIGURE_MEM_SLOTS not negotiated")))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(io_err("device state transfer not supported"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(io_err("device state transfer not supported"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(io_err("no shared memory regions"))
    }

    // A refusal is not answered (the `vhost` crate sends the reply only on
    // success): the connection ends, as for any request it cannot answer.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VuResult<()> {
        trace_point!(vu_msg(self.dev.name(), "SET_LOG_BASE", log.mmap_size));
        let map = DirtyLog::from_message(log, file).map_err(|e| {
            ipc_proto::warn_limited!("SET_LOG_BASE rejected: {e}");
            VuError::InvalidParam
        })?;
        self.log = Some(Arc::new(map));
        if self.acked_features & LOG_ALL != 0 {
            self.restart_running();
        }
        Ok(())
    }
}
