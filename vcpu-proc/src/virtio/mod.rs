//! virtio-mmio devices whose queues are served by vhost-user backends in
//! other processes.
//!
//! The guest sees device `slot` as a virtio-mmio (version 2) window at
//! `VIRTIO_MMIO_BASE + 0x1000 * slot` raising GSI `VIRTIO_MMIO_GSI_BASE +
//! slot`. The data path never enters vcpu-proc: the QueueNotify register
//! of each queue is a KVM ioeventfd that is the backend's kick fd, and the
//! backend's call fd is a KVM irqfd on the device's GSI. vcpu-proc only
//! handles the control registers (MMIO exits) and the vhost-user session.
//!
//! - [`mmio`]: the transport register state machine (no KVM, no sockets).
//! - [`device`]: the vhost-user device behind a transport.
//! - [`vhost_user`]: one vhost-user session (the `vhost` crate's frontend).
//! - [`session`]: the thread that owns a connection, and the request
//!   deadline.
//! - [`backend_req`]: the backend→frontend channel (config changes).
//! - [`kind`]: what distinguishes one device kind (type, config space,
//!   features, queues), [`net`] the virtio-net specifics.
//! - [`inflight`]: the inflight-I/O buffer kept across backend crashes.
//! - [`reconnect`]: hang-up watching and the replay after a reconnect.
//! - [`registry`]: the VM's devices by id.
//! - [`suspend`]: stopping live rings at the backend for a save and
//!   starting them again (`suspend`/`resume`, the vring state).
//!
//! The public handle is [`VirtioMmioDevice`].

pub mod backend_req;
pub mod device;
pub mod dirty_log;
pub mod inflight;
pub mod kind;
pub mod mmio;
pub mod net;
pub mod raw_msg;
pub mod reconnect;
pub mod registry;
pub mod scsi;
pub mod session;
pub mod suspend;
pub mod vhost_user;

use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusDevice, BusError};
use crate::devices::GuestAction;
use crate::layout;
use crate::memory::GuestMemoryMmap;
use device::{Adopted, DeviceParts, SessionParams, VhostUserDevice};
pub use kind::{DeviceKind, VIRTIO_BLK_CONFIG_LEN, VIRTIO_ID_BLOCK, VIRTIO_ID_NET};
use mmio::{MmioTransport, VirtioBackend};
use reconnect::{next_generation, Link, WatchParams};
pub use registry::VirtioDevices;
use session::{Opened, Session, SessionError};
use vhost_user::VhostUserError;

/// Default largest queue size offered to the guest.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// What a device reports to vcpu-proc's owner (to forward to the broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioEvent {
    /// The backend's socket hung up; the device waits for
    /// [`VirtioMmioDevice::reconnect`].
    Disconnected {
        /// Device id.
        id: String,
    },
    /// A new backend took over the device.
    Reconnected {
        /// Device id.
        id: String,
    },
}

/// Errors of virtio device set-up and reconnection.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A device kind the frontend cannot drive yet.
    #[error("this vcpu-proc has no {0:?} frontend")]
    UnsupportedKind(ipc_proto::vcpu::VhostUserKind),
    /// A device whose backend cannot log its writes into guest RAM
    /// (`VHOST_F_LOG_ALL`), so the device cannot be migrated live.
    #[error("device '{0}' cannot log its writes to guest memory (vhost-user dirty logging)")]
    NoDirtyLog(String),
    /// A device's backend did not confirm dirty logging (it refused, went
    /// away or did not answer within the deadline while it was turned on).
    #[error("device '{0}': the backend did not confirm vhost-user dirty logging in time")]
    DirtyLogNotConfirmed(String),
    /// The slot is outside the platform's virtio-mmio window.
    #[error("virtio-mmio slot {0} does not exist (0..{max})", max = layout::VIRTIO_MMIO_SLOTS)]
    BadSlot(u32),
    /// The queue geometry is unusable.
    #[error("invalid queue geometry: {num_queues} queues of {queue_size}")]
    BadQueues {
        /// Queues asked for.
        num_queues: u16,
        /// Queue size asked for.
        queue_size: u16,
    },
    /// A vhost-user request failed.
    #[error("vhost-user session")]
    Frontend(#[source] VhostUserError),
    /// The session could not be opened (or its handshake failed).
    #[error("vhost-user session")]
    Session(#[source] SessionError),
    /// The replay after a reconnection did not finish within the deadline.
    #[error("the backend did not take the live queues within the deadline")]
    ReplayTimedOut,
    /// The backend does not offer VIRTIO_F_VERSION_1.
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// A restarted backend offers other features than the guest saw.
    #[error("backend features changed from {before:#x} to {after:#x}")]
    FeaturesChanged {
        /// Features the guest saw.
        before: u64,
        /// Features the new backend offers.
        after: u64,
    },
    /// The backend serves fewer queues than the device has.
    #[error("backend serves {offered} queues, {wanted} needed")]
    TooFewQueues {
        /// Queues of the device.
        wanted: u16,
        /// Queues the backend serves.
        offered: u16,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the watcher thread")]
    Thread(#[source] std::io::Error),
    /// KVM refused an ioeventfd or irqfd.
    #[error("KVM refused the {what}")]
    Kvm {
        /// ioeventfd or irqfd.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// No device has this id.
    #[error("no virtio device '{0}'")]
    NoDevice(String),
    /// A device with this id exists.
    #[error("duplicate virtio device id '{0}'")]
    DuplicateId(String),
    /// The MMIO window is taken.
    #[error("cannot place the device on the MMIO bus")]
    Bus(#[source] BusError),
}

/// Result of virtio device operations.
pub type Result<T> = std::result::Result<T, VirtioError>;

impl<B: VirtioBackend> BusDevice for MmioTransport<B> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction> {
        MmioTransport::write(self, offset, data)
    }
}

/// How to attach a vhost-user device.
pub struct VhostUserParams<'a> {
    /// Device id (QMP `id`), used in events and logs.
    pub id: String,
    /// virtio-mmio slot (0..8): address and GSI follow from it.
    pub slot: u32,
    /// A socket already connected to the backend (the broker connects it).
    pub socket: UnixStream,
    /// Guest memory; every region must be backed by the shared memfd.
    pub mem: GuestMemoryMmap,
    /// The VM, for the ioeventfds and the irqfd.
    pub vm: &'a VmFd,
    /// The MMIO bus the transport goes on.
    pub bus: &'a Bus,
    /// Where disconnection/reconnection events go.
    pub events: Sender<VirtioEvent>,
    /// Queues wanted (capped by what the backend serves).
    pub num_queues: u16,
    /// Largest queue size offered to the guest (power of two).
    pub queue_size: u16,
}

/// How to attach a vhost-user-blk device.
pub type VhostUserBlkParams<'a> = VhostUserParams<'a>;

type Transport = MmioTransport<VhostUserDevice>;

/// A virtio-mmio device on the MMIO bus, backed by a vhost-user backend.
#[derive(Debug)]
pub struct VirtioMmioDevice {
    id: String,
    slot: u32,
    link: Link,
    inner: Arc<Mutex<Transport>>,
}

fn queue_notify_addr(base: u64) -> IoEventAddress {
    IoEventAddress::Mmio(base + mmio::reg::QUEUE_NOTIFY)
}

impl VirtioMmioDevice {
    /// Attaches a vhost-user-blk backend as virtio-mmio device `slot`:
    /// runs the vhost-user handshake, reads the config space, registers a
    /// QueueNotify ioeventfd per queue and the irqfd of the slot's GSI,
    /// and puts the transport on `bus`.
    pub fn new_vhost_user_blk(p: VhostUserBlkParams<'_>) -> Result<Self> {
        Self::new_vhost_user(p, DeviceKind::block())
    }

    /// Attaches a vhost-user-net backend as virtio-net device `slot`
    /// (`mac`: the address shown when the backend serves no config
    /// space; see `net.rs`).
    pub fn new_vhost_user_net(p: VhostUserParams<'_>, mac: Option<[u8; 6]>) -> Result<Self> {
        Self::new_vhost_user(p, DeviceKind::net(mac))
    }

    /// Attaches a vhost-user backend of any device type (`kind`: its
    /// per-kind description, `kind.rs`) as virtio-mmio device `slot`.
    pub fn new_vhost_user(p: VhostUserParams<'_>, kind: DeviceKind) -> Result<Self> {
        if p.slot >= layout::VIRTIO_MMIO_SLOTS {
            return Err(VirtioError::BadSlot(p.slot));
        }
        if p.num_queues == 0 || p.queue_size == 0 || !p.queue_size.is_power_of_two() {
            return Err(VirtioError::BadQueues {
                num_queues: p.num_queues,
                queue_size: p.queue_size,
            });
        }
        let base = Self::base_of(p.slot);
        let gsi = layout::VIRTIO_MMIO_GSI_BASE + p.slot;
        let link: Link = Arc::default();
        let (session, opened) = open_session(
            p.socket,
            &SessionParams {
                id: p.id.clone(),
                num_queues: p.num_queues,
                config_len: kind.config_len,
                link: link.clone(),
                events: p.events.clone(),
                mem: p.mem.clone(),
            },
        )?;
        let shape = kind.shape(
            opened.device_features,
            opened.config.is_some(),
            p.num_queues,
            opened.queue_num,
        )?;
        if shape.features & mmio::F_VERSION_1 == 0 {
            return Err(VirtioError::NotModern);
        }
        let Some(config) = opened.config.clone().or_else(|| kind.built_config(&shape)) else {
            return Err(VirtioError::Frontend(VhostUserError::MissingFeature(
                "VHOST_USER_PROTOCOL_F_CONFIG",
            )));
        };
        let num_queues = shape.queues;
        let call = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        p.vm.register_irqfd(&call, gsi)
            .map_err(|source| VirtioError::Kvm {
                what: "irqfd",
                source,
            })?;
        let mut kicks = Vec::new();
        for q in 0..num_queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
            p.vm.register_ioevent(&evt, &queue_notify_addr(base), u32::from(q))
                .map_err(|source| VirtioError::Kvm {
                    what: "ioeventfd",
                    source,
                })?;
            kicks.push(evt);
        }
        let kind_type = kind.device_type;
        let dev = VhostUserDevice::new(DeviceParts {
            id: p.id.clone(),
            kind,
            session,
            opened,
            features: shape.features,
            config,
            link: link.clone(),
            events: p.events,
            num_queues,
            queue_max_size: p.queue_size,
            mem: p.mem,
            kicks,
            call,
        });
        let inner = Arc::new(Mutex::new(MmioTransport::new(dev)));
        p.bus
            .insert(base, layout::VIRTIO_MMIO_SIZE, inner.clone())
            .map_err(VirtioError::Bus)?;
        tracing::info!(
            "virtio-mmio device {} (vhost-user, type {}) at {base:#x}, GSI {gsi}, {num_queues} queues",
            p.id,
            kind_type
        );
        Ok(VirtioMmioDevice {
            id: p.id,
            slot: p.slot,
            link,
            inner,
        })
    }

    /// MMIO base of `slot`.
    pub fn base_of(slot: u32) -> u64 {
        layout::VIRTIO_MMIO_BASE + layout::VIRTIO_MMIO_SIZE * u64::from(slot)
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The MMIO base address.
    pub fn base(&self) -> u64 {
        Self::base_of(self.slot)
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        layout::VIRTIO_MMIO_GSI_BASE + self.slot
    }

    /// The device as the DSDT declares it (`LNRO0005`).
    pub fn acpi_device(&self) -> crate::acpi::VirtioMmioDevice {
        crate::acpi::VirtioMmioDevice {
            base: self.base(),
            size: layout::VIRTIO_MMIO_SIZE,
            gsi: self.gsi(),
        }
    }

    /// True while the backend connection is believed alive (it turns
    /// false when the watcher sees the socket hang up).
    pub fn is_connected(&self) -> bool {
        reconnect::lock(&self.link).connected
    }

    fn lock(&self) -> MutexGuard<'_, Transport> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the device to a new backend on `socket` (already connected)
    /// and replays the session, including the live queues and the
    /// inflight buffer. On error the device stays disconnected. The
    /// handshake and the replay run on the new session's thread, each
    /// request bounded by the deadline, without the transport lock: the
    /// guest's vCPUs keep using the device meanwhile.
    pub fn reconnect(&self, socket: UnixStream) -> Result<()> {
        let params = self.lock().backend().session_params();
        let (session, opened) = open_session(socket, &params)?;
        let adopted = self.lock().backend_mut().adopt(session, opened)?;
        let Adopted::Replaying { replay, token } = adopted else {
            return Ok(());
        };
        match replay.wait() {
            Some(Ok(())) => {}
            // Refused: the device reports DEVICE_NEEDS_RESET, the
            // connection stays.
            Some(Err(e)) if !e.connection_lost() => {}
            Some(Err(e)) => {
                self.lock().backend_mut().drop_session(token);
                return Err(VirtioError::Frontend(e));
            }
            None => {
                self.lock().backend_mut().drop_session(token);
                return Err(VirtioError::ReplayTimedOut);
            }
        }
        self.lock().backend_mut().finish_reconnect(token);
        Ok(())
    }

    /// Resets the device (machine reset): the backend's queues stop, the
    /// inflight buffer is dropped, the guest must set the device up again.
    pub fn reset(&self) {
        self.lock().reset();
    }

    /// The device status register as the guest set it.
    pub fn status(&self) -> u32 {
        self.lock().status()
    }

    /// Removes the KVM ioeventfds and irqfd (the bus entry stays: the bus
    /// has no removal; call this only when the VM is torn down).
    pub fn unregister(&self, vm: &VmFd) -> Result<()> {
        let t = self.lock();
        let dev = t.backend();
        for (q, evt) in dev.kicks().iter().enumerate() {
            let q = u32::try_from(q).unwrap_or(u32::MAX);
            vm.unregister_ioevent(evt, &queue_notify_addr(self.base()), q)
                .map_err(|source| VirtioError::Kvm {
                    what: "ioeventfd",
                    source,
                })?;
        }
        vm.unregister_irqfd(dev.call(), self.gsi())
            .map_err(|source| VirtioError::Kvm {
                what: "irqfd",
                source,
            })
    }

    /// Runs `f` on the transport (tests and diagnostics).
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut MmioTransport<VhostUserDevice>) -> R) -> R {
        f(&mut self.lock())
    }
}

/// Opens a session for the device `p` describes on `socket`.
fn open_session(socket: UnixStream, p: &SessionParams) -> Result<(Session, Opened)> {
    Session::open(socket, p.num_queues, p.config_len, |busy| WatchParams {
        id: p.id.clone(),
        generation: next_generation(&p.link),
        link: p.link.clone(),
        events: p.events.clone(),
        busy,
        mem: p.mem.clone(),
    })
    .map_err(VirtioError::Session)
}

#[cfg(test)]
mod dirty_log_tests;
#[cfg(test)]
mod fake_backend;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod rarp_tests;
#[cfg(test)]
mod tests;
