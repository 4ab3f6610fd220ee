//! The virtio-net device model a NIC export presents: feature bits, the
//! config space (`struct virtio_net_config`), the vnet header, and which
//! TAP offloads the negotiated features allow.

use crate::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};

/// Feature bits (VIRTIO 1.2 §5.1.3 and the vhost-user ones).
pub mod feat {
    /// Device handles packets with partial checksum.
    pub const CSUM: u64 = 1 << 0;
    /// Driver handles packets with partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `mtu` in the config space is valid.
    pub const MTU: u64 = 1 << 3;
    /// `mac` in the config space is valid.
    pub const MAC: u64 = 1 << 5;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// Driver can receive UFO.
    pub const GUEST_UFO: u64 = 1 << 10;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// Device can receive UFO.
    pub const HOST_UFO: u64 = 1 << 14;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `status` in the config space is valid.
    pub const STATUS: u64 = 1 << 16;
    /// Multiqueue (the frontend owns the control queue it requires).
    pub const MQ: u64 = 1 << 22;
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u64 = 1 << 32;

    /// The offloads, offered only over a port with a vnet header.
    pub const OFFLOADS: u64 = CSUM
        | GUEST_CSUM
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | GUEST_UFO
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | HOST_UFO;
}

/// `VIRTIO_NET_S_LINK_UP`.
pub const S_LINK_UP: u16 = 1;

/// Size of the config space net-proc serves (up to
/// `supported_hash_types`, the fields QEMU's frontend may read).
pub const CONFIG_LEN: usize = 24;

/// Largest frame net-proc moves (a 64 KiB GSO frame plus its header).
pub const MAX_FRAME: usize = 65_562;

/// Maximum virtqueue size net-proc accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// The virtio header (`virtio_net_hdr_mrg_rxbuf`), 12 bytes with
/// `VIRTIO_F_VERSION_1` or `MRG_RXBUF`.
pub const HDR_LEN: usize = 12;

/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// A NIC's device description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// MAC address.
    pub mac: [u8; 6],
    /// Link up.
    pub link_up: bool,
    /// Queue pairs.
    pub queue_pairs: u16,
    /// MTU, if advertised.
    pub mtu: Option<u16>,
    /// The port carries vnet headers (offloads can be offered).
    pub vnet_hdr: bool,
}

impl NetConfig {
    /// Feature bits offered.
    pub fn features(&self) -> u64 {
        let mut f = feat::MAC
            | feat::STATUS
            | feat::MRG_RXBUF
            | feat::EVENT_IDX
            | feat::PROTOCOL_FEATURES
            | feat::VERSION_1;
        if self.vnet_hdr {
            f |= feat::OFFLOADS;
        }
        if self.mtu.is_some() {
            f |= feat::MTU;
        }
        if self.queue_pairs > 1 {
            f |= feat::MQ;
        }
        f
    }

    /// The config space (`struct virtio_net_config`, little endian).
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.mac);
        let status = if self.link_up { S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&self.queue_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        // speed: unknown; duplex: unknown (as QEMU without speed=).
        c[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        c[16] = 0xff;
        c
    }
}

/// The TAP offloads (`TUN_F_*`) the driver's acked features accept on
/// receive.
pub fn tap_offloads(acked: u64) -> u32 {
    let mut f = 0;
    if acked & feat::GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if acked & feat::GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if acked & feat::GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if acked & feat::GUEST_ECN != 0 {
            f |= TUN_F_TSO_ECN;
        }
        if acked & feat::GUEST_UFO != 0 {
            f |= TUN_F_UFO;
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfig {
        NetConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            link_up: true,
            queue_pairs: 1,
            mtu: None,
            vnet_hdr: true,
        }
    }

    #[test]
    fn config_space_holds_mac_status_pairs_and_mtu() {
        let mut c = cfg();
        c.mtu = Some(9000);
        c.queue_pairs = 2;
        let s = c.config_space();
        assert_eq!(&s[0..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(u16::from_le_bytes([s[6], s[7]]), S_LINK_UP);
        assert_eq!(u16::from_le_bytes([s[8], s[9]]), 2);
        assert_eq!(u16::from_le_bytes([s[10], s[11]]), 9000);
        c.link_up = false;
        assert_eq!(c.config_space()[6], 0);
    }

    #[test]
    fn offloads_and_mq_and_mtu_offered_only_when_they_apply() {
        let mut c = cfg();
        assert_eq!(c.features() & feat::MQ, 0);
        assert_eq!(c.features() & feat::MTU, 0);
        assert_ne!(c.features() & feat::HOST_TSO4, 0);
        c.vnet_hdr = false;
        assert_eq!(c.features() & feat::OFFLOADS, 0);
        c.queue_pairs = 4;
        c.mtu = Some(1500);
        assert_ne!(c.features() & feat::MQ, 0);
        assert_ne!(c.features() & feat::MTU, 0);
    }

    #[test]
    fn tap_offloads_need_guest_csum() {
        assert_eq!(tap_offloads(feat::GUEST_TSO4), 0);
        assert_eq!(
            tap_offloads(feat::GUEST_CSUM | feat::GUEST_TSO4 | feat::GUEST_UFO),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_UFO
        );
    }
}
