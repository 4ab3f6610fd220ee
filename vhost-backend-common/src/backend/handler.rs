//! The message handlers of [`VhostBackend`]: the bookkeeping is here, the
//! device's part behind [`BackendDevice`]'s hooks.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;

use super::{io_err, BackendDevice, VhostBackend};
use crate::log::{ring_log_addr, DirtyLog, LOG_ALL};
use crate::memory::MemoryTable;

impl<D: BackendDevice> VhostUserBackendReqHandlerMut for VhostBackend<D> {
    fn set_owner(&mut self) -> VuResult<()> {
        self.trace("SET_OWNER", &());
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.trace("RESET_OWNER", &());
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.trace("RESET_DEVICE", &());
        self.disconnect();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        self.trace("GET_FEATURES", &());
        Ok(self.dev.features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        self.trace("SET_FEATURES", &features);
        self.acked(|b| {
            if features & !b.dev.features() != 0 {
                return Err(VuError::InvalidParam);
            }
            let logging_changed = (b.acked_features ^ features) & LOG_ALL != 0;
            b.acked_features = features;
            if logging_changed {
                b.restart_running();
            }
            b.dev.features_acked(features)
        })
    }

    // A refusal is not answered (the `vhost` crate sends the reply only on
    // success): the connection ends, as for any request it cannot answer.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VuResult<()> {
        self.trace("SET_LOG_BASE", &log.mmap_size);
        let map = DirtyLog::from_message(log, file).map_err(|e| {
            ipc_proto::warn_limited!("{}: SET_LOG_BASE rejected: {e}", self.dev.label());
            VuError::InvalidParam
        })?;
        self.log = Some(Arc::new(map));
        if self.acked_features & LOG_ALL != 0 {
            self.restart_running();
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.trace("SET_MEM_TABLE", &ctx.len());
        self.acked(|b| {
            let table = MemoryTable::new(ctx, files).map_err(|e| {
                ipc_proto::warn_limited!("{}: SET_MEM_TABLE rejected: {e}", b.dev.label());
                VuError::InvalidParam
            })?;
            b.mem = Some(table);
            b.restart_running();
            Ok(None)
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

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.trace("SET_VRING_NUM", &(index, num));
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
        self.trace("SET_VRING_ADDR", &index);
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
        self.trace("SET_VRING_BASE", &(index, base));
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
        self.trace("GET_VRING_BASE", &index);
        let i = usize::try_from(index).map_err(|_| VuError::InvalidParam)?;
        self.slot(index)?;
        self.stop_queue(i);
        let q = self.slot(index)?;
        q.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(q.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.trace("SET_VRING_KICK", &index);
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
        self.trace("SET_VRING_CALL", &index);
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
        self.trace("SET_VRING_ERR", &index);
        self.acked(|b| {
            b.slot(u32::from(index))?;
            Ok(())
        })
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.trace("SET_VRING_ENABLE", &(index, enable));
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

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        self.trace("GET_PROTOCOL_FEATURES", &());
        Ok(self.dev.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.trace("SET_PROTOCOL_FEATURES", &features);
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        self.trace("GET_QUEUE_NUM", &());
        Ok(u64::try_from(self.queues.len()).unwrap_or(u64::MAX))
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        self.trace("GET_CONFIG", &offset);
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
        self.trace("SET_CONFIG", &offset);
        self.acked(|b| b.dev.set_config(offset, buf))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        self.trace("GET_INFLIGHT_FD", &());
        self.dev.get_inflight_fd(inflight)
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        self.trace("SET_INFLIGHT_FD", &());
        self.acked(|b| {
            b.dev.set_inflight_fd(inflight, file)?;
            // Running queues go on in the new region: they would otherwise
            // mark in the old one, which the frontend no longer keeps.
            b.restart_running();
            Ok(())
        })
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
}
