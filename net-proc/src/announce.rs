//! A NIC announcing its MAC after a migration (or on `announce-self`):
//! one round of QEMU's `qemu_announce_self` for a NIC net-proc serves.
//! The frame is QEMU's (`announce_self_create` in `net/announce.c`): a
//! 60-byte RARP "request reverse" from the MAC to the broadcast address,
//! the MAC as sender and target hardware address, no IPv4 addresses. It
//! goes out the NIC's netdev as a guest frame would (into the TAP, or
//! into the switch port), so the switches on the path learn where the
//! MAC lives now. The broker paces the rounds; a round is one frame.

use std::io;
use std::time::Instant;

use crate::port::{Netdev, Port};
use crate::rocker::forward::Scratch;
use crate::vhost::body::Body;

/// Length of the frame (Ethernet's minimum without the FCS, as QEMU).
pub const FRAME_LEN: usize = 60;
/// EtherType of RARP.
pub const ETH_P_RARP: u16 = 0x8035;
/// RARP opcode "request reverse".
pub const OP_REQUEST_REV: u16 = 3;

/// QEMU's announcement frame for `mac`.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_RARP.to_be_bytes());
    // Hardware: Ethernet; protocol: IPv4; their address lengths.
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&OP_REQUEST_REV.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    // Sender IPv4 address 0.0.0.0 (bytes 28..32 stay zero).
    f[32..38].copy_from_slice(&mac);
    // Target IPv4 address 0.0.0.0 and the padding stay zero.
    f
}

/// Sends one announcement of `mac` out `netdev`: into its TAP, or
/// through the switch its port is on, as the NIC's own frames go.
pub fn send_netdev(netdev: &Netdev, mac: [u8; 6]) -> io::Result<()> {
    match netdev {
        Netdev::Port(port) => send(port.as_ref(), mac),
        Netdev::Switch(port) => {
            let frame = rarp_frame(mac);
            let mut scratch = Scratch::default();
            let forwarded = port.ingress(
                Body::Bytes(&frame),
                Instant::now(),
                &mut scratch,
                &mut || {},
            );
            scratch.pending.flush();
            if forwarded {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("switch port '{}' is on no switch", port.id()),
                ))
            }
        }
    }
}

/// Sends one announcement of `mac` out `port` (a full port loses it, as
/// a full queue on a wire would: the caller reports the error).
pub fn send(port: &dyn Port, mac: [u8; 6]) -> io::Result<()> {
    let sent = crate::rocker::port::send_frame(port, &rarp_frame(mac))?;
    if sent != FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("the netdev took {sent} of the {FRAME_LEN} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::rocker::port::FdPort;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn the_frame_is_qemus_rarp_request_reverse_from_the_mac() {
        let f = rarp_frame(MAC);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 3]);
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &MAC);
        assert!(f[38..].iter().all(|&b| b == 0));
    }

    #[test]
    fn an_announcement_leaves_the_port_as_one_bare_frame() {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let port = FdPort::new(OwnedFd::from(ours));
        send(&port, MAC).unwrap();
        let mut buf = [0u8; 128];
        let n = theirs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &rarp_frame(MAC)[..]);
    }

    #[test]
    fn a_switch_port_nic_announces_through_its_switch() {
        use std::sync::Arc;
        use std::time::Duration;

        use crate::rocker::bridge::Bridge;
        use crate::rocker::forward::Running;
        use crate::rocker::nic_port::NicPort;
        use crate::rocker::port::Member;

        let nic = NicPort::new("p0");
        let netdev = Netdev::Switch(nic.clone());
        let err = send_netdev(&netdev, MAC).unwrap_err();
        assert!(err.to_string().contains("on no switch"), "{err}");

        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let tap: Arc<dyn Port> = Arc::new(FdPort::new(OwnedFd::from(ours)));
        let bridge = Bridge::new(2, 0xf00, Duration::from_secs(300));
        let _sw = Running::start("sw1", bridge, vec![Member::Nic(nic), Member::Fd(tap)]).unwrap();
        send_netdev(&netdev, MAC).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 128];
        let n = theirs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &rarp_frame(MAC)[..]);
    }
}
