//! Connection set-up as a VMM's vhost-user frontend does it, using the
//! `vhost` crate's [`Frontend`]: owner, virtio and protocol features,
//! memory table, inflight region, then each ring.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{HarnessError, Result};
use crate::memory::GuestMem;

/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// An established vhost-user connection.
pub struct Connection {
    /// The frontend endpoint.
    pub fe: Frontend,
    /// Acked virtio features.
    pub features: u64,
    /// Acked protocol features.
    pub protocol: VhostUserProtocolFeatures,
}

/// The rings of one queue, as guest physical addresses.
#[derive(Debug, Clone, Copy)]
pub struct RingAddrs {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// Connect to `path`, retrying until `timeout` passes (the backend may
/// still be starting).
pub fn connect_retry(path: &Path, num_queues: u64, timeout: Duration) -> Result<Frontend> {
    let start = Instant::now();
    loop {
        match Frontend::connect(path, num_queues) {
            Ok(f) => return Ok(f),
            Err(e) if start.elapsed() > timeout => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

impl Connection {
    /// Negotiate features: the virtio features in `want` the backend
    /// offers, and CONFIG/MQ/REPLY_ACK/INFLIGHT_SHMFD.
    pub fn negotiate(mut fe: Frontend, want: u64) -> Result<Self> {
        fe.set_owner()?;
        let offered = fe.get_features()?;
        let features = offered & (want | F_PROTOCOL_FEATURES);
        fe.set_features(features)?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & F_PROTOCOL_FEATURES != 0 {
            let p = fe.get_protocol_features()?;
            protocol = p
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::INFLIGHT_SHMFD
                    | VhostUserProtocolFeatures::LOG_SHMFD);
            fe.set_protocol_features(protocol)?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        Ok(Connection {
            fe,
            features,
            protocol,
        })
    }

    /// Number of queues the backend supports (1 without MQ).
    pub fn queue_num(&mut self) -> Result<u64> {
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Ok(self.fe.get_queue_num()?);
        }
        Ok(1)
    }

    /// Read `len` bytes of config space.
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>> {
        let buf = vec![0u8; len as usize];
        let (_, payload) = self
            .fe
            .get_config(0, len, VhostUserConfigFlags::WRITABLE, &buf)?;
        Ok(payload)
    }

    /// Write `data` at `offset` of config space (SET_CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.fe
            .set_config(offset, VhostUserConfigFlags::WRITABLE, data)?;
        Ok(())
    }

    /// SET_MEM_TABLE with the harness memory.
    pub fn set_memory(&mut self, mem: &GuestMem) -> Result<()> {
        self.fe.set_mem_table(&[mem.region_info()?])?;
        Ok(())
    }

    /// Inflight region: get a fresh one (if `saved` is None) and set it.
    /// Returns the region to keep for reconnects, or None when the backend
    /// does not support it.
    pub fn set_inflight(
        &mut self,
        saved: Option<(VhostUserInflight, File)>,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Option<(VhostUserInflight, File)>> {
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Ok(None);
        }
        let (info, file) = match saved {
            Some(s) => s,
            None => self
                .fe
                .get_inflight_fd(&VhostUserInflight::new(0, 0, num_queues, queue_size))?,
        };
        self.fe.set_inflight_fd(&info, file.as_raw_fd())?;
        Ok(Some((info, file)))
    }

    /// Set up and enable one ring.
    pub fn setup_queue(
        &mut self,
        mem: &GuestMem,
        index: usize,
        r: RingAddrs,
        base: u16,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<()> {
        self.fe.set_vring_num(index, r.size)?;
        self.fe.set_vring_base(index, base)?;
        let cfg = VringConfigData {
            queue_max_size: r.size,
            queue_size: r.size,
            flags: 0,
            desc_table_addr: mem.va(r.desc)?,
            used_ring_addr: mem.va(r.used)?,
            avail_ring_addr: mem.va(r.avail)?,
            log_addr: None,
        };
        self.fe.set_vring_addr(index, &cfg)?;
        self.fe.set_vring_call(index, call)?;
        self.fe.set_vring_kick(index, kick)?;
        if self.features & F_PROTOCOL_FEATURES != 0 {
            self.fe.set_vring_enable(index, true)?;
        }
        Ok(())
    }

    /// GET_VRING_BASE (stops the ring).
    pub fn stop_queue(&mut self, index: usize) -> Result<u32> {
        Ok(self.fe.get_vring_base(index)?)
    }
}

/// Map a protocol error to the harness error (for callers matching on it).
pub fn is_disconnect(e: &HarnessError) -> bool {
    matches!(e, HarnessError::VhostUser(_))
}
