//! The transport's registers as state to save and restore (the
//! `virtio-mmio` section of `docs/vmstate-format.md`), and the restore of
//! a live device: its registers, then its rings made live on the (new or
//! same) backend with the saved avail positions (`suspend.rs` says how
//! they were taken).
//!
//! A restore over a device that is live (the same VM, e.g. a state loaded
//! over a paused VM) first resets it — its rings stop at the backend, its
//! inflight region is dropped — then applies the saved registers and
//! starts the saved rings, as into a fresh VM.

use super::{status, Activation, MmioTransport, QueueConfig, VirtioBackend};
use crate::virtio::reconnect::used_index;
use crate::virtio::suspend::{SuspendError, VringState};
use crate::virtio::vhost_user::VhostUserError;
use crate::virtio::{Transport, VirtioMmioDevice};

/// Why transport registers cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    /// The saved device is a different device.
    #[error("virtio device {id}: the state is of device type {saved} with {saved_queues} queues, this one is type {have} with {have_queues}")]
    Mismatch {
        /// Device id.
        id: String,
        /// Saved device type.
        saved: u32,
        /// Saved queue count.
        saved_queues: usize,
        /// This device's type.
        have: u32,
        /// This device's queue count.
        have_queues: usize,
    },
    /// A saved queue size exceeds the device's maximum.
    #[error("virtio device {id}: queue {queue} has size {size}, above the device's maximum {max}")]
    QueueSize {
        /// Device id.
        id: String,
        /// Queue index.
        queue: usize,
        /// Saved size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// The vring state does not have one entry per queue.
    #[error("virtio device {id}: the vring state has {saved} queues, the transport {have}")]
    VringCount {
        /// Device id.
        id: String,
        /// Queues in the vring state.
        saved: usize,
        /// Queues of the transport.
        have: usize,
    },
    /// The driver uses features this device does not offer.
    #[error(
        "virtio device {id}: the guest uses features {driver:#x}, this device offers {offered:#x}"
    )]
    Features {
        /// Device id.
        id: String,
        /// The driver's features.
        driver: u64,
        /// This device's offer.
        offered: u64,
    },
    /// This backend would be told other features than the saved one was.
    #[error("virtio device {id}: the saved backend was told features {saved:#x}, this one would be told {have:#x}")]
    BackendFeatures {
        /// Device id.
        id: String,
        /// Told to the saved backend.
        saved: u64,
        /// What this backend would be told.
        have: u64,
    },
    /// A saved ring does not lie in this VM's RAM.
    #[error("virtio device {id}: a saved ring is unusable here")]
    Ring {
        /// Device id.
        id: String,
        /// The cause.
        #[source]
        source: VhostUserError,
    },
    /// The used index in guest RAM is not the saved one: the RAM is not
    /// the RAM saved with this state.
    #[error("virtio device {id}: queue {queue}'s used index is {memory} in guest RAM, the state says {saved} (the RAM is not the one saved with this state)")]
    UsedIndex {
        /// Device id.
        id: String,
        /// Queue index.
        queue: usize,
        /// In the state.
        saved: u16,
        /// In guest RAM.
        memory: u16,
    },
    /// The backend did not take the restored rings.
    #[error("virtio device: the restored rings could not be started")]
    Start(#[source] SuspendError),
}

/// The guest-visible registers of one transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportRegs {
    /// Virtio device type (checked on restore).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Every queue's configuration.
    pub queues: Vec<QueueConfig>,
    /// Device status.
    pub status: u32,
    /// Latched interrupt status (the config-change bit).
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// SHMSel.
    pub shm_sel: u32,
}

impl<B: VirtioBackend> MmioTransport<B> {
    /// The registers as the guest left them.
    pub fn regs(&self) -> TransportRegs {
        TransportRegs {
            device_type: self.backend.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues: self.queues.clone(),
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            shm_sel: self.shm_sel,
        }
    }

    /// Checks that `r` can be restored into this transport (`id` names it
    /// in errors); changes nothing.
    pub fn check_regs(&self, id: &str, r: &TransportRegs) -> Result<(), TransportStateError> {
        let have = self.backend.device_type();
        if r.device_type != have || r.queues.len() != self.queues.len() {
            return Err(TransportStateError::Mismatch {
                id: id.to_string(),
                saved: r.device_type,
                saved_queues: r.queues.len(),
                have,
                have_queues: self.queues.len(),
            });
        }
        let max = self.backend.queue_max_size();
        if let Some((queue, q)) = r.queues.iter().enumerate().find(|(_, q)| q.size > max) {
            return Err(TransportStateError::QueueSize {
                id: id.to_string(),
                queue,
                size: q.size,
                max,
            });
        }
        Ok(())
    }

    /// Puts the registers of `r` back (after [`MmioTransport::check_regs`]).
    /// The backend is reset; making a live device live again on it is the
    /// caller's (see [`VirtioMmioDevice::restore_state`]).
    pub fn restore_regs(&mut self, id: &str, r: &TransportRegs) -> Result<(), TransportStateError> {
        self.check_regs(id, r)?;
        self.reset();
        self.device_features_sel = r.device_features_sel;
        self.driver_features_sel = r.driver_features_sel;
        self.driver_features = r.driver_features;
        self.queue_sel = r.queue_sel;
        self.queues.clone_from(&r.queues);
        self.status = r.status;
        self.interrupt_status = r.interrupt_status;
        self.config_generation = r.config_generation;
        self.shm_sel = r.shm_sel;
        Ok(())
    }
}

impl VirtioMmioDevice {
    /// The virtio-mmio slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The transport's registers.
    pub fn transport_regs(&self) -> TransportRegs {
        self.lock().regs()
    }

    /// Checks that `r` and, for a device that was live, `vrings` can be
    /// restored into this device; changes nothing.
    pub fn check_state(
        &self,
        r: &TransportRegs,
        vrings: Option<&VringState>,
    ) -> Result<(), TransportStateError> {
        let t = self.lock();
        t.check_regs(&self.id, r)?;
        match vrings {
            Some(v) => self.check_vrings(&t, r, v),
            None => Ok(()),
        }
    }

    /// The checks of a live device's state: same features for the
    /// backend, rings inside this VM's RAM, used indices as saved.
    fn check_vrings(
        &self,
        t: &Transport,
        r: &TransportRegs,
        v: &VringState,
    ) -> Result<(), TransportStateError> {
        let id = || self.id.clone();
        if v.queues.len() != r.queues.len() {
            return Err(TransportStateError::VringCount {
                id: id(),
                saved: v.queues.len(),
                have: r.queues.len(),
            });
        }
        let dev = t.backend();
        let offered = dev.device_features();
        if r.driver_features & !offered != 0 {
            return Err(TransportStateError::Features {
                id: id(),
                driver: r.driver_features,
                offered,
            });
        }
        let have = dev.acked_features(r.driver_features);
        if have != v.acked_features {
            return Err(TransportStateError::BackendFeatures {
                id: id(),
                saved: v.acked_features,
                have,
            });
        }
        dev.check_activation(&activation(r))
            .map_err(|source| TransportStateError::Ring { id: id(), source })?;
        for (queue, (q, s)) in r.queues.iter().zip(&v.queues).enumerate() {
            if !q.ready {
                continue;
            }
            let memory =
                used_index(dev.mem(), q.used).ok_or_else(|| TransportStateError::Ring {
                    id: id(),
                    source: VhostUserError::BadRing {
                        queue,
                        gpa: q.used,
                        len: 4,
                    },
                })?;
            if memory != s.used {
                return Err(TransportStateError::UsedIndex {
                    id: id(),
                    queue,
                    saved: s.used,
                    memory,
                });
            }
        }
        Ok(())
    }

    /// Restores the device (the VM is paused): its registers, and for a
    /// device that was live, its rings started on the backend with
    /// SET_VRING_BASE = the saved last avail index (the start of an
    /// activation, `device.rs`), waiting for the backend to take them. A
    /// device whose driver had it live (DRIVER_OK) while it was not live
    /// on its backend reports DEVICE_NEEDS_RESET, as it did when saved.
    pub fn restore_state(
        &self,
        r: &TransportRegs,
        vrings: Option<&VringState>,
    ) -> Result<(), TransportStateError> {
        let started = {
            let mut t = self.lock();
            t.check_regs(&self.id, r)?;
            if let Some(v) = vrings {
                self.check_vrings(&t, r, v)?;
            }
            t.restore_regs(&self.id, r)?;
            match vrings {
                None => {
                    if r.status & status::DRIVER_OK != 0 {
                        t.backend().mark_needs_reset();
                    }
                    None
                }
                Some(v) => {
                    let dev = t.backend_mut();
                    if v.protocol_features != dev.protocol_features() {
                        tracing::info!(
                            "virtio device {}: the saved backend negotiated protocol features \
                             {:#x}, this one {:#x} (nothing in flight: no state depends on them)",
                            self.id,
                            v.protocol_features,
                            dev.protocol_features()
                        );
                    }
                    let bases: Vec<u16> = v.queues.iter().map(|q| q.last_avail).collect();
                    dev.restore_active(&activation(r), &bases)
                        .map_err(|source| TransportStateError::Ring {
                            id: self.id.clone(),
                            source,
                        })?
                }
            }
        };
        match started {
            Some(s) => self.wait_started(s).map_err(TransportStateError::Start),
            None => Ok(()),
        }
    }
}

/// What the driver set up, as the saved registers say.
fn activation(r: &TransportRegs) -> Activation {
    Activation {
        driver_features: r.driver_features,
        queues: r.queues.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{reg, Activation};
    use super::*;

    /// A block-like device with 2 queues of at most 64.
    #[derive(Debug, Default)]
    struct Dev {
        resets: usize,
    }

    impl VirtioBackend for Dev {
        fn device_type(&self) -> u32 {
            2
        }
        fn device_features(&self) -> u64 {
            super::super::F_VERSION_1
        }
        fn num_queues(&self) -> u16 {
            2
        }
        fn queue_max_size(&self) -> u16 {
            64
        }
        fn read_config(&mut self, _offset: u64, data: &mut [u8]) -> bool {
            data.fill(0);
            false
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, _activation: &Activation) -> bool {
            true
        }
        fn needs_reset(&self) -> bool {
            false
        }
        fn take_config_interrupt(&mut self) -> bool {
            false
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn wr(t: &mut MmioTransport<Dev>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn rd(t: &mut MmioTransport<Dev>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// A driver halfway through set-up: features accepted, queue 1 placed.
    fn programmed() -> MmioTransport<Dev> {
        let mut t = MmioTransport::new(Dev::default());
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::DRIVER_FEATURES, 1);
        wr(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        wr(&mut t, reg::QUEUE_SEL, 1);
        wr(&mut t, reg::QUEUE_NUM, 32);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x5000);
        wr(&mut t, reg::QUEUE_AVAIL_HIGH, 0x1);
        t
    }

    #[test]
    fn registers_restored_into_a_fresh_transport_read_back_the_same() {
        let saved = programmed().regs();
        let mut fresh = MmioTransport::new(Dev::default());
        fresh.restore_regs("d", &saved).unwrap();
        assert_eq!(fresh.regs(), saved);
        assert_eq!(rd(&mut fresh, reg::QUEUE_NUM), 32);
        assert_eq!(
            rd(&mut fresh, reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        assert_eq!(fresh.queues()[1].avail, 1 << 32);
    }

    #[test]
    fn a_live_transport_state_restores_its_registers_without_activating_the_backend() {
        let mut saved = programmed().regs();
        saved.status |= status::DRIVER_OK;
        let mut fresh = MmioTransport::new(Dev::default());
        fresh.restore_regs("d", &saved).unwrap();
        assert_eq!(fresh.regs(), saved);
        // Reset once; activation is the device's (restore_state).
        assert_eq!(fresh.backend().resets, 1);
    }

    #[test]
    fn a_state_of_another_device_or_queue_size_is_refused() {
        let mut other = programmed().regs();
        other.device_type = 1;
        let fresh = MmioTransport::new(Dev::default());
        assert!(matches!(
            fresh.check_regs("d", &other),
            Err(TransportStateError::Mismatch {
                saved: 1,
                have: 2,
                ..
            })
        ));
        let mut big = programmed().regs();
        big.queues[0].size = 128;
        assert!(matches!(
            fresh.check_regs("d", &big),
            Err(TransportStateError::QueueSize {
                queue: 0,
                size: 128,
                max: 64,
                ..
            })
        ));
    }
}
