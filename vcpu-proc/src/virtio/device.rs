//! A virtio device served by a vhost-user backend: the [`VirtioBackend`]
//! behind a virtio-mmio transport. It owns the per-device eventfds (one
//! kick ioeventfd per queue, one call irqfd), the inflight buffer, the
//! cached config space and the current connection, and turns the guest's
//! DRIVER_OK / reset into vhost-user session changes.

use std::sync::mpsc::Sender;

use vmm_sys_util::eventfd::EventFd;

use super::inflight::InflightBuffer;
use super::mmio::{Activation, VirtioBackend, TRANSPORT_FEATURE_MASK};
use super::reconnect::{link_up, used_index, Link, Watcher};
use super::vhost_user::{Connection, QueueStart, VhostUserError};
use super::{Result, VirtioError, VirtioEvent};
use crate::memory::GuestMemoryMmap;
use ipc_proto::warn_limited;

/// Fixed properties of a vhost-user device.
#[derive(Debug, Clone)]
pub struct DeviceKind {
    /// Virtio device type.
    pub device_type: u32,
    /// Size of the config space fetched with GET_CONFIG.
    pub config_len: u32,
}

/// The vhost-user side of one virtio-mmio device.
pub struct VhostUserDevice {
    id: String,
    kind: DeviceKind,
    conn: Option<Connection>,
    watcher: Option<Watcher>,
    link: Link,
    events: Sender<VirtioEvent>,
    features: u64,
    num_queues: u16,
    queue_max_size: u16,
    config: Vec<u8>,
    mem: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    call: EventFd,
    inflight: Option<InflightBuffer>,
    active: Option<Activation>,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("id", &self.id)
            .field("connected", &self.conn.is_some())
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
    /// The handshaken first connection.
    pub conn: Connection,
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

impl VhostUserDevice {
    /// Builds the device on its first connection and starts watching it.
    pub fn new(p: DeviceParts) -> Result<Self> {
        let mut conn = p.conn;
        let config = conn
            .get_config(p.kind.config_len)
            .map_err(VirtioError::Frontend)?;
        let features = conn.device_features() & TRANSPORT_FEATURE_MASK;
        let mut dev = VhostUserDevice {
            id: p.id,
            kind: p.kind,
            conn: None,
            watcher: None,
            link: p.link,
            events: p.events,
            features,
            num_queues: p.num_queues,
            queue_max_size: p.queue_max_size,
            config,
            mem: p.mem,
            kicks: p.kicks,
            call: p.call,
            inflight: None,
            active: None,
        };
        dev.link(conn)?;
        Ok(dev)
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
    pub fn inflight(&self) -> Option<&InflightBuffer> {
        self.inflight.as_ref()
    }

    /// Marks `conn` as the live connection and watches it.
    fn link(&mut self, conn: Connection) -> Result<()> {
        let handle = conn.watch_handle().map_err(VirtioError::Frontend)?;
        let generation = link_up(&self.link);
        let watcher = Watcher::start(
            self.id.clone(),
            handle,
            generation,
            self.link.clone(),
            self.events.clone(),
        )
        .map_err(VirtioError::Thread)?;
        self.watcher = Some(watcher);
        self.conn = Some(conn);
        Ok(())
    }

    /// Handles a failed request: a lost connection is shut down (its
    /// watcher then reports it); a refusal is only logged.
    fn failed(&mut self, e: &VhostUserError) {
        warn_limited!("vhost-user device {}: {}", self.id, error_chain(e));
        if e.connection_lost() {
            if let Some(c) = self.conn.take() {
                c.shutdown();
            }
        }
    }

    /// Hands the live device to the backend. `resume` is true after a
    /// reconnect: rings continue from the used index in guest memory.
    fn start(&mut self, resume: bool) -> std::result::Result<(), VhostUserError> {
        let (Some(conn), Some(active)) = (self.conn.as_mut(), self.active.as_ref()) else {
            return Ok(());
        };
        if self.inflight.is_none() {
            self.inflight = conn.get_inflight(self.num_queues, self.queue_max_size)?;
        }
        let mut queues = Vec::new();
        for (i, q) in active.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let Some(kick) = self.kicks.get(i) else {
                continue;
            };
            let base = if resume {
                used_index(&self.mem, q.used).unwrap_or(0)
            } else {
                0
            };
            if resume {
                let pending = u16::try_from(i)
                    .ok()
                    .and_then(|n| self.inflight.as_ref().map(|b| b.pending(n)));
                if let Some(Ok(n)) = pending {
                    tracing::info!(
                        "vhost-user device {}: queue {i} resumes at {base}, {n} requests in flight",
                        self.id
                    );
                }
            }
            queues.push(QueueStart {
                index: i,
                size: q.size,
                max_size: self.queue_max_size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                base,
                kick,
                call: &self.call,
            });
        }
        conn.start(
            active.driver_features,
            &self.mem,
            self.inflight.as_ref(),
            &queues,
        )
    }

    /// Replays the session onto a new connection (see `reconnect.rs`).
    pub fn reconnect(&mut self, stream: std::os::unix::net::UnixStream) -> Result<()> {
        self.watcher = None;
        if let Some(old) = self.conn.take() {
            old.shutdown();
        }
        let mut conn =
            Connection::handshake(stream, self.num_queues).map_err(VirtioError::Frontend)?;
        let offered = conn.device_features() & TRANSPORT_FEATURE_MASK;
        if offered != self.features {
            conn.shutdown();
            return Err(VirtioError::FeaturesChanged {
                before: self.features,
                after: offered,
            });
        }
        if conn.queue_num() < self.num_queues {
            conn.shutdown();
            return Err(VirtioError::TooFewQueues {
                wanted: self.num_queues,
                offered: conn.queue_num(),
            });
        }
        match conn.get_config(self.kind.config_len) {
            Ok(c) if c.len() == self.config.len() => self.config = c,
            Ok(_) => {}
            Err(e) => {
                conn.shutdown();
                return Err(VirtioError::Frontend(e));
            }
        }
        self.conn = Some(conn);
        if let Err(e) = self.start(true) {
            if let Some(c) = self.conn.take() {
                c.shutdown();
            }
            return Err(VirtioError::Frontend(e));
        }
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        self.link(conn)?;
        if self.active.is_some() {
            // A completion the dead backend published without signalling.
            let _ = self.call.write(1);
            // A kick the dead backend consumed without taking the request:
            // make the new one scan its avail rings.
            for k in &self.kicks {
                let _ = k.write(1);
            }
        }
        let _ = self.events.send(VirtioEvent::Reconnected {
            id: self.id.clone(),
        });
        Ok(())
    }
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
        let mut changed = false;
        if let Some(conn) = self.conn.as_mut() {
            match conn.get_config(self.kind.config_len) {
                Ok(c) if c.len() == self.config.len() => {
                    changed = c != self.config;
                    self.config = c;
                }
                Ok(_) => warn_limited!("vhost-user device {}: short config space", self.id),
                Err(e) => self.failed(&e),
            }
        }
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?));
        match range.and_then(|r| self.config.get(r)) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
        changed
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?));
        let Some(dst) = range.and_then(|r| self.config.get_mut(r)) else {
            warn_limited!("vhost-user device {}: config write out of range", self.id);
            return;
        };
        dst.copy_from_slice(data);
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.set_config(off, data) {
                self.failed(&e);
            }
        }
    }

    fn activate(&mut self, activation: &Activation) -> bool {
        self.active = Some(activation.clone());
        match self.start(false) {
            Ok(()) => true,
            Err(e) if e.connection_lost() => {
                // Replayed when the backend comes back.
                self.failed(&e);
                true
            }
            Err(e) => {
                self.failed(&e);
                self.active = None;
                false
            }
        }
    }

    fn reset(&mut self) {
        if let (Some(active), Some(_)) = (self.active.take(), self.conn.as_ref()) {
            for (i, q) in active.queues.iter().enumerate() {
                if !q.ready {
                    continue;
                }
                let Some(conn) = self.conn.as_mut() else {
                    break;
                };
                if let Err(e) = conn.stop_queue(i) {
                    self.failed(&e);
                }
            }
        }
        self.active = None;
        // The rings the region described are gone.
        self.inflight = None;
    }
}
