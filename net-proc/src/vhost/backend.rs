//! The vhost-user protocol handler of one NIC export
//! (`VhostUserBackendReqHandlerMut`; the `vhost` crate parses and
//! validates the messages and implements REPLY_ACK).
//!
//! Not `vhost-user-backend`'s daemon: the export serves socketpair ends the
//! broker attaches and reads `SET_BACKEND_REQ_FD` itself (to send
//! CONFIG_CHANGE_MSG on a link change), as block-proc does. No inflight
//! region: a net backend need not keep one (a frame in flight at a crash
//! is lost, as on a wire).
//!
//! Queue lifecycle: a queue runs once it has memory, ring addresses, a
//! kick fd and — with `VHOST_USER_F_PROTOCOL_FEATURES` — has been enabled.
//! GET_VRING_BASE stops it and returns its avail position. Changing memory
//! or the call fd restarts running queues at their current position.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use ipc_proto::net::NetEvent;
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

use super::memory::MemoryTable;
use super::queue::{QueueParams, QueueWorker, RingAddrs};
use super::stats::Counters;
use crate::port::Netdev;
use crate::trace::vhost_user_msg as vu_msg;
use crate::virtio_net::{feat, tap_offloads, NetConfig, CONFIG_LEN, MAX_QUEUE_SIZE};
use vhost_backend_common::log::{ring_log_addr, DirtyLog, QueueLog, LOG_ALL};

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

/// vhost-user-net backend state of one connection.
pub struct NetBackend {
    nic: Arc<Nic>,
    acked_features: u64,
    acked_protocol: u64,
    mem: Option<MemoryTable>,
    queues: Vec<QueueSlot>,
    refused: bool,
    hang_up: bool,
    channel: Option<std::os::unix::net::UnixStream>,
    /// The dirty log (SET_LOG_BASE); used while LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
}

fn io_err(msg: &'static str) -> VuError {
    VuError::InvalidOperation(msg)
}

impl NetBackend {
    /// A backend for `nic`.
    pub fn new(nic: Arc<Nic>) -> Self {
        let pairs = usize::from(nic.config().queue_pairs);
        NetBackend {
            nic,
            acked_features: 0,
            acked_protocol: 0,
            mem: None,
            queues: (0..pairs * 2).map(|_| QueueSlot::default()).collect(),
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

    /// True once the frontend acked `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub fn protocol_features_acked(&self) -> bool {
        self.acked_features & feat::PROTOCOL_FEATURES != 0
    }

    /// Tells the frontend the config space changed, if it gave a channel.
    pub fn notify_config_change(&mut self) {
        let Some(c) = &self.channel else { return };
        trace_point!(vu_msg(self.nic.id, "CONFIG_CHANGE_MSG", ()));
        if let Err(e) = super::backend_channel::send_config_change(c) {
            ipc_proto::warn_limited!("NIC {}: {e}", self.nic.id);
            self.channel = None;
        }
    }

    /// Forget the connection: stop every queue, drop per-connection state.
    pub fn disconnect(&mut self) {
        for q in &mut self.queues {
            if let Some(w) = q.worker.take() {
                w.stop();
            }
            *q = QueueSlot::default();
        }
        self.mem = None;
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.channel = None;
        self.log = None;
    }

    /// True (once) if the last failed request was refused in a request
    /// answered with REPLY_ACK (the stream is still in step).
    pub fn take_refusal(&mut self) -> bool {
        std::mem::take(&mut self.refused)
    }

    /// True (once) if the connection must end (a refused GET_CONFIG).
    pub fn take_hang_up(&mut self) -> bool {
        std::mem::take(&mut self.hang_up)
    }

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
        let mrg_rxbuf = self.acked_features & feat::MRG_RXBUF != 0;
        let Some(mem) = self.mem.clone() else { return };
        let nic = self.nic.clone();
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
            ipc_proto::warn_limited!("NIC {} queue {i}: ring outside the memory table", nic.id);
            return;
        };
        let (Ok(kick), call) = (
            kick.try_clone(),
            q.call.as_ref().and_then(|c| c.try_clone().ok()),
        ) else {
            return;
        };
        let params = QueueParams {
            index: u16::try_from(i).unwrap_or(u16::MAX),
            size: q.size,
            addrs: RingAddrs { desc, avail, used },
            base: q.base,
            event_idx,
            mrg_rxbuf,
            mem: mem.mem.clone(),
            netdev: nic.port.clone(),
            link_up: nic.link_up.clone(),
            stats: nic.stats.clone(),
            kick,
            call,
            log: QueueLog::new(acked, log.as_ref(), q.log_addr),
        };
        match QueueWorker::start(params) {
            Ok(w) => q.worker = Some(w),
            Err(e) => ipc_proto::warn_limited!("NIC {} queue {i}: not started: {e}", nic.id),
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

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.disconnect();
    }
}

impl VhostUserBackendReqHandlerMut for NetBackend {
    fn set_owner(&mut self) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "SET_OWNER", ()));
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "RESET_OWNER", ()));
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "RESET_DEVICE", ()));
        self.disconnect();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        trace_point!(vu_msg(self.nic.id, "GET_FEATURES", ()));
        Ok(self.nic.config().features() | LOG_ALL)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "SET_FEATURES", features));
        self.acked(|b| {
            if features & !(b.nic.config().features() | LOG_ALL) != 0 {
                return Err(VuError::InvalidParam);
            }
            let logging_changed = (b.acked_features ^ features) & LOG_ALL != 0;
            b.acked_features = features;
            if logging_changed {
                b.restart_running();
            }
            if let Err(e) = b.nic.port.set_offloads(tap_offloads(features)) {
                ipc_proto::warn_limited!("NIC {}: TUNSETOFFLOAD failed: {e}", b.nic.id);
                return Err(io_err("cannot set the netdev's offloads"));
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
        trace_point!(vu_msg(self.nic.id, "SET_MEM_TABLE", ctx.len()));
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
        trace_point!(vu_msg(self.nic.id, "SET_VRING_NUM", (index, num)));
        self.acked(|b| {
            if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
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
        trace_point!(vu_msg(self.nic.id, "SET_VRING_ADDR", index));
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
        trace_point!(vu_msg(self.nic.id, "SET_VRING_BASE", (index, base)));
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
        trace_point!(vu_msg(self.nic.id, "GET_VRING_BASE", index));
        let i = usize::try_from(index).map_err(|_| VuError::InvalidParam)?;
        self.slot(index)?;
        self.stop_queue(i);
        let q = self.slot(index)?;
        q.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(q.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "SET_VRING_KICK", index));
        self.acked(|b| {
            let i = usize::from(index);
            b.slot(u32::from(index))?;
            b.stop_queue(i);
            b.slot(u32::from(index))?.kick = fd;
            b.maybe_start(i);
            Ok(())
        })
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "SET_VRING_CALL", index));
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
        trace_point!(vu_msg(self.nic.id, "SET_VRING_ERR", index));
        self.acked(|b| {
            b.slot(u32::from(index))?;
            Ok(())
        })
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        trace_point!(vu_msg(self.nic.id, "GET_PROTOCOL_FEATURES", ()));
        Ok(VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "SET_PROTOCOL_FEATURES", features));
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        trace_point!(vu_msg(self.nic.id, "GET_QUEUE_NUM", ()));
        Ok(self.queues.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        trace_point!(vu_msg(self.nic.id, "SET_VRING_ENABLE", (index, enable)));
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
        trace_point!(vu_msg(self.nic.id, "GET_CONFIG", offset));
        let space = self.nic.config().config_space();
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= CONFIG_LEN);
        match range {
            Some(r) => Ok(space[r].to_vec()),
            None => {
                // The crate answers with a zero-size payload, which a
                // frontend waiting for its bytes cannot read: hang up.
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
        trace_point!(vu_msg(self.nic.id, "SET_CONFIG", offset));
        self.acked(|b| {
            // Only the MAC is writable (a legacy driver's MAC change).
            let start = usize::try_from(offset).map_err(|_| VuError::InvalidParam)?;
            let end = start.checked_add(buf.len()).ok_or(VuError::InvalidParam)?;
            if end > 6 || buf.is_empty() {
                return Err(io_err("only the MAC of the config space is writable"));
            }
            let mac = {
                let mut c = b.nic.cfg.lock().unwrap_or_else(|p| p.into_inner());
                c.mac[start..end].copy_from_slice(buf);
                c.mac
            };
            if let Some(tx) = &b.nic.events {
                let _ = tx.send(NetEvent::MacChanged {
                    id: b.nic.id.clone(),
                    mac,
                });
            }
            Ok(())
        })
    }

    // Not reached: the export takes SET_BACKEND_REQ_FD before the crate.
    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        self.acked(|_| Err(io_err("not a GPU device")))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(io_err("shared objects not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(io_err("INFLIGHT_SHMFD not offered"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        self.acked(|_| Err(io_err("INFLIGHT_SHMFD not offered")))
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
        trace_point!(vu_msg(self.nic.id, "SET_LOG_BASE", log.mmap_size));
        let map = DirtyLog::from_message(log, file).map_err(|e| {
            ipc_proto::warn_limited!("NIC {}: SET_LOG_BASE rejected: {e}", self.nic.id);
            VuError::InvalidParam
        })?;
        self.log = Some(Arc::new(map));
        if self.acked_features & LOG_ALL != 0 {
            self.restart_running();
        }
        Ok(())
    }
}
