//! SEND_RARP (a NIC's announcement on an external vhost-user backend)
//! against the scripted [`FakeBackend`]: a backend that negotiated
//! VHOST_USER_PROTOCOL_F_RARP gets the MAC in a u64; one that did not is
//! refused and sent nothing. Same fixture as `tests.rs`.

use std::os::unix::net::UnixStream;
use std::time::Instant;

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use super::fake_backend::{FakeBackend, Offer};
use super::registry::VirtioDevices;
use super::tests::{attach_socket, fixture, WAIT};
use super::vhost_user::VhostUserError;

/// VHOST_USER_SEND_RARP.
const SEND_RARP: u32 = 19;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn device_on(name: &str, offer: Offer) -> (VirtioDevices, FakeBackend) {
    let fx = fixture(name);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = FakeBackend::spawn_offering(theirs, offer);
    let (dev, _rx) = attach_socket(&fx, ours);
    let mut reg = VirtioDevices::new();
    reg.add(dev).unwrap();
    (reg, fake)
}

fn send_rarp(reg: &VirtioDevices) -> Result<(), VhostUserError> {
    reg.get("disk0")
        .unwrap()
        .with_transport(|t| t.backend().send_rarp(MAC))
        .expect("a connected backend")
        .wait()
        .expect("the session ran it")
}

#[test]
fn send_rarp_carries_the_mac_to_a_backend_with_the_rarp_feature() {
    let mut offer = Offer::default();
    offer.protocol |= VhostUserProtocolFeatures::RARP;
    let (reg, fake) = device_on("rarp-on", offer);
    send_rarp(&reg).unwrap();
    let start = Instant::now();
    let payload = loop {
        if let Some((_, p)) = fake.log().into_iter().find(|(r, _)| *r == SEND_RARP) {
            break p;
        }
        assert!(start.elapsed() < WAIT, "no SEND_RARP reached the backend");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(payload, [&MAC[..], &[0, 0]].concat());
}

#[test]
fn without_the_rarp_feature_send_rarp_is_refused_and_nothing_is_sent() {
    let (reg, fake) = device_on("rarp-off", Offer::default());
    let e = send_rarp(&reg).unwrap_err();
    assert!(matches!(e, VhostUserError::MissingFeature(_)), "{e:?}");
    assert!(fake.log().iter().all(|(r, _)| *r != SEND_RARP));
}
