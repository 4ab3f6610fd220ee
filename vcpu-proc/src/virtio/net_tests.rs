//! The virtio-net frontend against the scripted backend: a net backend
//! with neither a config space nor inflight tracking attaches, shows the
//! guest the `mac=` and link up, never sees the bits the frontend added,
//! and after a crash its rings resume at the used index with receive
//! buffers outstanding (a network queue may lose frames; a storage queue
//! in the same state needs a reset, see `fault_tests.rs`).

use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::{Bytes, GuestAddress};

use super::fake_backend::{FakeBackend, Offer};
use super::mmio::{reg, status, F_VERSION_1, INT_CONFIG};
use super::net::{f, S_LINK_UP};
use super::tests::{fixture, Fixture, QSIZE, WAIT};
use super::{VhostUserParams, VirtioEvent, VirtioMmioDevice, VIRTIO_ID_NET};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
/// Rings of queue `q`: descriptors, avail, used (one page each).
const fn ring(q: u64) -> (u64, u64, u64) {
    let base = 0x40000 + 0x4000 * q;
    (base, base + 0x1000, base + 0x2000)
}
const RX_BUF: u64 = 0x80000;

fn net_offer() -> Offer {
    Offer {
        features: F_VERSION_1 | f::MRG_RXBUF | f::MTU,
        protocol: VhostUserProtocolFeatures::empty(),
        config: None,
    }
}

/// A backend serving its config space: `MAC`, link up or down.
fn configured_offer(link_up: bool) -> Offer {
    let mut c = [0u8; 8];
    c[..6].copy_from_slice(&MAC);
    c[6] = u8::from(link_up);
    Offer {
        features: F_VERSION_1 | f::MAC | f::STATUS,
        protocol: VhostUserProtocolFeatures::CONFIG,
        config: Some(c),
    }
}

fn attach_net(fx: &Fixture, socket: UnixStream) -> (VirtioMmioDevice, Receiver<VirtioEvent>) {
    let (tx, rx) = channel();
    let dev = VirtioMmioDevice::new_vhost_user_net(
        VhostUserParams {
            id: "net0".into(),
            slot: 1,
            socket,
            mem: fx.mem.clone(),
            vm: &fx.vm,
            bus: &fx.bus,
            events: tx,
            num_queues: 2,
            queue_size: 256,
        },
        Some(MAC),
    )
    .unwrap();
    (dev, rx)
}

fn rd(fx: &Fixture, dev: &VirtioMmioDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    fx.bus.read(dev.base() + off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(fx: &Fixture, dev: &VirtioMmioDevice, off: u64, v: u32) {
    fx.bus.write(dev.base() + off, &v.to_le_bytes());
}

/// The guest driver's set-up: features, both queues, DRIVER_OK.
fn drive(fx: &Fixture, dev: &VirtioMmioDevice, features: u64) {
    wr(fx, dev, reg::STATUS, 0);
    wr(fx, dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(fx, dev, reg::DRIVER_FEATURES_SEL, 0);
    wr(fx, dev, reg::DRIVER_FEATURES, features as u32);
    wr(fx, dev, reg::DRIVER_FEATURES_SEL, 1);
    wr(fx, dev, reg::DRIVER_FEATURES, (features >> 32) as u32);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(fx, dev, reg::STATUS, s);
    assert_ne!(rd(fx, dev, reg::STATUS) & status::FEATURES_OK, 0);
    for q in 0..2 {
        let (d, a, u) = ring(q);
        wr(fx, dev, reg::QUEUE_SEL, q as u32);
        wr(fx, dev, reg::QUEUE_NUM, u32::from(QSIZE));
        wr(fx, dev, reg::QUEUE_DESC_LOW, d as u32);
        wr(fx, dev, reg::QUEUE_AVAIL_LOW, a as u32);
        wr(fx, dev, reg::QUEUE_USED_LOW, u as u32);
        wr(fx, dev, reg::QUEUE_READY, 1);
    }
    wr(fx, dev, reg::STATUS, s | status::DRIVER_OK);
}

fn device_features(fx: &Fixture, dev: &VirtioMmioDevice) -> u64 {
    wr(fx, dev, reg::DEVICE_FEATURES_SEL, 0);
    let lo = rd(fx, dev, reg::DEVICE_FEATURES);
    wr(fx, dev, reg::DEVICE_FEATURES_SEL, 1);
    u64::from(lo) | u64::from(rd(fx, dev, reg::DEVICE_FEATURES)) << 32
}

#[test]
fn a_net_backend_without_config_or_inflight_attaches_with_the_frontends_mac_and_link_up() {
    let fx = fixture("net-attach");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn_offering(theirs, net_offer());
    let (dev, _rx) = attach_net(&fx, ours);
    assert_eq!(rd(&fx, &dev, reg::DEVICE_ID), VIRTIO_ID_NET);
    // MTU is unknown without the backend's config space: withdrawn.
    assert_eq!(
        device_features(&fx, &dev),
        F_VERSION_1 | f::MRG_RXBUF | f::MAC | f::STATUS
    );
    let mut mac = [0u8; 6];
    fx.bus.read(dev.base() + reg::CONFIG, &mut mac);
    assert_eq!(mac, MAC);
    let mut st = [0u8; 2];
    fx.bus.read(dev.base() + reg::CONFIG + 6, &mut st);
    assert_eq!(u16::from_le_bytes(st), S_LINK_UP);
    // Two queues (one pair, no control queue).
    wr(&fx, &dev, reg::QUEUE_SEL, 1);
    assert_ne!(rd(&fx, &dev, reg::QUEUE_NUM_MAX), 0);
    wr(&fx, &dev, reg::QUEUE_SEL, 2);
    assert_eq!(rd(&fx, &dev, reg::QUEUE_NUM_MAX), 0);

    drive(&fx, &dev, F_VERSION_1 | f::MRG_RXBUF | f::MAC | f::STATUS);
    backend.wait_started(2);
    // The backend gets what the guest chose among its own offer only.
    let proto = vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    assert_eq!(
        backend.set_features(),
        vec![F_VERSION_1 | f::MRG_RXBUF | proto]
    );
    assert_eq!(
        rd(&fx, &dev, reg::STATUS) & status::DEVICE_NEEDS_RESET,
        0,
        "requests: {:?}",
        backend.codes()
    );
    assert_eq!(rd(&fx, &dev, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
}

#[test]
fn net_rings_with_receive_buffers_outstanding_resume_at_the_used_index_after_a_crash() {
    let fx = fixture("net-reconnect");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn_offering(theirs, net_offer());
    let (dev, rx) = attach_net(&fx, ours);
    drive(&fx, &dev, F_VERSION_1 | f::MRG_RXBUF | f::MAC);
    first.wait_started(2);
    // The guest posts 8 receive buffers; the backend fills 3, then dies.
    let (desc, avail, used) = ring(0);
    for i in 0..8u16 {
        let d = desc + 16 * u64::from(i);
        let m = &fx.mem;
        m.write_obj(RX_BUF + 0x800 * u64::from(i), GuestAddress(d))
            .unwrap();
        m.write_obj(0x800u32, GuestAddress(d + 8)).unwrap();
        m.write_obj(2u16, GuestAddress(d + 12)).unwrap();
        m.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    fx.mem.write_obj(8u16, GuestAddress(avail + 2)).unwrap();
    for i in 0..3u16 {
        let e = used + 4 + 8 * u64::from(i);
        fx.mem.write_obj(u32::from(i), GuestAddress(e)).unwrap();
        fx.mem.write_obj(64u32, GuestAddress(e + 4)).unwrap();
    }
    fx.mem.write_obj(3u16, GuestAddress(used + 2)).unwrap();
    first.crash();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "net0".into() }
    );

    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn_offering(theirs, net_offer());
    dev.reconnect(ours).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Reconnected { id: "net0".into() }
    );
    second.wait_started(2);
    // The five buffers still posted go to the new backend; no reset.
    assert_eq!(second.vring_bases(), vec![(0, 3), (1, 0)]);
    assert_eq!(rd(&fx, &dev, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_restarted_net_backend_with_other_features_is_refused() {
    let fx = fixture("net-features");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn_offering(theirs, net_offer());
    let (dev, rx) = attach_net(&fx, ours);
    first.crash();
    rx.recv_timeout(WAIT).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _second = FakeBackend::spawn_offering(
        theirs,
        Offer {
            features: F_VERSION_1,
            ..net_offer()
        },
    );
    assert!(matches!(
        dev.reconnect(ours),
        Err(super::VirtioError::FeaturesChanged { .. })
    ));
}

#[test]
fn a_link_down_reported_by_the_backend_reaches_the_guest_as_a_config_interrupt() {
    let fx = fixture("net-link");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn_offering(theirs, configured_offer(true));
    let (dev, rx) = attach_net(&fx, ours);
    let link = || {
        let mut st = [0u8; 2];
        fx.bus.read(dev.base() + reg::CONFIG + 6, &mut st);
        u16::from_le_bytes(st)
    };
    assert_eq!(link(), S_LINK_UP);
    drive(&fx, &dev, F_VERSION_1 | f::MAC | f::STATUS);
    first.wait_started(2);
    let generation = rd(&fx, &dev, reg::CONFIG_GENERATION);
    assert_eq!(rd(&fx, &dev, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
    // The backend comes back with the link down (its config space says
    // so): the guest gets a config interrupt and a new generation.
    first.crash();
    rx.recv_timeout(WAIT).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _second = FakeBackend::spawn_offering(theirs, configured_offer(false));
    dev.reconnect(ours).unwrap();
    assert_ne!(rd(&fx, &dev, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert_eq!(link(), 0);
    assert_ne!(rd(&fx, &dev, reg::CONFIG_GENERATION), generation);
}
