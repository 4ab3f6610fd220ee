//! virtio-scsi (device type 8) over virtio-mmio, its queues served by a
//! vhost-user-scsi backend (block-proc): the control queue, the event
//! queue and one or more request queues. The data path is the generic
//! vhost-user device's (`device.rs`); what is scsi-specific is here: the
//! queue layout and the config space (`struct virtio_scsi_config`).
//!
//! vhost-user-scsi backends serve no GET_CONFIG, so the frontend provides
//! the config space itself, as QEMU's `vhost-user-scsi` does, with QEMU's
//! values: `seg_max` = queue size - 2, `max_sectors` 0xFFFF, `cmd_per_lun`
//! 128, `sense_size` 96, `cdb_size` 32, one channel, targets 0..=255, LUNs
//! 0..=16383. The driver may write `sense_size` and `cdb_size`; a write
//! that changes them is refused (the backend could not follow it), as
//! QEMU's vhost-scsi refuses it.

use super::kind::{DeviceKind, Profile};
use super::{Result, VhostUserParams, VirtioError, VirtioMmioDevice};

/// Virtio device type of a SCSI host.
pub const VIRTIO_ID_SCSI: u32 = 8;
/// Queues before the request queues: control (0) and event (1).
pub const FIXED_QUEUES: u16 = 2;
/// Fewest queues of a controller: control, event and one request queue.
pub const MIN_QUEUES: u16 = FIXED_QUEUES + 1;
/// Size of `struct virtio_scsi_config`.
pub const CONFIG_LEN: usize = 36;
/// Sense bytes a response carries (VIRTIO_SCSI_SENSE_DEFAULT_SIZE).
pub const SENSE_SIZE: u32 = 96;
/// CDB bytes a request carries (VIRTIO_SCSI_CDB_DEFAULT_SIZE).
pub const CDB_SIZE: u32 = 32;
/// Largest transfer in sectors (QEMU's `max_sectors` default).
pub const MAX_SECTORS: u32 = 0xffff;
/// Commands per LUN (QEMU's `cmd_per_lun` default).
pub const CMD_PER_LUN: u32 = 128;
/// Size of `struct virtio_scsi_event`.
pub const EVENT_INFO_SIZE: u32 = 16;
/// Highest channel (VIRTIO_SCSI_MAX_CHANNEL).
pub const MAX_CHANNEL: u16 = 0;
/// Highest target (VIRTIO_SCSI_MAX_TARGET).
pub const MAX_TARGET: u16 = 255;
/// Highest LUN (VIRTIO_SCSI_MAX_LUN).
pub const MAX_LUN: u32 = 16383;

/// The config space of a controller with `queues` virtqueues in all
/// (control and event included) of at most `queue_size` entries.
pub fn config_space(queues: u16, queue_size: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(CONFIG_LEN);
    let words = [
        u32::from(queues.saturating_sub(FIXED_QUEUES)),
        u32::from(queue_size.saturating_sub(2)),
        MAX_SECTORS,
        CMD_PER_LUN,
        EVENT_INFO_SIZE,
        SENSE_SIZE,
        CDB_SIZE,
    ];
    for w in words {
        c.extend_from_slice(&w.to_le_bytes());
    }
    c.extend_from_slice(&MAX_CHANNEL.to_le_bytes());
    c.extend_from_slice(&MAX_TARGET.to_le_bytes());
    c.extend_from_slice(&MAX_LUN.to_le_bytes());
    c
}

/// What a virtio-scsi device with queues of at most `queue_size` entries
/// is to the generic vhost-user device (config_len 0: never fetched).
pub fn kind(queue_size: u16) -> DeviceKind {
    DeviceKind {
        device_type: VIRTIO_ID_SCSI,
        config_len: 0,
        profile: Profile::Scsi { queue_size },
    }
}

impl VirtioMmioDevice {
    /// Attaches a vhost-user-scsi backend as virtio-mmio device `slot`.
    /// `p.num_queues` counts every virtqueue (control, event and request
    /// queues: at least 3); the backend may serve fewer request queues,
    /// and the config space then says how many there are.
    pub fn new_vhost_user_scsi(p: VhostUserParams<'_>) -> Result<Self> {
        let queue_size = p.queue_size;
        if p.num_queues < MIN_QUEUES {
            return Err(VirtioError::BadQueues {
                num_queues: p.num_queues,
                queue_size,
            });
        }
        Self::new_vhost_user(p, kind(queue_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(c: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(c[at..at + 4].try_into().unwrap())
    }

    fn u16_at(c: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(c[at..at + 2].try_into().unwrap())
    }

    #[test]
    fn config_space_has_virtio_scsi_config_layout_with_qemu_defaults() {
        let c = config_space(4, 128);
        assert_eq!(c.len(), CONFIG_LEN);
        assert_eq!(u32_at(&c, 0), 2, "num_queues counts request queues");
        assert_eq!(u32_at(&c, 4), 126, "seg_max");
        assert_eq!(u32_at(&c, 8), 0xffff, "max_sectors");
        assert_eq!(u32_at(&c, 12), 128, "cmd_per_lun");
        assert_eq!(u32_at(&c, 16), 16, "event_info_size");
        assert_eq!(u32_at(&c, 20), 96, "sense_size");
        assert_eq!(u32_at(&c, 24), 32, "cdb_size");
        assert_eq!(u16_at(&c, 28), 0, "max_channel");
        assert_eq!(u16_at(&c, 30), 255, "max_target");
        assert_eq!(u32_at(&c, 32), 16383, "max_lun");
    }

    #[test]
    fn kind_needs_a_request_queue_beside_control_and_event() {
        let k = kind(128);
        assert_eq!(k.device_type, 8);
        assert!(
            !k.fetches_config(),
            "a vhost-user-scsi backend is not asked for its config"
        );
        assert!(k.shape(1 << 32, true, 2, 3).is_err());
        assert!(k.shape(1 << 32, true, 3, 2).is_err());
        let s = k.shape(1 << 32, false, 4, 3).unwrap();
        assert_eq!(s.queues, 3);
        assert_eq!(k.built_config(&s), Some(config_space(3, 128)));
        assert!(!k.resumes_without_inflight());
    }
}

#[cfg(test)]
#[path = "scsi_frontend_tests.rs"]
mod frontend_tests;
