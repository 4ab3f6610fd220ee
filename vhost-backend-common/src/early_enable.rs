//! `SET_VRING_ENABLE` before `VHOST_USER_F_PROTOCOL_FEATURES` is acked.
//!
//! QEMU's virtio-net sends SET_VRING_ENABLE for its queue pairs when the
//! device is reset or its pair count set, which happens before the guest
//! driver (and so SET_FEATURES) ever runs; QEMU only checks that the
//! backend *offers* PROTOCOL_FEATURES. The `vhost` crate (0.18) answers
//! such a message with `InactiveFeature` and the connection ends. So the
//! export takes these early messages itself (peeked before the crate's
//! handler) and applies them to the backend like later ones. QEMU sends
//! the same state again once the device starts.
//!
//! Written by hand: the crate's handler has no hook for this.

use std::io::Read;
use std::os::unix::net::UnixStream;

use crate::backend_channel::{reply_ack, ChannelError, NEED_REPLY};

/// `VHOST_USER_SET_VRING_ENABLE`.
pub const SET_VRING_ENABLE: u32 = 18;

/// One SET_VRING_ENABLE message.
#[derive(Debug, PartialEq, Eq)]
pub struct VringEnable {
    /// Queue index.
    pub index: u32,
    /// Enable (true) or disable.
    pub enable: bool,
    /// The frontend wants a REPLY_ACK.
    pub need_reply: bool,
}

/// Takes the SET_VRING_ENABLE message at the head of `stream`.
pub fn take(mut stream: &UnixStream) -> Result<VringEnable, ChannelError> {
    fn word(m: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
    }
    let mut m = [0u8; 12 + 8];
    stream.read_exact(&mut m[..12])?;
    if word(&m, 0) != SET_VRING_ENABLE {
        return Err(ChannelError::Malformed("not SET_VRING_ENABLE"));
    }
    if word(&m, 8) != 8 {
        return Err(ChannelError::Malformed("SET_VRING_ENABLE of a wrong size"));
    }
    let flags = word(&m, 4);
    stream.read_exact(&mut m[12..])?;
    let enable = match word(&m, 16) {
        0 => false,
        1 => true,
        _ => return Err(ChannelError::Malformed("SET_VRING_ENABLE num not 0 or 1")),
    };
    Ok(VringEnable {
        index: word(&m, 12),
        enable,
        need_reply: flags & NEED_REPLY != 0,
    })
}

/// Answers a REPLY_ACK for SET_VRING_ENABLE (`ok` or a failure).
pub fn ack(stream: &UnixStream, ok: bool) -> Result<(), ChannelError> {
    reply_ack(stream, SET_VRING_ENABLE, ok)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::backend_channel::VERSION;

    fn msg(code: u32, flags: u32, size: u32, index: u32, num: u32) -> Vec<u8> {
        [code, flags, size, index, num]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    #[test]
    fn early_vring_enable_is_parsed_and_malformed_ones_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&msg(18, VERSION | NEED_REPLY, 8, 1, 1))
            .unwrap();
        let e = take(&b).unwrap();
        assert_eq!(
            e,
            VringEnable {
                index: 1,
                enable: true,
                need_reply: true
            }
        );
        ack(&b, true).unwrap();
        let mut r = [0u8; 20];
        (&a).read_exact(&mut r).unwrap();
        assert_eq!(&r[..4], &18u32.to_le_bytes());
        assert_eq!(&r[12..], &0u64.to_le_bytes());
        for bad in [
            msg(18, VERSION, 4, 0, 1),
            msg(18, VERSION, 8, 0, 2),
            msg(17, VERSION, 8, 0, 1),
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            (&a).write_all(&bad).unwrap();
            assert!(take(&b).is_err(), "{bad:?}");
        }
    }
}
