//! The device side of a save (`crate::virtio::suspend` has the API and
//! the protocol): stopping the live rings at the backend and keeping the
//! avail positions it gives back, starting them again from there, and
//! making a restored device live with its saved positions.

use super::{StartFrom, Started, VhostUserDevice};
use crate::memory::GuestMemoryMmap;
use crate::virtio::mmio::Activation;
use crate::virtio::suspend::SuspendError;
use crate::virtio::vhost_user::{Connection, VhostUserError};

impl VhostUserDevice {
    /// Stops the live rings at the backend for a save: SET_VRING_ENABLE 0
    /// and GET_VRING_BASE for each ready queue, in order on the session
    /// (the backend answers once the queue's started requests completed),
    /// and keeps the avail positions it gives back (by queue index). Ok(None)
    /// when the device is not live; the kept positions when it is
    /// suspended already. Waits, bounded by the request deadline. On a
    /// failure the connection is hung up, so that the device goes the
    /// reconnection way (`reconnect.rs`), which starts the rings again.
    pub fn suspend(&mut self) -> std::result::Result<Option<Vec<u16>>, SuspendError> {
        if let Some(bases) = &self.suspended {
            return Ok(Some(bases.clone()));
        }
        let Some(active) = self.active.as_ref() else {
            return Ok(None);
        };
        let ready: Vec<usize> = self
            .specs(active, StartFrom::Zero)
            .iter()
            .map(|q| q.index)
            .collect();
        let Some(session) = self.live_session() else {
            return Err(SuspendError::Disconnected(self.id.clone()));
        };
        let n = usize::from(self.num_queues);
        let stopped = session.post(
            "the stop of the queues for a save",
            move |conn: &mut Connection| {
                let mut bases = vec![0u16; n];
                for i in ready {
                    let base = conn.stop_queue(i)?;
                    if let Some(b) = bases.get_mut(i) {
                        *b = base;
                    }
                }
                Ok::<_, VhostUserError>(bases)
            },
        );
        let r = match stopped.wait() {
            Some(Ok(bases)) => {
                self.suspended = Some(bases.clone());
                return Ok(Some(bases));
            }
            Some(Err(source)) => SuspendError::Stop {
                id: self.id.clone(),
                source,
            },
            None => SuspendError::StopTimedOut(self.id.clone()),
        };
        if let Some(session) = &self.session {
            session.shutdown();
        }
        Err(r)
    }

    /// The avail positions of a suspended device (by queue index).
    pub fn suspended(&self) -> Option<&[u16]> {
        self.suspended.as_deref()
    }

    /// Ends a suspension: posts the start of the rings from the kept avail
    /// positions (the same sequence as an activation, SET_VRING_BASE = the
    /// position). None when the device was not suspended, or its backend
    /// is away: the reconnection then starts the rings from the used
    /// index, which after the drain is the same position.
    pub fn resume(&mut self) -> Option<Started> {
        let bases = self.suspended.take()?;
        self.post_start(StartFrom::Saved(&bases))
    }

    /// Makes the device live as `activation` describes, its rings
    /// continuing at `bases` (by queue index; a restored state), and
    /// posts the start. None when the backend is away (the reconnection
    /// starts the rings from the used index).
    pub fn restore_active(
        &mut self,
        activation: &Activation,
        bases: &[u16],
    ) -> std::result::Result<Option<Started>, VhostUserError> {
        self.take_activation(activation)?;
        self.suspended = None;
        Ok(self.post_start(StartFrom::Saved(bases)))
    }

    /// Checks that `activation`'s rings lie in guest RAM.
    pub fn check_activation(
        &self,
        activation: &Activation,
    ) -> std::result::Result<(), VhostUserError> {
        self.ring_addrs(activation).map(drop)
    }

    /// What the driver set up at DRIVER_OK, while the device is live.
    pub fn active(&self) -> Option<&Activation> {
        self.active.as_ref()
    }

    /// The virtio features a start tells the backend for `driver`'s
    /// choice (SET_FEATURES, without PROTOCOL_FEATURES).
    pub fn acked_features(&self, driver: u64) -> u64 {
        driver & self.backend_features
    }

    /// The vhost-user protocol features of the current session.
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reports DEVICE_NEEDS_RESET to the driver (a restored device that
    /// was not live on its backend).
    pub fn mark_needs_reset(&self) {
        self.raise_needs_reset();
    }
}
