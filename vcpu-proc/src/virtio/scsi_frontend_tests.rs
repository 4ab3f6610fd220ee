//! The virtio-scsi frontend against the scripted fake backend playing a
//! vhost-user-scsi backend (MQ, no CONFIG): what the guest sees on the
//! transport, that every queue reaches the backend, and that a
//! reconnection after the backend dies replays them all. (The full path
//! with block-proc's backend and the `cdrom` guest is in
//! broker/tests/cdrom_guest.rs.)

use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};

use vm_memory::{Bytes, GuestAddress};

use super::super::fake_backend::{req, FakeBackend};
use super::super::mmio::{reg, status, F_VERSION_1};
use super::super::tests::{fixture, Fixture, WAIT};
use super::super::{VhostUserParams, VirtioError, VirtioEvent, VirtioMmioDevice};
use super::*;

/// Where queue `q`'s rings go in guest memory.
fn rings(q: u64) -> (u64, u64, u64) {
    let base = 0x40000 + 0x4000 * q;
    (base, base + 0x1000, base + 0x2000)
}

fn attach(
    fx: &Fixture,
    socket: UnixStream,
    queues: u16,
) -> super::Result<(VirtioMmioDevice, Receiver<VirtioEvent>)> {
    let (tx, rx) = channel();
    let dev = VirtioMmioDevice::new_vhost_user_scsi(VhostUserParams {
        id: "scsi0".into(),
        slot: 1,
        socket,
        mem: fx.mem.clone(),
        vm: &fx.vm,
        bus: &fx.bus,
        events: tx,
        num_queues: queues,
        queue_size: 128,
    })?;
    Ok((dev, rx))
}

fn rd(fx: &Fixture, dev: &VirtioMmioDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    fx.bus.read(dev.base() + off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(fx: &Fixture, dev: &VirtioMmioDevice, off: u64, v: u32) {
    fx.bus.write(dev.base() + off, &v.to_le_bytes());
}

/// Plays Linux's virtio_scsi probe: features, the sense/cdb writes at
/// their defaults, every queue, DRIVER_OK.
fn drive(fx: &Fixture, dev: &VirtioMmioDevice, queues: u32) {
    assert_eq!(rd(fx, dev, reg::DEVICE_ID), VIRTIO_ID_SCSI);
    wr(fx, dev, reg::STATUS, 0);
    wr(fx, dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(fx, dev, reg::DEVICE_FEATURES_SEL, 0);
    let lo = rd(fx, dev, reg::DEVICE_FEATURES);
    assert_eq!(lo & 0b110, 0b110, "HOTPLUG and CHANGE offered");
    wr(fx, dev, reg::DRIVER_FEATURES_SEL, 0);
    wr(fx, dev, reg::DRIVER_FEATURES, 0b110);
    wr(fx, dev, reg::DRIVER_FEATURES_SEL, 1);
    wr(fx, dev, reg::DRIVER_FEATURES, (F_VERSION_1 >> 32) as u32);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(fx, dev, reg::STATUS, s);
    assert_ne!(rd(fx, dev, reg::STATUS) & status::FEATURES_OK, 0);
    wr(fx, dev, reg::CONFIG + 20, SENSE_SIZE);
    wr(fx, dev, reg::CONFIG + 24, CDB_SIZE);
    for q in 0..queues {
        wr(fx, dev, reg::QUEUE_SEL, q);
        assert_eq!(rd(fx, dev, reg::QUEUE_NUM_MAX), 128, "queue {q}");
        let (d, a, u) = rings(u64::from(q));
        wr(fx, dev, reg::QUEUE_NUM, 16);
        wr(fx, dev, reg::QUEUE_DESC_LOW, d as u32);
        wr(fx, dev, reg::QUEUE_AVAIL_LOW, a as u32);
        wr(fx, dev, reg::QUEUE_USED_LOW, u as u32);
        wr(fx, dev, reg::QUEUE_READY, 1);
    }
    wr(fx, dev, reg::QUEUE_SEL, queues);
    assert_eq!(
        rd(fx, dev, reg::QUEUE_NUM_MAX),
        0,
        "no queue beyond the last"
    );
    wr(fx, dev, reg::STATUS, s | status::DRIVER_OK);
    assert_eq!(rd(fx, dev, reg::STATUS), s | status::DRIVER_OK);
}

fn config(fx: &Fixture, dev: &VirtioMmioDevice) -> Vec<u8> {
    let mut c = vec![0u8; CONFIG_LEN];
    fx.bus.read(dev.base() + reg::CONFIG, &mut c);
    c
}

#[test]
fn scsi_frontend_shows_device_8_with_its_own_config_and_starts_every_queue_on_the_backend() {
    let fx = fixture("scsi-start");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn_scsi(theirs, 4);
    let (dev, _rx) = attach(&fx, ours, 4).unwrap();
    assert_eq!(config(&fx, &dev), config_space(4, 128));
    drive(&fx, &dev, 4);
    backend.wait_started(4);
    assert_eq!(
        backend.vring_bases(),
        vec![(0, 0), (1, 0), (2, 0), (3, 0)],
        "control, event and both request queues"
    );
    assert!(
        !backend.codes().contains(&req::GET_CONFIG),
        "a vhost-user-scsi backend is never asked for its config: {:?}",
        backend.codes()
    );
    // A kick on a request queue is the backend's kick fd (KVM's
    // ioeventfd): the frontend registered one per queue.
    assert_eq!(dev.with_transport(|t| t.backend().kicks().len()), 4);
}

#[test]
fn scsi_frontend_refuses_a_driver_changing_sense_size_and_keeps_qemus_value() {
    let fx = fixture("scsi-config-write");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _backend = FakeBackend::spawn_scsi(theirs, 3);
    let (dev, _rx) = attach(&fx, ours, 3).unwrap();
    wr(&fx, &dev, reg::CONFIG + 20, 64);
    wr(&fx, &dev, reg::CONFIG + 24, 16);
    let c = config(&fx, &dev);
    assert_eq!(
        u32::from_le_bytes(c[20..24].try_into().unwrap()),
        SENSE_SIZE
    );
    assert_eq!(u32::from_le_bytes(c[24..28].try_into().unwrap()), CDB_SIZE);
}

#[test]
fn scsi_frontend_caps_request_queues_at_what_the_backend_serves_and_needs_one() {
    let fx = fixture("scsi-queues");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _backend = FakeBackend::spawn_scsi(theirs, 3);
    // Asked for 2 request queues, the backend serves one.
    let (dev, _rx) = attach(&fx, ours, 4).unwrap();
    assert_eq!(
        u32::from_le_bytes(config(&fx, &dev)[0..4].try_into().unwrap()),
        1
    );
    // A backend with only the control and event queues is refused.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _small = FakeBackend::spawn_scsi(theirs, 2);
    let (tx, _rx) = channel();
    let r = VirtioMmioDevice::new_vhost_user_scsi(VhostUserParams {
        id: "scsi1".into(),
        slot: 2,
        socket: ours,
        mem: fx.mem.clone(),
        vm: &fx.vm,
        bus: &fx.bus,
        events: tx,
        num_queues: 3,
        queue_size: 128,
    });
    assert!(
        matches!(
            r,
            Err(VirtioError::TooFewQueues {
                wanted: 3,
                offered: 2
            })
        ),
        "{r:?}"
    );
    // And so is a request for fewer than three queues.
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let r = attach(&fx, ours, 2);
    assert!(
        matches!(r, Err(VirtioError::BadQueues { .. })),
        "{:?}",
        r.err()
    );
}

#[test]
fn scsi_frontend_replays_every_queue_on_a_new_backend_after_the_first_dies() {
    let fx = fixture("scsi-reconnect");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn_scsi(theirs, 3);
    let (dev, rx) = attach(&fx, ours, 3).unwrap();
    drive(&fx, &dev, 3);
    first.wait_started(3);
    // The guest has consumed two events' worth of requests on the request
    // queue: the new backend continues there.
    let (_, _, used) = rings(2);
    fx.mem.write_obj(2u16, GuestAddress(used + 2)).unwrap();
    let (_, avail, _) = rings(2);
    fx.mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
    first.crash();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "scsi0".into() }
    );
    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn_scsi(theirs, 3);
    dev.reconnect(ours).unwrap();
    second.wait_started(3);
    assert_eq!(second.vring_bases(), vec![(0, 0), (1, 0), (2, 2)]);
    assert!(!second.codes().contains(&req::GET_CONFIG));
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Reconnected { id: "scsi0".into() }
    );
    assert_eq!(rd(&fx, &dev, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(config(&fx, &dev), config_space(3, 128));
}

#[test]
fn a_saved_scsi_device_restarts_every_queue_at_its_saved_position_in_a_fresh_vm() {
    let a = fixture("scsi-save-a");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn_scsi(theirs, 3);
    let (dev_a, _rx_a) = attach(&a, ours, 3).unwrap();
    drive(&a, &dev_a, 3);
    first.wait_started(3);
    // The event queue: the driver posted 4 buffers, the backend holds
    // them (taken, not used). The request queue: 3 requests, completed.
    for (q, avail, used) in [(1u64, 4u16, 0u16), (2, 3, 3)] {
        let (_, a_ring, u_ring) = rings(q);
        a.mem.write_obj(avail, GuestAddress(a_ring + 2)).unwrap();
        a.mem.write_obj(used, GuestAddress(u_ring + 2)).unwrap();
        first.took(q as u32, avail);
    }
    let vrings = dev_a.suspend().unwrap();
    let positions: Vec<(u16, u16)> = vrings
        .as_ref()
        .unwrap()
        .queues
        .iter()
        .map(|q| (q.last_avail, q.used))
        .collect();
    assert_eq!(positions, vec![(0, 0), (4, 0), (3, 3)]);
    let regs = dev_a.transport_regs();

    let b = fixture("scsi-save-b");
    let mut ram = vec![0u8; super::super::tests::MEM_SIZE as usize];
    a.mem.read_slice(&mut ram, GuestAddress(0)).unwrap();
    b.mem.write_slice(&ram, GuestAddress(0)).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn_scsi(theirs, 3);
    let (dev_b, _rx_b) = attach(&b, ours, 3).unwrap();
    dev_b.restore_state(&regs, vrings.as_ref()).unwrap();
    second.wait_started(3);
    assert_eq!(second.vring_bases(), vec![(0, 0), (1, 4), (2, 3)]);
    assert_eq!(config(&b, &dev_b), config_space(3, 128));
}
