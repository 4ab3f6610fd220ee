//! Stopping a live device's rings at its backend for a save, and starting
//! them again: the vring half of the VM state (`state/virtio.rs`, section
//! `virtio-mmio` version 2 of `docs/vmstate-format.md`).
//!
//! ## The API
//! - [`VirtioMmioDevice::suspend`] / [`VirtioDevices::suspend_all`]: with
//!   the vCPUs paused, stop each live device's rings at its backend as
//!   QEMU's `vhost_virtqueue_stop` does — per ready queue
//!   `SET_VRING_ENABLE 0` then `GET_VRING_BASE`, which the backend answers
//!   once the queue's started requests have completed (block-proc drains
//!   them, see `block-proc/src/vhost/queue.rs`; net-proc completes every
//!   chain it takes before it looks at the stop, `net-proc/src/vhost/
//!   queue.rs`) — then read each used index from guest memory. The result,
//!   a [`VringState`] per live device, is what a save records: per queue
//!   the last avail index (the backend's answer) and the used index, the
//!   features acknowledged to the backend, the negotiated vhost-user
//!   protocol features. The device stays suspended: suspending again
//!   returns the same state without asking the backend.
//! - [`VirtioMmioDevice::resume`] / [`VirtioDevices::resume_all`]: when the
//!   VM continues on this side (after `xen-save-devices-state`, a
//!   cancelled or failed migration), start the rings again exactly as a
//!   start does (`SET_FEATURES`, `SET_MEM_TABLE`, the inflight fd, per
//!   queue `SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE`) with `SET_VRING_BASE`
//!   = the kept avail index, then pulse the call and kick eventfds. The
//!   controller resumes every suspended device before it lets the vCPUs
//!   run (`control.rs`), so a guest never runs on stopped rings; callers
//!   that continue a VM themselves call [`VirtioDevices::resume_all`]
//!   (it does nothing for a device that is not suspended).
//! - Restore (`mmio/state.rs`, [`VirtioMmioDevice::restore_state`]): the
//!   saved device is made live on its (new or same) backend through the
//!   same start, with `SET_VRING_BASE` = the saved last avail index.
//!
//! `vcpu_proc::state::save` suspends every device first (before it reads
//! the vCPUs and the irqchip, so an interrupt the drain raised is in the
//! saved state) and leaves them suspended.
//!
//! The inflight region (`inflight.rs`) is not carried: after the drain no
//! request is in flight, so there is nothing in it a target would need;
//! the target's backend gets a fresh one.
//!
//! A backend that dies while its device is suspended (SIGKILL of
//! block-proc or net-proc) does not lose the suspension: the reconnection
//! hands the device to the new backend without starting its rings
//! (`device.rs`, `adopt`), and the resume starts them there from the kept
//! positions.

use super::device::Started;
use super::reconnect::used_index;
use super::vhost_user::VhostUserError;
use super::{VirtioDevices, VirtioMmioDevice};

/// Why rings could not be stopped or started again.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The device has no backend connected (it is being reconnected):
    /// its rings cannot be asked for their position.
    #[error("virtio device {0}: no backend is connected (a reconnection is under way); its vrings cannot be saved now")]
    Disconnected(String),
    /// The backend failed a stop request.
    #[error("virtio device {id}: stopping the vrings at the backend failed")]
    Stop {
        /// Device id.
        id: String,
        /// The cause.
        #[source]
        source: VhostUserError,
    },
    /// The backend did not answer the stop within the request deadline.
    #[error("virtio device {0}: the backend did not stop its vrings within the deadline")]
    StopTimedOut(String),
    /// A used ring could not be read from guest memory.
    #[error("virtio device {id}: the used ring of queue {queue} is not readable")]
    Ring {
        /// Device id.
        id: String,
        /// Queue index.
        queue: usize,
    },
    /// The backend failed the start of the rings.
    #[error("virtio device {id}: starting the vrings at the backend failed")]
    Start {
        /// Device id.
        id: String,
        /// The cause.
        #[source]
        source: VhostUserError,
    },
    /// The backend did not take the rings within the request deadline.
    #[error("virtio device {0}: the backend did not start its vrings within the deadline")]
    StartTimedOut(String),
}

/// One queue's ring position at a suspension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueVring {
    /// The avail index the backend continues from (`GET_VRING_BASE`).
    pub last_avail: u16,
    /// The used index in guest memory.
    pub used: u16,
}

/// The vring state of a live device, as a save records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VringState {
    /// The virtio features told to the backend (`SET_FEATURES`, without
    /// `VHOST_USER_F_PROTOCOL_FEATURES`).
    pub acked_features: u64,
    /// The vhost-user protocol features negotiated with the backend.
    pub protocol_features: u64,
    /// Every queue by index; zeroes for a queue that is not ready.
    pub queues: Vec<QueueVring>,
}

impl VirtioMmioDevice {
    /// Stops the device's rings at its backend (see the module doc) and
    /// returns their state; None when the device is not live. The VM must
    /// be paused. Idempotent.
    pub fn suspend(&self) -> Result<Option<VringState>, SuspendError> {
        let mut t = self.lock();
        let dev = t.backend_mut();
        let Some(bases) = dev.suspend()? else {
            return Ok(None);
        };
        let Some(active) = dev.active() else {
            return Ok(None);
        };
        let queues = active
            .queues
            .iter()
            .enumerate()
            .map(|(queue, q)| {
                if !q.ready {
                    return Ok(QueueVring::default());
                }
                let used = used_index(dev.mem(), q.used).ok_or_else(|| SuspendError::Ring {
                    id: self.id.clone(),
                    queue,
                })?;
                Ok(QueueVring {
                    last_avail: bases.get(queue).copied().unwrap_or(0),
                    used,
                })
            })
            .collect::<Result<Vec<_>, SuspendError>>()?;
        Ok(Some(VringState {
            acked_features: dev.acked_features(active.driver_features),
            protocol_features: dev.protocol_features(),
            queues,
        }))
    }

    /// True while the device's rings are stopped for a save.
    pub fn is_suspended(&self) -> bool {
        self.lock().backend().suspended().is_some()
    }

    /// Starts the rings of a suspended device again from the kept
    /// positions and waits for the backend to take them (bounded by the
    /// request deadline). Nothing for a device that is not suspended.
    pub fn resume(&self) -> Result<(), SuspendError> {
        let started = self.lock().backend_mut().resume();
        match started {
            Some(started) => self.wait_started(started),
            None => Ok(()),
        }
    }

    /// Waits for a posted start; pulses the call and kick eventfds once
    /// the backend took the rings. A refused start already reports
    /// DEVICE_NEEDS_RESET to the driver; a lost connection goes the
    /// reconnection way.
    pub(super) fn wait_started(&self, started: Started) -> Result<(), SuspendError> {
        match started.wait() {
            Some(Ok(())) => {
                self.lock().backend().pulse();
                Ok(())
            }
            Some(Err(source)) => Err(SuspendError::Start {
                id: self.id.clone(),
                source,
            }),
            None => Err(SuspendError::StartTimedOut(self.id.clone())),
        }
    }
}

impl VirtioDevices {
    /// Runs `f` on every device at once (a device whose backend is slow
    /// costs one request deadline, not one each); results in device order.
    fn each<T: Send>(&self, f: impl Fn(&VirtioMmioDevice) -> T + Sync) -> Vec<T> {
        let devices: Vec<&VirtioMmioDevice> = self.iter().collect();
        if devices.len() < 2 {
            return devices.into_iter().map(&f).collect();
        }
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .map(|d| {
                    let d = *d;
                    std::thread::Builder::new()
                        .name("vu-suspend".into())
                        .spawn_scoped(s, move || f(d))
                        .map_err(|_| d)
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    Err(d) => f(d),
                })
                .collect()
        })
    }

    /// Suspends every device ([`VirtioMmioDevice::suspend`]); the state of
    /// each (None: not live), in device order. All or nothing: when one
    /// fails, the devices suspended by this call are resumed and the
    /// first error is returned.
    pub fn suspend_all(&self) -> Result<Vec<Option<VringState>>, SuspendError> {
        let before: Vec<bool> = self.iter().map(VirtioMmioDevice::is_suspended).collect();
        let results = self.each(VirtioMmioDevice::suspend);
        if results.iter().all(Result::is_ok) {
            return results.into_iter().collect();
        }
        for ((d, r), was) in self.iter().zip(&results).zip(before) {
            if r.is_ok() && !was {
                if let Err(e) = d.resume() {
                    tracing::warn!("{}", super::device::error_chain(&e));
                }
            }
        }
        results.into_iter().collect()
    }

    /// Resumes every suspended device ([`VirtioMmioDevice::resume`]);
    /// every device is tried, the first error is returned.
    pub fn resume_all(&self) -> Result<(), SuspendError> {
        self.each(VirtioMmioDevice::resume).into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
