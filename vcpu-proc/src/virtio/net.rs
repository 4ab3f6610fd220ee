//! The virtio-net specifics of the vhost-user frontend (virtio 1.2, 5.1):
//! the queue layout (receiveq/transmitq pairs, then the control queue when
//! there is one), the feature bits the frontend can stand behind, and the
//! config space it builds when the backend serves none.
//!
//! - Queues: `2 × pairs`, plus the control queue (served by the backend,
//!   as every other queue) when the backend offers VIRTIO_NET_F_CTRL_VQ
//!   and serves an odd number of queues. Without a control queue, the
//!   features that need one (MQ, CTRL_RX, GUEST_ANNOUNCE, RSS, ...) are
//!   withdrawn and the device has one pair. A backend without the MQ
//!   protocol feature serves one pair, as QEMU assumes.
//! - Config space: the first 12 bytes (mac, status, max_virtqueue_pairs,
//!   mtu). The features whose fields lie beyond (SPEED_DUPLEX, RSS,
//!   HASH_REPORT, HASH_TUNNEL) are withdrawn.
//! - Without VHOST_USER_PROTOCOL_F_CONFIG the frontend builds the config
//!   space: the `mac=` of the device (VIRTIO_NET_F_MAC offered only when
//!   there is one), link up (VIRTIO_NET_F_STATUS), the pair count; MTU is
//!   withdrawn (the frontend does not know it). The bits the frontend adds
//!   are never sent to the backend (`device.rs` masks SET_FEATURES with
//!   the backend's offer).
//! - Link changes reach the guest when the backend reports a new config
//!   space (its status field): the config generation moves and a config
//!   interrupt is raised (`device.rs`).

use super::kind::Shape;
use super::VirtioError;

/// Bytes of the virtio-net config space the frontend uses.
pub const CONFIG_LEN: u32 = 12;
/// Offset of `status` in the config space.
pub const CONFIG_STATUS: usize = 6;
/// VIRTIO_NET_S_LINK_UP.
pub const S_LINK_UP: u16 = 1;

/// virtio-net feature bits (virtio 1.2, 5.1.3; 50, 51 from the 1.3 draft).
pub mod f {
    /// VIRTIO_NET_F_CTRL_GUEST_OFFLOADS.
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    /// VIRTIO_NET_F_MTU.
    pub const MTU: u64 = 1 << 3;
    /// VIRTIO_NET_F_MAC.
    pub const MAC: u64 = 1 << 5;
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// VIRTIO_NET_F_STATUS.
    pub const STATUS: u64 = 1 << 16;
    /// VIRTIO_NET_F_CTRL_VQ.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// VIRTIO_NET_F_CTRL_RX.
    pub const CTRL_RX: u64 = 1 << 18;
    /// VIRTIO_NET_F_CTRL_VLAN.
    pub const CTRL_VLAN: u64 = 1 << 19;
    /// VIRTIO_NET_F_CTRL_RX_EXTRA.
    pub const CTRL_RX_EXTRA: u64 = 1 << 20;
    /// VIRTIO_NET_F_GUEST_ANNOUNCE.
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    /// VIRTIO_NET_F_MQ.
    pub const MQ: u64 = 1 << 22;
    /// VIRTIO_NET_F_CTRL_MAC_ADDR.
    pub const CTRL_MAC_ADDR: u64 = 1 << 23;
    /// VIRTIO_NET_F_DEVICE_STATS.
    pub const DEVICE_STATS: u64 = 1 << 50;
    /// VIRTIO_NET_F_HASH_TUNNEL.
    pub const HASH_TUNNEL: u64 = 1 << 51;
    /// VIRTIO_NET_F_VQ_NOTF_COAL.
    pub const VQ_NOTF_COAL: u64 = 1 << 52;
    /// VIRTIO_NET_F_NOTF_COAL.
    pub const NOTF_COAL: u64 = 1 << 53;
    /// VIRTIO_NET_F_HASH_REPORT.
    pub const HASH_REPORT: u64 = 1 << 57;
    /// VIRTIO_NET_F_RSS.
    pub const RSS: u64 = 1 << 60;
    /// VIRTIO_NET_F_SPEED_DUPLEX.
    pub const SPEED_DUPLEX: u64 = 1 << 63;

    /// Features that need the control queue.
    pub const NEED_CTRL_VQ: u64 = CTRL_VQ
        | CTRL_GUEST_OFFLOADS
        | CTRL_RX
        | CTRL_VLAN
        | CTRL_RX_EXTRA
        | GUEST_ANNOUNCE
        | MQ
        | CTRL_MAC_ADDR
        | DEVICE_STATS
        | VQ_NOTF_COAL
        | NOTF_COAL
        | RSS;
    /// Features whose config fields lie beyond the 12 bytes used.
    pub const NEED_LONG_CONFIG: u64 = SPEED_DUPLEX | RSS | HASH_REPORT | HASH_TUNNEL;
}

/// What a virtio-net device adds to its backend's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetProfile {
    /// The device's `mac=`, shown when the backend serves no config.
    pub mac: Option<[u8; 6]>,
}

impl NetProfile {
    /// See [`super::kind::DeviceKind::shape`].
    pub fn shape(
        &self,
        offered: u64,
        backend_config: bool,
        wanted: u16,
        served: u16,
    ) -> Result<Shape, VirtioError> {
        // Without the MQ protocol feature the session reports one queue;
        // such a backend serves one pair. A NIC has at least one pair.
        let n = served.max(2).min(wanted.max(2));
        let mut features = offered & !f::NEED_LONG_CONFIG;
        let ctrl = features & f::CTRL_VQ != 0 && n % 2 == 1;
        if !ctrl {
            features &= !f::NEED_CTRL_VQ;
        }
        let pairs = if features & f::MQ != 0 { n / 2 } else { 1 };
        if !backend_config {
            features &= !(f::MTU | f::MAC);
            features |= f::STATUS;
            if self.mac.is_some() {
                features |= f::MAC;
            }
        }
        Ok(Shape {
            features,
            queues: 2 * pairs + u16::from(ctrl),
        })
    }

    /// The config space the frontend shows for `shape` when the backend
    /// serves none: mac, link up, the pair count, mtu 0.
    pub fn config(&self, shape: &Shape) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_LEN as usize];
        c[..6].copy_from_slice(&self.mac.unwrap_or_default());
        c[CONFIG_STATUS..CONFIG_STATUS + 2].copy_from_slice(&S_LINK_UP.to_le_bytes());
        let pairs = shape.queues / 2;
        c[8..10].copy_from_slice(&pairs.to_le_bytes());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: u64 = 1 << 32;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn net(mac: Option<[u8; 6]>) -> NetProfile {
        NetProfile { mac }
    }

    #[test]
    fn a_backend_without_config_gets_the_mac_and_link_up_from_the_frontend() {
        let p = net(Some(MAC));
        let s = p.shape(V1 | f::MRG_RXBUF | f::MTU, false, 2, 2).unwrap();
        assert_eq!(s.features, V1 | f::MRG_RXBUF | f::MAC | f::STATUS);
        assert_eq!(s.queues, 2);
        let c = p.config(&s);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), S_LINK_UP);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
        let s = net(None).shape(V1 | f::MAC, false, 2, 2).unwrap();
        assert_eq!(s.features & f::MAC, 0);
    }

    #[test]
    fn the_control_queue_comes_last_and_only_when_the_backend_serves_it() {
        let offered = V1 | f::CTRL_VQ | f::MQ | f::CTRL_RX | f::MAC | f::STATUS;
        // 2 pairs + ctrl.
        let s = net(None).shape(offered, true, 5, 5).unwrap();
        assert_eq!(s.queues, 5);
        assert_eq!(s.features, offered);
        // No odd queue for the control queue: everything that needs it goes.
        let s = net(None).shape(offered, true, 4, 4).unwrap();
        assert_eq!(s.queues, 2);
        assert_eq!(s.features, V1 | f::MAC | f::STATUS);
        // A control queue without MQ sits at index 2.
        let s = net(None).shape(V1 | f::CTRL_VQ, true, 5, 5).unwrap();
        assert_eq!(s.queues, 3);
    }

    #[test]
    fn features_beyond_the_used_config_fields_are_withdrawn_and_others_above_50_stay() {
        let uso = (1 << 54) | (1 << 55) | (1 << 56);
        let offered = V1 | uso | f::SPEED_DUPLEX | f::HASH_REPORT | f::RSS;
        let s = net(None).shape(offered, true, 2, 2).unwrap();
        assert_eq!(s.features, V1 | uso);
    }

    #[test]
    fn a_backend_without_mq_serves_one_pair_and_a_nic_has_at_least_one() {
        let s = net(None).shape(V1, true, 2, 1).unwrap();
        assert_eq!(s.queues, 2);
        let s = net(None).shape(V1, true, 1, 2).unwrap();
        assert_eq!(s.queues, 2);
    }
}
