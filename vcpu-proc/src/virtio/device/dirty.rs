//! A device's backend logging its writes into guest RAM while a
//! migration runs (`VHOST_F_LOG_ALL`, SET_LOG_BASE, `VHOST_VRING_F_LOG`;
//! the log is `super::super::dirty_log::VhostLog`).
//!
//! The device keeps the log while logging is on, so that every start of
//! its queues hands it over: the driver's next activation and the replay
//! onto a restarted backend (`reconnect.rs`: a block-proc killed during a
//! migration comes back logging). On a live device, turning logging on or
//! off is a request on the session thread like the others (in order with
//! them, never on a vCPU thread); while the device is not live there is
//! nothing to send: the backend writes nothing into guest RAM then, and
//! its next start carries the log.

use std::sync::Arc;

use super::{request_failed, StartFrom, VhostUserDevice};
use crate::virtio::dirty_log::VhostLog;
use crate::virtio::session::Pending;
use crate::virtio::vhost_user::{Connection, RingGpa, VhostUserError, LOG_ALL};
use crate::virtio::VirtioError;

/// The result of turning logging on or off on a live device.
pub type LogChange = Pending<Result<(), VhostUserError>>;

impl VhostUserDevice {
    /// True when the backend offered `VHOST_F_LOG_ALL`.
    pub fn can_log_dirty_pages(&self) -> bool {
        self.backend_features & LOG_ALL != 0
    }

    /// While logging is on, a backend replacing a lost one must log too
    /// (its writes would otherwise be missing from the migration): one
    /// without LOG_ALL is refused and the device stays disconnected.
    pub(super) fn refuse_replacement_without_logging(
        &self,
        offered: u64,
    ) -> Result<(), VirtioError> {
        if self.dirty_log.is_some() && offered & LOG_ALL == 0 {
            return Err(VirtioError::NoDirtyLog(self.id.clone()));
        }
        Ok(())
    }

    /// The dirty log the backend is given, while logging is on.
    pub fn dirty_log(&self) -> Option<&Arc<VhostLog>> {
        self.dirty_log.as_ref()
    }

    /// Logging into `log` from now on; the request that turns it on in a
    /// live backend, if the device is live.
    pub fn start_dirty_log(&mut self, log: Arc<VhostLog>) -> Option<LogChange> {
        self.dirty_log = Some(log.clone());
        self.post_dirty_log(Some(log))
    }

    /// Logging off; the request that turns it off in a live backend, if
    /// the device is live and was logging.
    pub fn stop_dirty_log(&mut self) -> Option<LogChange> {
        self.dirty_log.take()?;
        self.post_dirty_log(None)
    }

    fn post_dirty_log(&self, log: Option<Arc<VhostLog>>) -> Option<LogChange> {
        let session = self.live_session()?;
        let active = self.active.as_ref()?;
        let rings: Vec<RingGpa> = self
            .specs(active, StartFrom::Zero)
            .iter()
            .map(|q| RingGpa {
                index: q.index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            })
            .collect();
        let features = active.driver_features & self.backend_features;
        let (id, mem, max_size) = (self.id.clone(), self.mem.clone(), self.queue_max_size);
        let op = if log.is_some() {
            "dirty logging on"
        } else {
            "dirty logging off"
        };
        Some(session.post(op, move |conn: &mut Connection| {
            let began = std::time::Instant::now();
            let r = conn.set_dirty_log(features, log.as_deref(), &mem, max_size, &rings);
            if let Err(e) = &r {
                request_failed(&id, conn, e);
            }
            // The session's watcher hangs up a silent backend only at the
            // request deadline: a connection lost well before it is a
            // backend that died, whose replacement gets the log with the
            // reconnect replay.
            r.map_err(|e| {
                if e.connection_lost()
                    && began.elapsed() < crate::virtio::session::REQUEST_DEADLINE / 2
                {
                    VhostUserError::BackendGone(Box::new(e))
                } else {
                    e
                }
            })
        }))
    }
}
