//! Suspend, resume and restore against the scripted fake backend
//! (`fake_backend.rs`): what the backend is asked, in which order, with
//! which avail positions. Same fixture and guest driver as `tests.rs`.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;

use vm_memory::{Bytes, GuestAddress};

use super::super::fake_backend::{req, FakeBackend};
use super::super::mmio::status;
use super::super::tests::{attach_socket, fixture, Driver, Fixture, AVAIL, MEM_SIZE, USED, WAIT};
use super::super::{VirtioEvent, VirtioMmioDevice};
use super::*;
use crate::virtio::mmio::state::TransportStateError;

/// Requests the guest published and the backend completed before the save.
const DONE: u16 = 5;

/// A live device on a fake backend whose queue 0 took and completed
/// [`DONE`] requests.
fn live_device(fx: &Fixture) -> (VirtioMmioDevice, FakeBackend, Receiver<VirtioEvent>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = FakeBackend::spawn(theirs);
    let (dev, rx) = attach_socket(fx, ours);
    let _driver = Driver::init(fx, &dev);
    fake.wait_started(1);
    fx.mem.write_obj(DONE, GuestAddress(AVAIL + 2)).unwrap();
    fx.mem.write_obj(DONE, GuestAddress(USED + 2)).unwrap();
    fake.took(0, DONE);
    (dev, fake, rx)
}

fn count(fake: &FakeBackend, code: u32) -> usize {
    fake.codes().iter().filter(|c| **c == code).count()
}

/// The (queue, value) of every request `code` (a VhostUserVringState).
fn states(fake: &FakeBackend, code: u32) -> Vec<(u32, u32)> {
    fake.log()
        .iter()
        .filter(|(c, _)| *c == code)
        .map(|(_, p)| {
            let w = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
            (w(0), w(4))
        })
        .collect()
}

fn copy_ram(from: &Fixture, to: &Fixture) {
    let mut ram = vec![0u8; MEM_SIZE as usize];
    from.mem.read_slice(&mut ram, GuestAddress(0)).unwrap();
    to.mem.write_slice(&ram, GuestAddress(0)).unwrap();
}

#[test]
fn suspend_stops_each_live_ring_with_get_vring_base_and_keeps_the_backends_position() {
    let fx = fixture("suspend");
    let (dev, fake, _rx) = live_device(&fx);
    let v = dev.suspend().unwrap().expect("a live device has vrings");
    assert_eq!(
        v.queues[0],
        QueueVring {
            last_avail: DONE,
            used: DONE
        }
    );
    // SET_FEATURES, without VHOST_USER_F_PROTOCOL_FEATURES.
    assert_eq!(v.acked_features, fake.set_features()[0] & !(1 << 30));
    // Disabled, then asked for its position, as vhost_virtqueue_stop.
    let codes = fake.codes();
    let enable = codes.iter().rposition(|c| *c == req::SET_VRING_ENABLE);
    let get = codes.iter().position(|c| *c == req::GET_VRING_BASE);
    assert!(enable < get && get.is_some(), "{codes:?}");
    assert_eq!(states(&fake, req::SET_VRING_ENABLE).last(), Some(&(0, 0)));
    assert!(dev.is_suspended());
    // Idempotent: the kept state, the backend is not asked again.
    assert_eq!(dev.suspend().unwrap(), Some(v));
    assert_eq!(count(&fake, req::GET_VRING_BASE), 1);

    // Continue on this side: the ring starts again at the same index.
    dev.resume().unwrap();
    assert!(!dev.is_suspended());
    // Requests are not acknowledged (no REPLY_ACK): wait until the fake
    // has read the start.
    fake.wait_started(2);
    assert_eq!(fake.vring_bases().last(), Some(&(0, u32::from(DONE))));
    // A second resume does nothing.
    dev.resume().unwrap();
    assert_eq!(count(&fake, req::SET_VRING_KICK), 2);
}

#[test]
fn a_device_not_live_has_no_vrings_and_asks_nothing() {
    let fx = fixture("suspend-idle");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = FakeBackend::spawn(theirs);
    let (dev, _rx) = attach_socket(&fx, ours);
    assert_eq!(dev.suspend().unwrap(), None);
    dev.resume().unwrap();
    assert_eq!(count(&fake, req::GET_VRING_BASE), 0);
    assert_eq!(count(&fake, req::SET_VRING_KICK), 0);
}

#[test]
fn a_saved_live_device_restored_into_a_fresh_vm_starts_its_rings_at_the_saved_avail_index() {
    let a = fixture("restore-a");
    let (dev_a, _fake_a, _rx_a) = live_device(&a);
    let vrings = dev_a.suspend().unwrap();
    let regs = dev_a.transport_regs();

    let b = fixture("restore-b");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake_b = FakeBackend::spawn(theirs);
    let (dev_b, _rx_b) = attach_socket(&b, ours);
    // B's RAM is not A's yet: its used index says so.
    assert!(matches!(
        dev_b.check_state(&regs, vrings.as_ref()),
        Err(TransportStateError::UsedIndex {
            saved: DONE,
            memory: 0,
            ..
        })
    ));
    copy_ram(&a, &b);
    dev_b.check_state(&regs, vrings.as_ref()).unwrap();
    dev_b.restore_state(&regs, vrings.as_ref()).unwrap();
    fake_b.wait_started(1);
    assert_eq!(fake_b.vring_bases(), vec![(0, u32::from(DONE))]);
    assert_eq!(fake_b.set_features(), _fake_a.set_features());
    assert_eq!(dev_b.transport_regs(), regs);
    assert_ne!(dev_b.status() & status::DRIVER_OK, 0);
    assert_eq!(dev_b.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_state_loaded_over_the_same_live_device_restarts_its_rings_at_the_saved_index() {
    let fx = fixture("restore-same");
    let (dev, fake, _rx) = live_device(&fx);
    let vrings = dev.suspend().unwrap();
    let regs = dev.transport_regs();
    dev.resume().unwrap();
    // The backend moved on meanwhile (it reports another position now);
    // the load stops the rings (the reset) and starts them at the saved
    // index.
    fake.took(0, DONE + 3);
    dev.restore_state(&regs, vrings.as_ref()).unwrap();
    fake.wait_started(3);
    assert_eq!(
        fake.vring_bases().last(),
        Some(&(0, u32::from(DONE))),
        "{:?}",
        fake.codes()
    );
    assert_eq!(count(&fake, req::GET_VRING_BASE), 2);
    assert!(!dev.is_suspended());
}

#[test]
fn a_backend_lost_while_suspended_gets_no_rings_until_the_resume() {
    let fx = fixture("suspend-kill");
    let (dev, fake, rx) = live_device(&fx);
    dev.suspend().unwrap();
    fake.crash();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );
    // While suspended and disconnected the position cannot be asked.
    assert!(dev.is_suspended());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fresh = FakeBackend::spawn(theirs);
    dev.reconnect(ours).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Reconnected { id: "disk0".into() }
    );
    // The handshake only: no ring was handed to the new backend.
    assert!(dev.is_suspended());
    assert_eq!(count(&fresh, req::SET_VRING_BASE), 0, "{:?}", fresh.codes());
    assert_eq!(count(&fresh, req::SET_VRING_KICK), 0);
    // The suspension still answers with the old backend's position.
    assert_eq!(
        dev.suspend().unwrap().map(|v| v.queues[0].last_avail),
        Some(DONE)
    );
    dev.resume().unwrap();
    fresh.wait_started(1);
    assert_eq!(fresh.vring_bases(), vec![(0, u32::from(DONE))]);
}

#[test]
fn suspending_a_disconnected_live_device_is_refused_and_the_replay_restarts_it() {
    let fx = fixture("suspend-gone");
    let (dev, fake, rx) = live_device(&fx);
    fake.crash();
    rx.recv_timeout(WAIT).unwrap();
    let err = dev.suspend().unwrap_err();
    assert!(
        matches!(err, SuspendError::Disconnected(ref id) if id == "disk0"),
        "{err}"
    );
    assert!(!dev.is_suspended());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fresh = FakeBackend::spawn(theirs);
    dev.reconnect(ours).unwrap();
    fresh.wait_started(1);
    assert_eq!(fresh.vring_bases(), vec![(0, u32::from(DONE))]);
}

#[test]
fn suspend_all_is_all_or_nothing() {
    use super::super::{VhostUserBlkParams, VirtioDevices};
    let fx = fixture("suspend-all");
    let (disk0, fake0, _rx0) = live_device(&fx);
    // A second live disk (the fakes never touch the rings, so it may
    // share disk0's), whose backend then dies.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake1 = FakeBackend::spawn(theirs);
    let (tx, rx1) = std::sync::mpsc::channel();
    let disk1 = VirtioMmioDevice::new_vhost_user_blk(VhostUserBlkParams {
        id: "disk1".into(),
        slot: 1,
        socket: ours,
        mem: fx.mem.clone(),
        vm: &fx.vm,
        bus: &fx.bus,
        events: tx,
        num_queues: 1,
        queue_size: 128,
    })
    .unwrap();
    let _driver = Driver::init(&fx, &disk1);
    fake1.wait_started(1);
    fake1.crash();
    rx1.recv_timeout(WAIT).unwrap();
    let mut devices = VirtioDevices::new();
    devices.add(disk0).unwrap();
    devices.add(disk1).unwrap();
    let err = devices.suspend_all().unwrap_err();
    assert!(
        matches!(err, SuspendError::Disconnected(ref id) if id == "disk1"),
        "{err}"
    );
    // disk0 was stopped, then started again at the same position.
    assert!(!devices.get("disk0").unwrap().is_suspended());
    assert_eq!(count(&fake0, req::GET_VRING_BASE), 1);
    fake0.wait_started(2);
    assert_eq!(fake0.vring_bases().last(), Some(&(0, u32::from(DONE))));
}
