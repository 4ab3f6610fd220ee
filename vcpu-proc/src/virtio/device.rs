//! A virtio device served by a vhost-user backend: the [`VirtioBackend`]
//! behind a virtio-mmio transport. It owns the per-device eventfds (one
//! kick ioeventfd per queue, one call irqfd), the inflight buffer, the
//! cached config space and the current session, and turns the guest's
//! DRIVER_OK / reset / config accesses into requests on the session thread
//! (`session.rs`): config reads are answered from the cache, config writes
//! and activations are queued without waiting, and only a reset waits for
//! its queues to stop — bounded by the request deadline.
//!
//! [`dirty`]: the backend's dirty logging while a migration runs;
//! [`announce`]: a NIC's backend broadcasting its MAC (SEND_RARP).

mod announce;
mod dirty;
pub use dirty::LogChange;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::dirty_log::VhostLog;
use super::inflight::InflightBuffer;
use super::kind::DeviceKind;
use super::mmio::{Activation, VirtioBackend, TRANSPORT_FEATURE_MASK};
use super::reconnect::{self, ambiguous, link_up, used_index, Link, RingAddrs};
use super::session::{Opened, Pending, Session};
use super::vhost_user::{vring_config, Connection, QueueStart, VhostUserError};
use super::{Result, VirtioError, VirtioEvent};
use crate::memory::GuestMemoryMmap;
use ipc_proto::warn_limited;

/// State the session thread's requests update.
#[derive(Debug, Default)]
struct Shared {
    /// The inflight buffer kept for the backend.
    inflight: Option<Arc<InflightBuffer>>,
    /// Bumped by every reset: a request posted before it must not store
    /// an inflight buffer after it.
    epoch: u64,
    /// The config space as last fetched (guest reads are served from it).
    config: Vec<u8>,
    /// The config content changed since the guest last read it (the
    /// config generation advances).
    config_changed: bool,
    /// A config change the driver has not been interrupted for.
    config_irq: bool,
}

impl Shared {
    /// Takes `fresh` as the config space; true if it differs (a fetch of
    /// another size is ignored).
    fn refresh_config(&mut self, fresh: Vec<u8>) -> bool {
        if fresh.len() != self.config.len() || fresh == self.config {
            return false;
        }
        self.config = fresh;
        self.config_changed = true;
        self.config_irq = true;
        true
    }
}

/// The vhost-user side of one virtio-mmio device.
pub struct VhostUserDevice {
    id: String,
    kind: DeviceKind,
    session: Option<Session>,
    link: Link,
    events: Sender<VirtioEvent>,
    /// Features offered to the guest.
    features: u64,
    /// Features the backend offered (the guest's choice is masked with
    /// them before SET_FEATURES: bits the frontend adds stay here).
    backend_features: u64,
    num_queues: u16,
    queue_max_size: u16,
    mem: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    call: EventFd,
    shared: Arc<Mutex<Shared>>,
    needs_reset: Arc<AtomicBool>,
    active: Option<Activation>,
    /// A reconnection is replaying the live queues on `session` (the link
    /// is not up yet, but requests must follow the replay in order).
    replaying: bool,
    /// Bumped by every adopted session: a reconnection finishes or
    /// abandons only its own.
    adopted: u64,
    /// The live rings are stopped at the backend for a save
    /// (`suspend.rs`): the avail index the backend gave back for each
    /// queue (by queue index; 0 for a queue that is not ready). A
    /// reconnection does not restart them; [`VhostUserDevice::resume`]
    /// does.
    suspended: Option<Vec<u16>>,
    /// The vhost-user protocol features of the current session.
    protocol_features: u64,
    /// The dirty log while a migration runs: every start (also the replay
    /// onto a restarted backend) hands it over (see [`dirty`]).
    dirty_log: Option<Arc<VhostLog>>,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("id", &self.id)
            .field("session", &self.session.is_some())
            .field("active", &self.active.is_some())
            .finish()
    }
}

/// Everything a device is built from.
pub struct DeviceParts {
    /// Device id (for events and logs).
    pub id: String,
    /// Device type and config size.
    pub kind: DeviceKind,
    /// The first session, handshaken.
    pub session: Session,
    /// What the handshake found.
    pub opened: Opened,
    /// Features offered to the guest (the kind's shape of the backend's
    /// offer, before the transport's mask).
    pub features: u64,
    /// The config space (the backend's, or built by the kind).
    pub config: Vec<u8>,
    /// Link state shared with the watchers and the public handle.
    pub link: Link,
    /// Where disconnection events go.
    pub events: Sender<VirtioEvent>,
    /// Queues exposed to the guest.
    pub num_queues: u16,
    /// Largest queue size.
    pub queue_max_size: u16,
    /// Guest memory (memfd backed).
    pub mem: GuestMemoryMmap,
    /// Kick eventfds, one per queue, already KVM ioeventfds.
    pub kicks: Vec<EventFd>,
    /// Call eventfd, already a KVM irqfd.
    pub call: EventFd,
}

/// Where a start puts each live ring's avail position (SET_VRING_BASE).
#[derive(Debug, Clone, Copy)]
enum StartFrom<'a> {
    /// A fresh activation: every ring starts at 0.
    Zero,
    /// After a reconnection: the used index in guest memory (the backend
    /// adds what its inflight region still marks).
    UsedIndex,
    /// A resume or a restore: the avail index the backend gave back at
    /// the suspension (by queue index).
    Saved(&'a [u16]),
}

/// One live queue as the start request needs it (owned: it crosses to the
/// session thread).
#[derive(Debug, Clone, Copy)]
struct QueueSpec {
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    base: u16,
}

fn shared_lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs a failed request; a lost connection is hung up (its watcher then
/// reports it).
fn request_failed(id: &str, conn: &Connection, e: &VhostUserError) {
    warn_limited!("vhost-user device {id}: {}", error_chain(e));
    if e.connection_lost() {
        conn.shutdown();
    }
}

/// The result of a posted start of the rings.
pub type Started = Pending<std::result::Result<(), VhostUserError>>;

/// What [`VhostUserDevice::adopt`] leaves to do once the transport lock is
/// released.
#[derive(Debug)]
pub enum Adopted {
    /// Nothing to replay: the device is up.
    Up,
    /// The live queues are being replayed on session `token`; wait, then
    /// [`VhostUserDevice::finish_reconnect`] or
    /// [`VhostUserDevice::drop_session`] with the token.
    Replaying {
        /// The replay's result.
        replay: Pending<std::result::Result<(), VhostUserError>>,
        /// The adopted session.
        token: u64,
    },
}

impl VhostUserDevice {
    /// Builds the device on its first session.
    pub fn new(p: DeviceParts) -> Self {
        let features = p.features & TRANSPORT_FEATURE_MASK;
        link_up(&p.link);
        let dev = VhostUserDevice {
            id: p.id,
            kind: p.kind,
            session: Some(p.session),
            link: p.link,
            events: p.events,
            features,
            backend_features: p.opened.device_features,
            num_queues: p.num_queues,
            queue_max_size: p.queue_max_size,
            mem: p.mem,
            kicks: p.kicks,
            call: p.call,
            shared: Arc::new(Mutex::new(Shared {
                config: p.config,
                ..Shared::default()
            })),
            needs_reset: Arc::default(),
            active: None,
            replaying: false,
            adopted: 0,
            suspended: None,
            protocol_features: p.opened.protocol,
            dirty_log: None,
        };
        if let Some(session) = &dev.session {
            dev.take_config_changes(session);
        }
        dev
    }

    /// Sends the config spaces `session`'s backend announces
    /// (CONFIG_CHANGE_MSG) to the cache, with a config-change interrupt
    /// when they differ (the transport latches it when the driver reads
    /// InterruptStatus).
    fn take_config_changes(&self, session: &Session) {
        let call = match self.call.try_clone() {
            Ok(c) => c,
            Err(e) => {
                warn_limited!(
                    "vhost-user device {}: cannot duplicate the call eventfd, config changes \
                     reach the guest only on a reconnect: {e}",
                    self.id
                );
                return;
            }
        };
        let shared = self.shared.clone();
        session.config_sink().connect(move |fresh| {
            if shared_lock(&shared).refresh_config(fresh) {
                let _ = call.write(1);
            }
        });
    }

    /// The session if it is worth sending requests to: connected, or
    /// replaying after a reconnection. A session whose backend went away
    /// gets nothing (its requests would only fail).
    fn live_session(&self) -> Option<&Session> {
        let session = self.session.as_ref()?;
        (self.replaying || reconnect::lock(&self.link).connected).then_some(session)
    }

    /// The kick eventfds (one per queue).
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The call eventfd.
    pub fn call(&self) -> &EventFd {
        &self.call
    }

    /// The inflight buffer kept for the backend, if any.
    pub fn inflight(&self) -> Option<Arc<InflightBuffer>> {
        shared_lock(&self.shared).inflight.clone()
    }

    /// Device id, queue count, config size, link, event sink and memory:
    /// what opening a new session for this device needs.
    pub fn session_params(&self) -> SessionParams {
        SessionParams {
            id: self.id.clone(),
            num_queues: self.num_queues,
            config_len: self.kind.config_len,
            link: self.link.clone(),
            events: self.events.clone(),
            mem: self.mem.clone(),
        }
    }

    /// The live queues' rings, as the start request and the loss snapshot
    /// see them.
    fn specs(&self, active: &Activation, from: StartFrom<'_>) -> Vec<QueueSpec> {
        active
            .queues
            .iter()
            .enumerate()
            .filter(|(i, q)| q.ready && *i < self.kicks.len())
            .map(|(index, q)| QueueSpec {
                index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                base: match from {
                    StartFrom::Zero => 0,
                    StartFrom::UsedIndex => used_index(&self.mem, q.used).unwrap_or(0),
                    StartFrom::Saved(bases) => bases.get(index).copied().unwrap_or(0),
                },
            })
            .collect()
    }

    /// Queues the start of the live device on the session: features,
    /// memory, inflight region, queues, each ring at the avail position
    /// `from` gives (a fresh activation, a reconnection, a resume).
    /// A refusal marks the device as needing a reset.
    fn post_start(&self, from: StartFrom<'_>) -> Option<Started> {
        let resume = !matches!(from, StartFrom::Zero);
        let session = self.live_session()?;
        let active = self.active.as_ref()?;
        let specs = self.specs(active, from);
        let dup = || -> std::io::Result<(Vec<EventFd>, EventFd)> {
            let kicks = specs
                .iter()
                .map(|q| self.kicks[q.index].try_clone())
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok((kicks, self.call.try_clone()?))
        };
        let (kicks, call) = match dup() {
            Ok(fds) => fds,
            Err(e) => {
                warn_limited!(
                    "vhost-user device {}: cannot duplicate an eventfd: {e}",
                    self.id
                );
                self.raise_needs_reset();
                return None;
            }
        };
        let id = self.id.clone();
        let features = active.driver_features & self.backend_features;
        let mem = self.mem.clone();
        let shared = self.shared.clone();
        let epoch = shared_lock(&shared).epoch;
        let needs_reset = self.needs_reset.clone();
        let (num_queues, max_size) = (self.num_queues, self.queue_max_size);
        let config_len = self.kind.config_len;
        let log = self.dirty_log.clone();
        Some(
            session.post("the start of the queues", move |conn: &mut Connection| {
                let r = start(
                    conn,
                    &StartJob {
                        id: &id,
                        features,
                        mem: &mem,
                        shared: &shared,
                        epoch,
                        num_queues,
                        max_size,
                        specs: &specs,
                        kicks: &kicks,
                        call: &call,
                        resume,
                        config_len,
                        log: log.as_deref(),
                    },
                );
                if let Err(e) = &r {
                    request_failed(&id, conn, e);
                    if !e.connection_lost() {
                        needs_reset.store(true, Ordering::SeqCst);
                        let _ = call.write(1);
                    }
                }
                r
            }),
        )
    }

    /// Reports DEVICE_NEEDS_RESET to the driver (with a config interrupt).
    fn raise_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        let _ = self.call.write(1);
    }

    /// Takes `session` (handshaken with a restarted backend, see
    /// `reconnect.rs`) as the device's connection and queues the replay of
    /// the live queues. Refuses a backend with other features or fewer
    /// queues. The previous session, if any, ends here.
    pub fn adopt(&mut self, session: Session, opened: Opened) -> Result<Adopted> {
        let shape = self.kind.shape(
            opened.device_features,
            opened.config.is_some(),
            self.num_queues,
            opened.queue_num,
        )?;
        let offered = shape.features & TRANSPORT_FEATURE_MASK;
        if offered != self.features {
            return Err(VirtioError::FeaturesChanged {
                before: self.features,
                after: offered,
            });
        }
        if shape.queues < self.num_queues {
            return Err(VirtioError::TooFewQueues {
                wanted: self.num_queues,
                offered: shape.queues,
            });
        }
        self.refuse_replacement_without_logging(opened.device_features)?;
        self.backend_features = opened.device_features;
        self.protocol_features = opened.protocol;
        if let Some(config) = opened.config {
            if shared_lock(&self.shared).refresh_config(config) {
                let _ = self.call.write(1);
            }
        }
        self.take_config_changes(&session);
        self.session = Some(session);
        self.replaying = true;
        self.adopted += 1;
        let token = self.adopted;
        if self.suspended.is_some() {
            // Stopped for a save: the rings start again at the resume,
            // from the positions the old backend gave back.
            self.finish_reconnect(token);
            return Ok(Adopted::Up);
        }
        if self.active.is_some() && !self.resumable(opened.inflight) {
            tracing::warn!(
                "vhost-user device {}: the backend went away with requests outstanding that may \
                 have completed out of order, and kept no inflight record: not resuming the rings \
                 (a request could complete twice); the driver must reset the device",
                self.id
            );
            self.active = None;
            reconnect::lock(&self.link).rings.clear();
            self.raise_needs_reset();
            self.finish_reconnect(token);
            return Ok(Adopted::Up);
        }
        match self.post_start(StartFrom::UsedIndex) {
            Some(replay) => Ok(Adopted::Replaying { replay, token }),
            None => {
                self.finish_reconnect(token);
                Ok(Adopted::Up)
            }
        }
    }

    /// True when resuming the live rings from the used index cannot
    /// complete a request twice: the new backend takes over the kept
    /// inflight record, or the rings were unambiguous when the old backend
    /// went away (see `reconnect.rs`).
    fn resumable(&self, backend_tracks_inflight: bool) -> bool {
        if self.kind.resumes_without_inflight() {
            return true;
        }
        if backend_tracks_inflight && shared_lock(&self.shared).inflight.is_some() {
            return true;
        }
        let link = reconnect::lock(&self.link);
        let ambiguous_at_loss = link
            .ambiguous_at_loss
            .unwrap_or_else(|| ambiguous(&self.mem, &link.rings));
        !ambiguous_at_loss
    }

    /// Marks the new connection (session `token`) up once its replay
    /// succeeded, pulses the call and kick eventfds, and reports the
    /// reconnection. Nothing if a newer session was adopted meanwhile.
    pub fn finish_reconnect(&mut self, token: u64) {
        if token != self.adopted {
            return;
        }
        self.replaying = false;
        link_up(&self.link);
        if self.active.is_some() && self.suspended.is_none() {
            self.pulse();
        }
        let _ = self.events.send(VirtioEvent::Reconnected {
            id: self.id.clone(),
        });
    }

    /// Pulses the call eventfd (a completion published without an
    /// interrupt: the driver scans its used rings) and every kick eventfd
    /// (a kick a previous backend consumed without taking the request:
    /// the current one scans its avail rings).
    pub fn pulse(&self) {
        let _ = self.call.write(1);
        for k in &self.kicks {
            let _ = k.write(1);
        }
    }

    /// Drops session `token` whose replay failed (the device stays
    /// disconnected). Nothing if a newer session was adopted meanwhile.
    pub fn drop_session(&mut self, token: u64) {
        if token != self.adopted {
            return;
        }
        self.replaying = false;
        self.session = None;
        reconnect::lock(&self.link).connected = false;
    }

    /// The rings of `activation`'s ready queues, each checked to lie in
    /// guest RAM (as the backend will be told).
    fn ring_addrs(
        &self,
        activation: &Activation,
    ) -> std::result::Result<Vec<RingAddrs>, VhostUserError> {
        let mut rings = Vec::new();
        for (index, q) in activation.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            rings.push(RingAddrs {
                size: q.size,
                avail: q.avail,
                used: q.used,
            });
            let Some(kick) = self.kicks.get(index) else {
                continue;
            };
            vring_config(
                &self.mem,
                &QueueStart {
                    index,
                    size: q.size,
                    max_size: self.queue_max_size,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                    base: 0,
                    kick,
                    call: &self.call,
                },
            )?;
        }
        Ok(rings)
    }

    /// Checks `activation`'s rings and takes it as the live device (its
    /// start is posted by the caller).
    fn take_activation(
        &mut self,
        activation: &Activation,
    ) -> std::result::Result<(), VhostUserError> {
        let rings = self.ring_addrs(activation)?;
        self.active = Some(activation.clone());
        self.needs_reset.store(false, Ordering::SeqCst);
        reconnect::lock(&self.link).rings = rings;
        Ok(())
    }

    /// A driver write to a config space the frontend provides: the backend
    /// never sees it, so only a write that leaves the content as it is
    /// (Linux writes virtio-scsi's `sense_size` and `cdb_size` at their
    /// defaults) is taken; any other is refused as QEMU's vhost-scsi does,
    /// and the driver reads the unchanged value back.
    fn write_frontend_config(&mut self, offset: u64, data: &[u8]) {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?));
        let sh = shared_lock(&self.shared);
        match range.and_then(|r| sh.config.get(r)) {
            Some(cur) if cur == data => {}
            Some(_) => warn_limited!(
                "vhost-user device {}: the driver changes config bytes at {offset:#x} to {data:?}; \
                 the backend cannot take config changes, the write is refused",
                self.id
            ),
            None => warn_limited!("vhost-user device {}: config write out of range", self.id),
        }
    }
}

mod vrings;

/// What opening a session for a device needs (see
/// [`VhostUserDevice::session_params`]).
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Device id.
    pub id: String,
    /// Queues of the device.
    pub num_queues: u16,
    /// Config space size.
    pub config_len: u32,
    /// The device's link state.
    pub link: Link,
    /// Where connection events go.
    pub events: Sender<VirtioEvent>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
}

/// The start request's inputs, on the session thread.
struct StartJob<'a> {
    id: &'a str,
    features: u64,
    mem: &'a GuestMemoryMmap,
    shared: &'a Mutex<Shared>,
    epoch: u64,
    num_queues: u16,
    max_size: u16,
    specs: &'a [QueueSpec],
    kicks: &'a [EventFd],
    call: &'a EventFd,
    resume: bool,
    config_len: u32,
    /// The dirty log, while a migration runs.
    log: Option<&'a VhostLog>,
}

/// Hands the live device to the backend (runs on the session thread).
fn start(conn: &mut Connection, j: &StartJob<'_>) -> std::result::Result<(), VhostUserError> {
    let kept = shared_lock(j.shared).inflight.clone();
    let inflight = match kept {
        Some(b) => Some(b),
        None => {
            let fresh = conn.get_inflight(j.num_queues, j.max_size)?.map(Arc::new);
            let mut sh = shared_lock(j.shared);
            if sh.epoch == j.epoch {
                sh.inflight.clone_from(&fresh);
            }
            fresh
        }
    };
    let queues: Vec<QueueStart<'_>> = j
        .specs
        .iter()
        .zip(j.kicks)
        .map(|(q, kick)| QueueStart {
            index: q.index,
            size: q.size,
            max_size: j.max_size,
            desc: q.desc,
            avail: q.avail,
            used: q.used,
            base: q.base,
            kick,
            call: j.call,
        })
        .collect();
    if j.resume {
        for q in &queues {
            let pending = u16::try_from(q.index)
                .ok()
                .and_then(|n| inflight.as_ref().map(|b| b.pending(n)));
            if let Some(Ok(n)) = pending {
                tracing::info!(
                    "vhost-user device {}: queue {} resumes at {}, {n} requests in flight",
                    j.id,
                    q.index,
                    q.base
                );
            }
        }
    }
    conn.start(j.features, j.mem, inflight.as_deref(), &queues, j.log)?;
    if !j.resume && conn.serves_config() && j.config_len > 0 {
        // The backend may have changed its config space since the guest
        // read it (fetched at attach and at each reconnection).
        let fresh = conn.get_config(j.config_len)?;
        if shared_lock(j.shared).refresh_config(fresh) {
            let _ = j.call.write(1);
        }
    }
    Ok(())
}

/// `e` and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl VirtioBackend for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.kind.device_type
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.queue_max_size
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) -> bool {
        // From the cache: a guest config read never waits for the backend.
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?));
        let mut sh = shared_lock(&self.shared);
        match range.and_then(|r| sh.config.get(r)) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
        std::mem::take(&mut sh.config_changed)
    }

    fn take_config_interrupt(&mut self) -> bool {
        std::mem::take(&mut shared_lock(&self.shared).config_irq)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.kind.fetches_config() {
            self.write_frontend_config(offset, data);
            return;
        }
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?));
        {
            let mut sh = shared_lock(&self.shared);
            let Some(dst) = range.and_then(|r| sh.config.get_mut(r)) else {
                drop(sh);
                warn_limited!("vhost-user device {}: config write out of range", self.id);
                return;
            };
            dst.copy_from_slice(data);
        }
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        if let Some(session) = self.live_session() {
            let id = self.id.clone();
            let data = data.to_vec();
            // Not waited for: the write is in order with later requests.
            drop(session.post("SET_CONFIG", move |conn: &mut Connection| {
                if let Err(e) = conn.set_config(off, &data) {
                    request_failed(&id, conn, &e);
                }
            }));
        }
    }

    fn activate(&mut self, activation: &Activation) -> bool {
        if let Err(e) = self.take_activation(activation) {
            warn_limited!("vhost-user device {}: {}", self.id, error_chain(&e));
            return false;
        }
        // Not waited for; while disconnected, replayed on reconnection.
        drop(self.post_start(StartFrom::Zero));
        true
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn reset(&mut self) {
        let active = self.active.take();
        {
            let mut link = reconnect::lock(&self.link);
            link.rings.clear();
            // Whatever was outstanding on the old rings is gone with them.
            if link.ambiguous_at_loss.is_some() {
                link.ambiguous_at_loss = Some(false);
            }
        }
        if let (Some(active), Some(session)) = (active, self.live_session()) {
            let ready: Vec<usize> = self
                .specs(&active, StartFrom::Zero)
                .iter()
                .map(|q| q.index)
                .collect();
            if !ready.is_empty() {
                let id = self.id.clone();
                // Waited for (bounded by the request deadline): the
                // driver may reuse the rings' memory once the reset
                // returns.
                let stopped =
                    session.post("the stop of the queues", move |conn: &mut Connection| {
                        for i in ready {
                            if let Err(e) = conn.stop_queue(i) {
                                request_failed(&id, conn, &e);
                                if e.connection_lost() {
                                    return;
                                }
                            }
                        }
                    });
                if stopped.wait().is_none() {
                    warn_limited!(
                        "vhost-user device {}: the queues did not stop; hanging up",
                        self.id
                    );
                    session.shutdown();
                }
            }
        }
        // After the stop: a start queued before it may have failed.
        self.needs_reset.store(false, Ordering::SeqCst);
        // Whatever the rings were stopped for, they are gone.
        self.suspended = None;
        // The rings the region described are gone.
        let mut sh = shared_lock(&self.shared);
        sh.epoch += 1;
        sh.inflight = None;
    }
}
