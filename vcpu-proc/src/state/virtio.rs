//! The `virtio-mmio` sections: each transport's registers, keyed by the
//! device id (and checked against its slot and type on restore).

use ipc_proto::vmstate::{OwnedSection, Reader, Section, SectionId, VmStateError, Writer};

use super::{Result, StateError};
use crate::virtio::mmio::state::TransportRegs;
use crate::virtio::mmio::QueueConfig;
use crate::virtio::VirtioDevices;

/// One device's saved transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// The device id (`-device ...,id=`).
    pub id: String,
    /// Its virtio-mmio slot.
    pub slot: u32,
    /// Its registers.
    pub regs: TransportRegs,
}

/// Bytes of one queue in the payload.
const QUEUE_LEN: usize = 4 + 4 + 8 + 8 + 8;

impl DeviceState {
    /// Reads every device of `devices`.
    pub fn capture(devices: &VirtioDevices) -> Vec<DeviceState> {
        devices
            .iter()
            .map(|d| DeviceState {
                id: d.id().to_string(),
                slot: d.slot(),
                regs: d.transport_regs(),
            })
            .collect()
    }

    /// Checks that `saved` describes exactly the devices of `devices` and
    /// that each can take its registers; changes nothing.
    pub fn check(saved: &[DeviceState], devices: &VirtioDevices) -> Result<()> {
        let mut have: Vec<(String, u32)> = devices
            .iter()
            .map(|d| (d.id().to_string(), d.slot()))
            .collect();
        let mut want: Vec<(String, u32)> = saved.iter().map(|s| (s.id.clone(), s.slot)).collect();
        have.sort();
        want.sort();
        if have != want {
            return Err(StateError::Mismatch(format!(
                "the state has virtio devices {want:?}, the VM has {have:?}"
            )));
        }
        for s in saved {
            if let Some(d) = devices.get(&s.id) {
                d.check_transport_regs(&s.regs)
                    .map_err(|e| StateError::Mismatch(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Restores every device (after [`DeviceState::check`]).
    pub fn restore(saved: &[DeviceState], devices: &VirtioDevices) -> Result<()> {
        for s in saved {
            if let Some(d) = devices.get(&s.id) {
                d.restore_transport_regs(&s.regs)
                    .map_err(|e| StateError::Mismatch(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The section.
    pub fn encode(&self) -> Result<OwnedSection> {
        let r = &self.regs;
        let mut w = Writer::new();
        w.blob(self.id.as_bytes())?;
        w.u32(self.slot)
            .u32(r.device_type)
            .u32(r.device_features_sel)
            .u32(r.driver_features_sel)
            .u64(r.driver_features)
            .u32(r.queue_sel)
            .u32(r.status)
            .u32(r.interrupt_status)
            .u32(r.config_generation)
            .u32(r.shm_sel);
        let n = u32::try_from(r.queues.len()).map_err(|_| VmStateError::TooLarge("queues"))?;
        w.u32(n);
        for q in &r.queues {
            w.u32(u32::from(q.size))
                .u32(u32::from(q.ready))
                .u64(q.desc)
                .u64(q.avail)
                .u64(q.used);
        }
        Ok(OwnedSection {
            id: SectionId::VirtioMmio,
            payload: w.finish(),
        })
    }

    /// Reads a `virtio-mmio` section.
    pub fn decode(s: &Section<'_>) -> Result<Self> {
        let mut r = Reader::new(s.payload);
        let id = std::str::from_utf8(r.blob("device id")?)
            .map_err(|_| s.malformed("the device id is not UTF-8"))?
            .to_string();
        let slot = r.u32("slot")?;
        let device_type = r.u32("device type")?;
        let device_features_sel = r.u32("registers")?;
        let driver_features_sel = r.u32("registers")?;
        let driver_features = r.u64("registers")?;
        let queue_sel = r.u32("registers")?;
        let status = r.u32("registers")?;
        let interrupt_status = r.u32("registers")?;
        let config_generation = r.u32("registers")?;
        let shm_sel = r.u32("registers")?;
        let n = r.u32("queue count")?;
        if u64::from(n) * QUEUE_LEN as u64 != r.remaining() as u64 {
            return Err(s
                .malformed(format!(
                    "{n} queues announced, {} bytes of queues present",
                    r.remaining()
                ))
                .into());
        }
        let mut queues = Vec::with_capacity(r.remaining() / QUEUE_LEN);
        for i in 0..n {
            let size = u16::try_from(r.u32("queue")?)
                .map_err(|_| s.malformed(format!("queue {i} size above 65535")))?;
            let ready = match r.u32("queue")? {
                0 => false,
                1 => true,
                other => return Err(s.malformed(format!("queue {i} ready is {other}")).into()),
            };
            queues.push(QueueConfig {
                size,
                ready,
                desc: r.u64("queue")?,
                avail: r.u64("queue")?,
                used: r.u64("queue")?,
            });
        }
        Ok(DeviceState {
            id,
            slot,
            regs: TransportRegs {
                device_type,
                device_features_sel,
                driver_features_sel,
                driver_features,
                queue_sel,
                queues,
                status,
                interrupt_status,
                config_generation,
                shm_sel,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceState {
        DeviceState {
            id: "disk0".into(),
            slot: 3,
            regs: TransportRegs {
                device_type: 2,
                device_features_sel: 1,
                driver_features_sel: 1,
                driver_features: 1 << 32 | 1 << 9,
                queue_sel: 1,
                queues: vec![
                    QueueConfig {
                        size: 128,
                        ready: true,
                        desc: 0x1000,
                        avail: 0x2000,
                        used: 0x3000,
                    },
                    QueueConfig::default(),
                ],
                status: 0xb,
                interrupt_status: 2,
                config_generation: 7,
                shm_sel: 0,
            },
        }
    }

    fn section(payload: &[u8]) -> Section<'_> {
        Section {
            id: SectionId::VirtioMmio,
            version: 1,
            payload,
        }
    }

    #[test]
    fn a_transport_section_round_trips() {
        let s = sample().encode().unwrap();
        assert_eq!(DeviceState::decode(&section(&s.payload)).unwrap(), sample());
    }

    #[test]
    fn a_queue_count_the_payload_cannot_hold_is_malformed() {
        let mut p = sample().encode().unwrap().payload;
        // The queue count sits right before the two queues.
        let at = p.len() - 2 * QUEUE_LEN - 4;
        p[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = DeviceState::decode(&section(&p)).unwrap_err();
        assert!(err.to_string().contains("queues announced"), "{err}");
    }

    #[test]
    fn a_queue_ready_value_other_than_0_or_1_is_malformed() {
        let mut p = sample().encode().unwrap().payload;
        let at = p.len() - 2 * QUEUE_LEN + 4;
        p[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
        let err = DeviceState::decode(&section(&p)).unwrap_err();
        assert!(err.to_string().contains("ready is 5"), "{err}");
    }

    #[test]
    fn every_truncated_transport_section_is_an_error() {
        let p = sample().encode().unwrap().payload;
        for n in 0..p.len() {
            assert!(
                DeviceState::decode(&section(&p[..n])).is_err(),
                "length {n}"
            );
        }
    }
}
