//! The `virtio-mmio` sections: each transport's registers and, for a
//! device that was live on its backend, its vring state (section version
//! 2; `docs/vmstate-format.md`). Keyed by the device id (and checked
//! against its slot and type on restore).
//!
//! Version 1 sections (registers only) are still read: a device that was
//! not live restores from them as before; one that was live (DRIVER_OK) is
//! refused, since version 1 did not carry its vrings.

use ipc_proto::vmstate::{OwnedSection, Reader, Section, SectionId, VmStateError, Writer};

use super::{Result, StateError};
use crate::virtio::mmio::state::{TransportRegs, TransportStateError};
use crate::virtio::mmio::{status, QueueConfig};
use crate::virtio::suspend::{QueueVring, VringState};
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
    /// Its rings, when it was live on its backend.
    pub vrings: Option<VringState>,
}

/// Bytes of one queue in a version 1 payload.
const QUEUE_LEN_V1: usize = 4 + 4 + 8 + 8 + 8;
/// Bytes of one queue in a version 2 payload (+ last avail, used index).
const QUEUE_LEN: usize = QUEUE_LEN_V1 + 4 + 4;

impl DeviceState {
    /// Reads every device of `devices`; a live device is suspended first
    /// if it is not yet (`VirtioDevices::suspend_all` does it for all at
    /// once) and stays suspended.
    pub fn capture(devices: &VirtioDevices) -> Result<Vec<DeviceState>> {
        devices
            .iter()
            .map(|d| {
                Ok(DeviceState {
                    id: d.id().to_string(),
                    slot: d.slot(),
                    vrings: d.suspend().map_err(StateError::Virtio)?,
                    regs: d.transport_regs(),
                })
            })
            .collect()
    }

    /// Checks that `saved` describes exactly the devices of `devices` and
    /// that each can take its state; changes nothing.
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
                d.check_state(&s.regs, s.vrings.as_ref())
                    .map_err(|e| StateError::Mismatch(crate::virtio::device::error_chain(&e)))?;
            }
        }
        Ok(())
    }

    /// Restores every device (after [`DeviceState::check`]): registers,
    /// and the rings of a live device started on its backend at the saved
    /// positions.
    pub fn restore(saved: &[DeviceState], devices: &VirtioDevices) -> Result<()> {
        for s in saved {
            if let Some(d) = devices.get(&s.id) {
                d.restore_state(&s.regs, s.vrings.as_ref())
                    .map_err(|e| match e {
                        TransportStateError::Start(e) => StateError::Virtio(e),
                        e => StateError::Mismatch(crate::virtio::device::error_chain(&e)),
                    })?;
            }
        }
        Ok(())
    }

    /// The section (version 2).
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
        let (acked, protocol) = self
            .vrings
            .as_ref()
            .map_or((0, 0), |v| (v.acked_features, v.protocol_features));
        w.u32(u32::from(self.vrings.is_some()))
            .u64(acked)
            .u64(protocol);
        let n = u32::try_from(r.queues.len()).map_err(|_| VmStateError::TooLarge("queues"))?;
        w.u32(n);
        for (i, q) in r.queues.iter().enumerate() {
            let v = self
                .vrings
                .as_ref()
                .and_then(|v| v.queues.get(i))
                .copied()
                .unwrap_or_default();
            w.u32(u32::from(q.size))
                .u32(u32::from(q.ready))
                .u64(q.desc)
                .u64(q.avail)
                .u64(q.used)
                .u32(u32::from(v.last_avail))
                .u32(u32::from(v.used));
        }
        Ok(OwnedSection {
            id: SectionId::VirtioMmio,
            payload: w.finish(),
        })
    }

    /// Reads a `virtio-mmio` section of version 1 or 2.
    pub fn decode(s: &Section<'_>) -> Result<Self> {
        let v2 = s.version >= 2;
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
        let (activated, acked_features, protocol_features) = if v2 {
            let activated = match r.u32("vring state")? {
                0 => false,
                1 => true,
                other => return Err(s.malformed(format!("activated is {other}")).into()),
            };
            (activated, r.u64("vring state")?, r.u64("vring state")?)
        } else {
            (false, 0, 0)
        };
        if !v2 && status & status::DRIVER_OK != 0 {
            return Err(s
                .malformed(format!(
                    "device {id} was live (DRIVER_OK) in a version 1 section, which carries no \
                     vring state; a live device needs a version 2 section"
                ))
                .into());
        }
        if activated && status & status::DRIVER_OK == 0 {
            return Err(s
                .malformed(format!("device {id} is activated without DRIVER_OK"))
                .into());
        }
        if !activated && (acked_features != 0 || protocol_features != 0) {
            return Err(s
                .malformed(format!("device {id} has features but was not activated"))
                .into());
        }
        let n = r.u32("queue count")?;
        let queue_len = if v2 { QUEUE_LEN } else { QUEUE_LEN_V1 };
        if u64::from(n) * queue_len as u64 != r.remaining() as u64 {
            return Err(s
                .malformed(format!(
                    "{n} queues announced, {} bytes of queues present",
                    r.remaining()
                ))
                .into());
        }
        let mut queues = Vec::with_capacity(r.remaining() / queue_len);
        let mut rings = Vec::with_capacity(queues.capacity());
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
            let ring = if v2 {
                let idx = |v: u32| {
                    u16::try_from(v).map_err(|_| s.malformed(format!("queue {i} index {v}")))
                };
                QueueVring {
                    last_avail: idx(r.u32("queue")?)?,
                    used: idx(r.u32("queue")?)?,
                }
            } else {
                QueueVring::default()
            };
            check_ring(s, i, size, ready && activated, ring)?;
            rings.push(ring);
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
            vrings: activated.then_some(VringState {
                acked_features,
                protocol_features,
                queues: rings,
            }),
        })
    }
}

/// The ring position of queue `i` must be possible: zeroes on a queue
/// that is not live, else a ring of a power-of-two size with at most
/// `size` buffers between the used and the last avail index (QEMU's
/// check on load).
fn check_ring(s: &Section<'_>, i: u32, size: u16, live: bool, ring: QueueVring) -> Result<()> {
    if !live {
        if ring != QueueVring::default() {
            return Err(s
                .malformed(format!("queue {i} has ring indices but is not live"))
                .into());
        }
        return Ok(());
    }
    if !size.is_power_of_two() {
        return Err(s
            .malformed(format!("live queue {i} has size {size}"))
            .into());
    }
    let outstanding = ring.last_avail.wrapping_sub(ring.used);
    if outstanding > size {
        return Err(s
            .malformed(format!(
                "queue {i}: last avail index {} is {outstanding} ahead of used index {}, more than the ring's {size}",
                ring.last_avail, ring.used
            ))
            .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
