//! What one kind of vhost-user device needs from the generic frontend: its
//! virtio device type, the size of its config space, the features and
//! queue count the guest sees given what the backend offers, the config
//! space the frontend builds when the backend serves none, and whether its
//! rings may be resumed from the used index after a backend crash without
//! an inflight record. The transport, the session and the reconnection
//! are the same for every kind (`device.rs`, `session.rs`, `reconnect.rs`).

use super::net::{self, NetProfile};
use super::scsi;
use super::vhost_user::VhostUserError;
use super::VirtioError;

/// Virtio device type of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Bytes of the virtio-blk config space fetched from the backend.
pub const VIRTIO_BLK_CONFIG_LEN: u32 = 60;

/// The per-kind description of a vhost-user device.
#[derive(Debug, Clone)]
pub struct DeviceKind {
    /// Virtio device type.
    pub device_type: u32,
    /// Size of the config space (fetched with GET_CONFIG, or built).
    pub config_len: u32,
    /// What the frontend adds to or takes from the backend's offer.
    pub profile: Profile,
}

/// How a kind departs from "the backend's device, as offered".
#[derive(Debug, Clone)]
pub enum Profile {
    /// A storage device (blk, scsi, ...): the backend's features and
    /// config space as they are; the config space is required
    /// (VHOST_USER_PROTOCOL_F_CONFIG). A ring left ambiguous by a backend
    /// without an inflight record is not resumed (a request could
    /// complete twice, or never).
    Storage,
    /// A virtio-net device (`net.rs`).
    Net(NetProfile),
    /// A virtio-scsi host (`scsi.rs`): the frontend provides the config
    /// space itself, as QEMU's vhost-user-scsi does (queues of at most
    /// `queue_size` entries), and needs a request queue beside the
    /// control and event queues.
    Scsi {
        /// Largest queue size (the config's `seg_max` follows from it).
        queue_size: u16,
    },
}

/// The device as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Feature bits offered to the guest (before the transport's mask).
    pub features: u64,
    /// Queues of the device.
    pub queues: u16,
}

impl DeviceKind {
    /// A virtio-blk device.
    pub fn block() -> Self {
        Self::storage(VIRTIO_ID_BLOCK, VIRTIO_BLK_CONFIG_LEN)
    }

    /// A storage device of type `device_type` whose backend serves a
    /// config space of `config_len` bytes.
    pub fn storage(device_type: u32, config_len: u32) -> Self {
        DeviceKind {
            device_type,
            config_len,
            profile: Profile::Storage,
        }
    }

    /// A virtio-net device; `mac` is the address the frontend reports
    /// when the backend serves no config space.
    pub fn net(mac: Option<[u8; 6]>) -> Self {
        DeviceKind {
            device_type: VIRTIO_ID_NET,
            config_len: net::CONFIG_LEN,
            profile: Profile::Net(NetProfile { mac }),
        }
    }

    /// The device the guest sees when the backend offers `offered`
    /// features, serves `served` queues (of the `wanted` ones) and a
    /// config space or not (`backend_config`).
    pub fn shape(
        &self,
        offered: u64,
        backend_config: bool,
        wanted: u16,
        served: u16,
    ) -> Result<Shape, VirtioError> {
        match &self.profile {
            Profile::Storage => {
                if !backend_config {
                    return Err(VirtioError::Frontend(VhostUserError::MissingFeature(
                        "VHOST_USER_PROTOCOL_F_CONFIG",
                    )));
                }
                Ok(Shape {
                    features: offered,
                    queues: served.min(wanted).max(1),
                })
            }
            Profile::Net(n) => n.shape(offered, backend_config, wanted, served),
            Profile::Scsi { queue_size } => {
                if wanted < scsi::MIN_QUEUES {
                    return Err(VirtioError::BadQueues {
                        num_queues: wanted,
                        queue_size: *queue_size,
                    });
                }
                let queues = served.min(wanted);
                if queues < scsi::MIN_QUEUES {
                    return Err(VirtioError::TooFewQueues {
                        wanted: scsi::MIN_QUEUES,
                        offered: queues,
                    });
                }
                Ok(Shape {
                    features: offered,
                    queues,
                })
            }
        }
    }

    /// False when the frontend provides the config space itself and never
    /// fetches it from the backend (nor forwards the driver's writes).
    pub fn fetches_config(&self) -> bool {
        match self.profile {
            Profile::Storage | Profile::Net(_) => true,
            Profile::Scsi { .. } => false,
        }
    }

    /// The config space the frontend shows when the backend serves none
    /// (None for kinds whose backend must serve it).
    pub fn built_config(&self, shape: &Shape) -> Option<Vec<u8>> {
        match &self.profile {
            Profile::Storage => None,
            Profile::Net(n) => Some(n.config(shape)),
            Profile::Scsi { queue_size } => Some(scsi::config_space(shape.queues, *queue_size)),
        }
    }

    /// True when the rings may be resumed from the used index after a
    /// crash of a backend that kept no inflight record, whatever was
    /// outstanding: a network queue loses or repeats at most the frames
    /// of the crash window, as a wire would.
    pub fn resumes_without_inflight(&self) -> bool {
        match self.profile {
            Profile::Storage | Profile::Scsi { .. } => false,
            Profile::Net(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_device_requires_the_backend_config_space() {
        let blk = DeviceKind::block();
        assert!(blk.shape(1 << 32, false, 1, 1).is_err());
        let s = blk.shape((1 << 32) | (1 << 9), true, 4, 2).unwrap();
        assert_eq!(s.features, (1 << 32) | (1 << 9));
        assert_eq!(s.queues, 2);
        assert!(blk.built_config(&s).is_none());
        assert!(!blk.resumes_without_inflight());
    }
}
