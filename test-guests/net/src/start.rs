//! What every `net` guest does first: set up its NIC (a guest without
//! one ends with a FAIL verdict) and name it on the serial port
//! ([`Net`]'s `Display`: `virtio-net at BASE, mac MAC, features F`).

use core::fmt;

use crate::virtio_net::Net;

/// Sets up the `nth` virtio-net device with receive buffers of `rx_len`
/// bytes ([`Net::setup_nth`]); if it cannot, the guest ends with a FAIL
/// verdict saying why.
pub fn nic(nth: usize, rx_len: usize) -> Net {
    match Net::setup_nth(nth, rx_len) {
        Ok(n) => n,
        Err(e) => guest_rt::fail!("virtio-net {} set-up: {:?}", nth, e),
    }
}

/// A MAC address as `52:54:00:12:34:56` (the host tests look for it so).
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "virtio-net at {:#x}, mac {}, features {:#x}",
            self.base(),
            Mac(self.mac),
            self.features
        )
    }
}
