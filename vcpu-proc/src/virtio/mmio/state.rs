//! The transport's registers as state to save and restore (the
//! `virtio-mmio` section of `docs/vmstate-format.md`).
//!
//! Only a transport the driver has not made live yet (no DRIVER_OK) can be
//! restored today: a live one also needs its backend's vrings restarted at
//! the saved indices (`GET_VRING_BASE`/`SET_VRING_BASE`, inflight state),
//! which is refused with a clear error rather than pretended.

use super::{status, MmioTransport, QueueConfig, VirtioBackend};
use crate::virtio::VirtioMmioDevice;

/// Why transport registers cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// The saved device was live; its vrings cannot be restored yet.
    #[error("virtio device {0}: restoring a live device (DRIVER_OK: its vring indices and inflight requests) is not implemented")]
    Live(String),
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
        if r.status & status::DRIVER_OK != 0 {
            return Err(TransportStateError::Live(id.to_string()));
        }
        Ok(())
    }

    /// Puts the registers of `r` back (after [`MmioTransport::check_regs`]).
    /// The device is not live in `r`, so the backend is only reset.
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

    /// Checks that `r` can be restored into this device.
    pub fn check_transport_regs(&self, r: &TransportRegs) -> Result<(), TransportStateError> {
        self.lock().check_regs(&self.id, r)
    }

    /// Restores the transport's registers (the VM is paused).
    pub fn restore_transport_regs(&self, r: &TransportRegs) -> Result<(), TransportStateError> {
        self.lock().restore_regs(&self.id, r)
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
    fn a_live_transport_state_is_refused_and_changes_nothing() {
        let mut saved = programmed().regs();
        saved.status |= status::DRIVER_OK;
        let mut fresh = MmioTransport::new(Dev::default());
        let before = fresh.regs();
        assert_eq!(
            fresh.restore_regs("d", &saved),
            Err(TransportStateError::Live("d".into()))
        );
        assert_eq!(fresh.regs(), before);
        assert_eq!(fresh.backend().resets, 0);
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
        assert_eq!(
            fresh.check_regs("d", &big),
            Err(TransportStateError::QueueSize {
                id: "d".into(),
                queue: 0,
                size: 128,
                max: 64
            })
        );
    }
}
