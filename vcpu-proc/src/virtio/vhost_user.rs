//! The vhost-user frontend of one connection: rust-vmm's `vhost` crate
//! (`vhost::vhost_user::Frontend`) over a Unix stream the broker connected
//! for us (vcpu-proc opens no sockets itself).
//!
//! [`Connection::handshake`] runs the session set-up (SET_OWNER, features,
//! protocol features, queue number); [`Connection::start`] hands the live
//! device to the backend (SET_FEATURES, SET_MEM_TABLE, SET_INFLIGHT_FD,
//! then per queue SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE), in the order
//! QEMU's `vhost_dev_start` uses (its guest notifiers, hence the call fd,
//! are set up before the kick fd). The same sequence replays a live device
//! onto a freshly restarted backend (see `reconnect.rs`).
//!
//! While a migration runs, [`Connection::start`] also hands over the
//! dirty log (`VHOST_F_LOG_ALL` in SET_FEATURES, SET_LOG_BASE, the log
//! flag and the used ring's guest address in each SET_VRING_ADDR), and
//! [`Connection::set_dirty_log`] turns logging on or off on a live
//! device (see `device/dirty.rs`).
//!
//! A connection is used only by its session thread (`session.rs`), never
//! by a vCPU thread; the session's watcher bounds every request.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use ipc_proto::trace_point;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures, VhostUserVringAddrFlags,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::dirty_log::VhostLog;
use super::inflight::{InflightBuffer, InflightError};
use crate::memory::GuestMemoryMmap;
use crate::trace;

/// Protocol features this frontend uses when the backend offers them.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP
}

/// `VHOST_F_LOG_ALL`: the feature bit with which the frontend turns the
/// backend's dirty logging on (never offered to the guest).
pub const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// Errors of the vhost-user frontend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// A request failed.
    #[error("vhost-user {op} failed")]
    Request {
        /// The request.
        op: &'static str,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The socket could not be configured.
    #[error("cannot configure the vhost-user socket")]
    Socket(#[source] std::io::Error),
    /// The backend does not offer what a virtio-mmio v2 device needs.
    #[error("the backend does not offer {0}")]
    MissingFeature(&'static str),
    /// A ring lies outside guest RAM or across regions.
    #[error("queue {queue}: ring at {gpa:#x} (+{len:#x}) is not inside guest RAM")]
    BadRing {
        /// Queue index.
        queue: usize,
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Guest RAM is not file backed (it must be the shared memfd).
    #[error("guest memory region at {0:#x} is not backed by the memory fd")]
    NotShared(u64),
    /// The inflight region is unusable.
    #[error("inflight region")]
    Inflight(#[source] InflightError),
    /// The backend went away during the request, well before its deadline
    /// (it died: not a refusal and not a hang).
    #[error("the backend went away")]
    BackendGone(#[source] Box<VhostUserError>),
}

impl VhostUserError {
    /// True when the connection is unusable (the backend died, or the
    /// stream is out of step) as opposed to the backend refusing a request.
    pub fn connection_lost(&self) -> bool {
        use vhost::vhost_user::Error as E;
        match self {
            VhostUserError::Request { source, .. } => match source {
                vhost::Error::VhostUserProtocol(e) => match e {
                    E::InvalidParam
                    | E::InvalidOperation(_)
                    | E::InactiveFeature(_)
                    | E::InactiveOperation(_)
                    | E::FeatureMismatch
                    | E::BackendInternalError => false,
                    E::InvalidMessage
                    | E::IncorrectFds
                    | E::OversizedMsg
                    | E::PartialMessage
                    | E::SocketRetry(_)
                    | E::SocketBroken(_)
                    | E::SocketError(_)
                    | E::SocketConnect(_)
                    | E::Disconnected
                    | E::InvalidSocketFd(_)
                    | E::NotUnixSocket
                    | E::NotStreamSocket
                    | E::FrontendInternalError
                    | E::ReqHandlerError(_)
                    | E::MemFdCreateError
                    | E::FileTruncateError
                    | E::MemFdSealError => true,
                },
                vhost::Error::IOError(_) => true,
                vhost::Error::InvalidOperation
                | vhost::Error::InvalidGuestMemory
                | vhost::Error::InvalidGuestMemoryRegion
                | vhost::Error::InvalidIotlbMsg
                | vhost::Error::InvalidQueue
                | vhost::Error::DescriptorTableAddress
                | vhost::Error::UsedAddress
                | vhost::Error::AvailAddress
                | vhost::Error::LogAddress => false,
            },
            VhostUserError::Socket(_) | VhostUserError::BackendGone(_) => true,
            VhostUserError::MissingFeature(_)
            | VhostUserError::BadRing { .. }
            | VhostUserError::NotShared(_)
            | VhostUserError::Inflight(_) => false,
        }
    }
}

/// Result of frontend operations.
pub type Result<T> = std::result::Result<T, VhostUserError>;

fn req<T>(op: &'static str, r: vhost::Result<T>) -> Result<T> {
    trace_point!(trace::vhost_user_frontend_msg(op, r.is_ok()));
    r.map_err(|source| VhostUserError::Request { op, source })
}

/// One queue as handed to the backend.
#[derive(Debug)]
pub struct QueueStart<'a> {
    /// Queue index.
    pub index: usize,
    /// Queue size chosen by the driver.
    pub size: u16,
    /// Largest queue size.
    pub max_size: u16,
    /// Descriptor table (guest physical).
    pub desc: u64,
    /// Available ring (guest physical).
    pub avail: u64,
    /// Used ring (guest physical).
    pub used: u64,
    /// Avail index the backend continues from.
    pub base: u16,
    /// Kick eventfd (the queue's ioeventfd).
    pub kick: &'a EventFd,
    /// Call eventfd (the device's irqfd).
    pub call: &'a EventFd,
}

/// A live ring's guest-physical addresses, for SET_VRING_ADDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGpa {
    /// Queue index.
    pub index: usize,
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring (also its log address while logging).
    pub used: u64,
}

/// A handshaken vhost-user session.
pub struct Connection {
    frontend: Frontend,
    /// A second handle on the socket, used to shut it down.
    stream: UnixStream,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    queue_num: u16,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol", &self.protocol)
            .field("queue_num", &self.queue_num)
            .finish()
    }
}

/// Host virtual address of `[gpa, gpa + len)` if it is one contiguous
/// piece of guest RAM.
fn host_range(mem: &GuestMemoryMmap, queue: usize, gpa: u64, len: u64) -> Result<u64> {
    let bad = || VhostUserError::BadRing { queue, gpa, len };
    let last = gpa.checked_add(len.saturating_sub(1)).ok_or_else(bad)?;
    let start = mem.get_host_address(GuestAddress(gpa)).map_err(|_| bad())?;
    let end = mem
        .get_host_address(GuestAddress(last))
        .map_err(|_| bad())?;
    if (end as u64).wrapping_sub(start as u64) != last - gpa {
        return Err(bad());
    }
    Ok(start as u64)
}

/// The memory table of `mem` for SET_MEM_TABLE: each region's guest
/// address, our mapping address, and its offset in the shared memfd.
pub fn memory_table(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>> {
    mem.iter()
        .map(|r| {
            let gpa = r.start_addr().raw_value();
            let fo = r.file_offset().ok_or(VhostUserError::NotShared(gpa))?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: gpa,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: fo.start(),
                mmap_handle: fo.file().as_raw_fd(),
            })
        })
        .collect()
}

/// The backend's view of queue `q`: its rings as our host addresses, if
/// each lies inside guest RAM.
pub fn vring_config(mem: &GuestMemoryMmap, q: &QueueStart<'_>) -> Result<VringConfigData> {
    ring_config(mem, q.max_size, &q.ring(), false)
}

/// SET_VRING_ADDR's view of ring `r`; with `log`, the backend logs its
/// used-ring writes at the used ring's guest address (VHOST_VRING_F_LOG).
pub fn ring_config(
    mem: &GuestMemoryMmap,
    max_size: u16,
    r: &RingGpa,
    log: bool,
) -> Result<VringConfigData> {
    let n = u64::from(r.size);
    Ok(VringConfigData {
        queue_max_size: max_size,
        queue_size: r.size,
        flags: if log {
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
        } else {
            0
        },
        desc_table_addr: host_range(mem, r.index, r.desc, 16 * n)?,
        used_ring_addr: host_range(mem, r.index, r.used, 6 + 8 * n)?,
        avail_ring_addr: host_range(mem, r.index, r.avail, 6 + 2 * n)?,
        log_addr: log.then_some(r.used),
    })
}

impl QueueStart<'_> {
    /// The ring's addresses.
    pub fn ring(&self) -> RingGpa {
        RingGpa {
            index: self.index,
            size: self.size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        }
    }
}

impl Connection {
    /// Runs the session set-up on a connected stream: SET_OWNER,
    /// GET_FEATURES, GET/SET_PROTOCOL_FEATURES and GET_QUEUE_NUM.
    pub fn handshake(stream: UnixStream, max_queues: u16) -> Result<Self> {
        let handle = stream.try_clone().map_err(VhostUserError::Socket)?;
        let mut frontend = Frontend::from_stream(stream, u64::from(max_queues));
        req("SET_OWNER", frontend.set_owner())?;
        let backend_features = req("GET_FEATURES", frontend.get_features())?;
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if backend_features & proto_bit == 0 {
            return Err(VhostUserError::MissingFeature(
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        let offered = req("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        let protocol = offered & wanted_protocol_features();
        req(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(protocol),
        )?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let queue_num = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = req("GET_QUEUE_NUM", frontend.get_queue_num())?;
            u16::try_from(n).unwrap_or(u16::MAX).min(max_queues)
        } else {
            1
        };
        Ok(Connection {
            frontend,
            stream: handle,
            backend_features,
            protocol,
            queue_num,
        })
    }

    /// The backend's virtio feature bits, without the vhost-user-only
    /// PROTOCOL_FEATURES bit.
    pub fn device_features(&self) -> u64 {
        self.backend_features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// Queues the backend serves (at most the frontend's maximum).
    pub fn queue_num(&self) -> u16 {
        self.queue_num
    }

    /// The negotiated protocol features.
    pub fn protocol(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// True when the backend serves the config space (CONFIG).
    pub fn serves_config(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
    }

    /// True when the backend tracks inflight I/O (INFLIGHT_SHMFD).
    pub fn tracks_inflight(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// True when the backend can send requests back (BACKEND_REQ).
    pub fn has_backend_req(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::BACKEND_REQ)
    }

    /// Hands the backend its end of the backend request channel
    /// (SET_BACKEND_REQ_FD).
    pub fn set_backend_req_fd(&mut self, fd: &dyn AsRawFd) -> Result<()> {
        req(
            "SET_BACKEND_REQ_FD",
            self.frontend.set_backend_request_fd(fd),
        )
    }

    /// Shuts the socket down so the backend (and our watcher) see EOF.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// A duplicate of the socket, for the disconnection watcher.
    pub fn watch_handle(&self) -> Result<UnixStream> {
        self.stream.try_clone().map_err(VhostUserError::Socket)
    }

    /// Reads `len` bytes of the device config space from offset 0 (the
    /// whole space: some backends ignore the offset).
    pub fn get_config(&mut self, len: u32) -> Result<Vec<u8>> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(VhostUserError::MissingFeature(
                "VHOST_USER_PROTOCOL_F_CONFIG",
            ));
        }
        let buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let (_, data) = req(
            "GET_CONFIG",
            self.frontend
                .get_config(0, len, VhostUserConfigFlags::WRITABLE, &buf),
        )?;
        Ok(data)
    }

    /// Writes `data` at `offset` of the device config space.
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(VhostUserError::MissingFeature(
                "VHOST_USER_PROTOCOL_F_CONFIG",
            ));
        }
        req(
            "SET_CONFIG",
            self.frontend
                .set_config(offset, VhostUserConfigFlags::WRITABLE, data),
        )
    }

    /// GET_INFLIGHT_FD for `num_queues` queues of `queue_size`, or None
    /// when the backend does not track inflight I/O.
    pub fn get_inflight(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Option<InflightBuffer>> {
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Ok(None);
        }
        let ask = VhostUserInflight::new(0, 0, num_queues, queue_size);
        let (info, file) = req("GET_INFLIGHT_FD", self.frontend.get_inflight_fd(&ask))?;
        InflightBuffer::new(file, info)
            .map(Some)
            .map_err(VhostUserError::Inflight)
    }

    /// True when the backend can log its writes into guest RAM: it
    /// offers LOG_ALL and LOG_SHMFD was negotiated.
    pub fn logs_dirty_pages(&self) -> bool {
        self.backend_features & LOG_ALL != 0
            && self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD)
    }

    /// SET_LOG_BASE: the backend logs into `log` (its whole memfd).
    fn set_log_base(&mut self, log: &VhostLog) -> Result<()> {
        if !self.logs_dirty_pages() {
            return Err(VhostUserError::MissingFeature(
                "VHOST_F_LOG_ALL with VHOST_USER_PROTOCOL_F_LOG_SHMFD",
            ));
        }
        // Not through the `vhost` crate, which hangs on libvhost-user's
        // reply: see `raw_msg.rs`.
        req(
            "SET_LOG_BASE",
            super::raw_msg::set_log_base(&self.stream, log.fd(), log.size()),
        )
    }

    /// True when the backend can broadcast a RARP for the frontend
    /// (VHOST_USER_PROTOCOL_F_RARP).
    pub fn sends_rarp(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::RARP)
    }

    /// SEND_RARP: the backend announces `mac` (QEMU's
    /// `vhost_user_migration_done`; written by hand, see `raw_msg.rs`).
    pub fn send_rarp(&mut self, mac: [u8; 6]) -> Result<()> {
        if !self.sends_rarp() {
            return Err(VhostUserError::MissingFeature("VHOST_USER_PROTOCOL_F_RARP"));
        }
        req("SEND_RARP", super::raw_msg::send_rarp(&self.stream, mac))
    }

    /// Turns dirty logging on (`log`: SET_LOG_BASE, SET_VRING_ADDR with
    /// the log flag for each of `rings`, SET_FEATURES with LOG_ALL) or off
    /// (None: SET_FEATURES without LOG_ALL, SET_VRING_ADDR without the
    /// flag) on a live device whose driver features are
    /// `driver_features`. Returns once the backend has taken every
    /// request (without REPLY_ACK, a GET_FEATURES round trip behind them
    /// makes sure, as QEMU does): from then on it logs, or no longer does.
    pub fn set_dirty_log(
        &mut self,
        driver_features: u64,
        log: Option<&VhostLog>,
        mem: &GuestMemoryMmap,
        max_size: u16,
        rings: &[RingGpa],
    ) -> Result<()> {
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let base = (driver_features & !LOG_ALL) | proto_bit;
        if let Some(log) = log {
            self.set_log_base(log)?;
            for r in rings {
                let data = ring_config(mem, max_size, r, true)?;
                req(
                    "SET_VRING_ADDR",
                    self.frontend.set_vring_addr(r.index, &data),
                )?;
            }
            req("SET_FEATURES", self.frontend.set_features(base | LOG_ALL))?;
            return self.barrier();
        }
        req("SET_FEATURES", self.frontend.set_features(base))?;
        for r in rings {
            let data = ring_config(mem, max_size, r, false)?;
            req(
                "SET_VRING_ADDR",
                self.frontend.set_vring_addr(r.index, &data),
            )?;
        }
        self.barrier()
    }

    /// Waits until the backend has handled every request sent so far:
    /// with REPLY_ACK each was acknowledged already; without, a request
    /// with a reply (GET_FEATURES) is answered only after them.
    fn barrier(&mut self) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            req("GET_FEATURES", self.frontend.get_features())?;
        }
        Ok(())
    }

    /// Starts the device: features, memory, inflight region, queues;
    /// with `log`, with dirty logging on (a migration runs).
    pub fn start(
        &mut self,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        inflight: Option<&InflightBuffer>,
        queues: &[QueueStart<'_>],
        log: Option<&VhostLog>,
    ) -> Result<()> {
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let log_bit = if log.is_some() { LOG_ALL } else { 0 };
        req(
            "SET_FEATURES",
            self.frontend
                .set_features((driver_features & !LOG_ALL) | proto_bit | log_bit),
        )?;
        let table = memory_table(mem)?;
        req("SET_MEM_TABLE", self.frontend.set_mem_table(&table))?;
        if let Some(log) = log {
            self.set_log_base(log)?;
        }
        if let Some(buf) = inflight {
            req(
                "SET_INFLIGHT_FD",
                self.frontend
                    .set_inflight_fd(buf.info(), buf.file().as_raw_fd()),
            )?;
        }
        for q in queues {
            let data = ring_config(mem, q.max_size, &q.ring(), log.is_some())?;
            req(
                "SET_VRING_NUM",
                self.frontend.set_vring_num(q.index, q.size),
            )?;
            req(
                "SET_VRING_BASE",
                self.frontend.set_vring_base(q.index, q.base),
            )?;
            req(
                "SET_VRING_ADDR",
                self.frontend.set_vring_addr(q.index, &data),
            )?;
            // The call fd first: a backend may serve a pending kick as soon
            // as it has the kick fd, and must be able to signal then.
            req(
                "SET_VRING_CALL",
                self.frontend.set_vring_call(q.index, q.call),
            )?;
            req(
                "SET_VRING_KICK",
                self.frontend.set_vring_kick(q.index, q.kick),
            )?;
            req(
                "SET_VRING_ENABLE",
                self.frontend.set_vring_enable(q.index, true),
            )?;
        }
        Ok(())
    }

    /// Stops queue `index` (SET_VRING_ENABLE 0, GET_VRING_BASE) and
    /// returns the backend's avail position.
    pub fn stop_queue(&mut self, index: usize) -> Result<u16> {
        req(
            "SET_VRING_ENABLE",
            self.frontend.set_vring_enable(index, false),
        )?;
        let base = req("GET_VRING_BASE", self.frontend.get_vring_base(index))?;
        Ok((base & 0xffff) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use vm_memory::FileOffset;

    #[test]
    fn refusals_keep_the_connection_and_socket_errors_lose_it() {
        let refused = VhostUserError::Request {
            op: "SET_FEATURES",
            source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::BackendInternalError),
        };
        let gone = VhostUserError::Request {
            op: "GET_FEATURES",
            source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::Disconnected),
        };
        assert!(!refused.connection_lost());
        assert!(gone.connection_lost());
    }

    fn shared_mem(size: usize) -> GuestMemoryMmap {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = File::from(fd);
        f.set_len(size as u64).unwrap();
        GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(f, 0)),
        )])
        .unwrap()
    }

    #[test]
    fn memory_table_describes_each_region_with_its_file_offset() {
        let mem = shared_mem(1 << 20);
        let t = memory_table(&mem).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].guest_phys_addr, 0);
        assert_eq!(t[0].memory_size, 1 << 20);
        assert_eq!(t[0].mmap_offset, 0);
        assert!(t[0].mmap_handle >= 0);
    }

    #[test]
    fn rings_outside_guest_ram_are_rejected() {
        let mem = shared_mem(1 << 20);
        assert!(host_range(&mem, 0, 0x1000, 0x100).is_ok());
        assert!(matches!(
            host_range(&mem, 0, (1 << 20) - 8, 0x100),
            Err(VhostUserError::BadRing { .. })
        ));
        assert!(host_range(&mem, 0, u64::MAX - 2, 16).is_err());
    }
}
