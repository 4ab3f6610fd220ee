//! The frontends' side of vhost-user dirty logging, against the scripted
//! [`FakeBackend`]: `VirtioDevices::start_dirty_log` hands the log to a
//! live device's backend (SET_LOG_BASE with the log's memfd, SET_VRING_ADDR
//! with the log flag and the used ring's guest address, SET_FEATURES with
//! LOG_ALL), `stop_dirty_log` takes it back, a backend without LOG_ALL is
//! refused before anything is sent, and a backend replacing a lost one
//! (or a driver starting the device) gets the log while logging is on.
//! Same fixture and guest driver as `tests.rs`.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use super::dirty_log::VhostLog;
use super::fake_backend::{req, FakeBackend, Offer};
use super::registry::VirtioDevices;
use super::tests::{attach_socket, fixture, Driver, Fixture, MEM_SIZE, USED, WAIT};
use super::vhost_user::LOG_ALL;
use super::{VirtioError, VirtioEvent};

fn logging_offer() -> Offer {
    let mut o = Offer::default();
    o.features |= LOG_ALL;
    o.protocol |= VhostUserProtocolFeatures::LOG_SHMFD;
    o
}

fn new_log() -> Arc<VhostLog> {
    let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let size = ipc_proto::migration::dirty_log_size(MEM_SIZE);
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    Arc::new(VhostLog::map(fd, size).unwrap())
}

/// A registry holding disk0 on a fake backend offering `offer`.
fn devices(
    fx: &Fixture,
    offer: Offer,
) -> (
    VirtioDevices,
    FakeBackend,
    std::sync::mpsc::Receiver<VirtioEvent>,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = FakeBackend::spawn_offering(theirs, offer);
    let (dev, rx) = attach_socket(fx, ours);
    let mut reg = VirtioDevices::new();
    reg.add(dev).unwrap();
    (reg, fake, rx)
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
}

/// Every SET_VRING_ADDR so far: (queue, flags, log address).
fn ring_addrs(fake: &FakeBackend) -> Vec<(u32, u32, u64)> {
    fake.log()
        .iter()
        .filter(|(r, _)| *r == req::SET_VRING_ADDR)
        .map(|(_, p)| (u32_at(p, 0), u32_at(p, 4), u64_at(p, 32)))
        .collect()
}

/// Every SET_LOG_BASE so far: (mmap size, mmap offset).
fn log_bases(fake: &FakeBackend) -> Vec<(u64, u64)> {
    fake.log()
        .iter()
        .filter(|(r, _)| *r == req::SET_LOG_BASE)
        .map(|(_, p)| (u64_at(p, 0), u64_at(p, 8)))
        .collect()
}

/// The page the fake marked proves it got the log's memfd.
fn fake_marked_page_0(log: &VhostLog) -> bool {
    let mut pages = Vec::new();
    log.take(|p| pages.push(p));
    pages == [0]
}

#[test]
fn start_dirty_log_hands_the_log_to_a_live_backend_and_stop_takes_it_back() {
    let fx = fixture("dirty-start");
    let (reg, fake, _rx) = devices(&fx, logging_offer());
    let dev = reg.get("disk0").unwrap();
    let _d = Driver::init(&fx, dev);
    fake.wait_started(1);
    assert_eq!(fake.set_features().last().unwrap() & LOG_ALL, 0);
    assert_eq!(ring_addrs(&fake), vec![(0, 0, 0)]);
    let log = new_log();

    reg.start_dirty_log(&log).unwrap();
    assert_eq!(log_bases(&fake), vec![(log.size(), 0)]);
    assert!(
        fake_marked_page_0(&log),
        "the backend did not get the log's fd"
    );
    assert_eq!(ring_addrs(&fake)[1..], [(0, 1, USED)], "{:?}", fake.codes());
    assert_ne!(fake.set_features().last().unwrap() & LOG_ALL, 0);
    let logging = fake.log().len();

    reg.stop_dirty_log().unwrap();
    assert_eq!(fake.set_features().last().unwrap() & LOG_ALL, 0);
    assert_eq!(ring_addrs(&fake)[2..], [(0, 0, 0)]);
    assert!(fake.log()[logging..]
        .iter()
        .all(|(r, _)| *r != req::SET_LOG_BASE));
    // Stopping again sends nothing.
    let n = fake.log().len();
    reg.stop_dirty_log().unwrap();
    assert_eq!(fake.log().len(), n);
}

#[test]
fn a_backend_without_log_all_is_refused_before_anything_is_sent() {
    let fx = fixture("dirty-refused");
    let (reg, fake, _rx) = devices(&fx, Offer::default());
    let _d = Driver::init(&fx, reg.get("disk0").unwrap());
    fake.wait_started(1);
    let n = fake.log().len();
    let log = new_log();
    assert!(matches!(
        reg.start_dirty_log(&log),
        Err(VirtioError::NoDirtyLog(id)) if id == "disk0"
    ));
    assert_eq!(fake.log().len(), n, "{:?}", fake.codes());
    assert!(reg
        .get("disk0")
        .unwrap()
        .with_transport(|t| t.backend().dirty_log().is_none()));
}

#[test]
fn a_device_the_driver_starts_while_logging_gets_the_log_with_its_start() {
    let fx = fixture("dirty-activate");
    let (reg, fake, _rx) = devices(&fx, logging_offer());
    let log = new_log();
    // Not live yet: nothing to send.
    reg.start_dirty_log(&log).unwrap();
    assert!(log_bases(&fake).is_empty());
    let _d = Driver::init(&fx, reg.get("disk0").unwrap());
    fake.wait_started(1);
    assert_ne!(fake.set_features().last().unwrap() & LOG_ALL, 0);
    assert_eq!(log_bases(&fake), vec![(log.size(), 0)]);
    assert_eq!(ring_addrs(&fake), vec![(0, 1, USED)]);
    assert!(fake_marked_page_0(&log));
}

#[test]
fn a_backend_replacing_a_lost_one_logs_while_logging_is_on_and_not_after() {
    let fx = fixture("dirty-reconnect");
    let (reg, first, rx) = devices(&fx, logging_offer());
    let _d = Driver::init(&fx, reg.get("disk0").unwrap());
    first.wait_started(1);
    let log = new_log();
    reg.start_dirty_log(&log).unwrap();
    assert!(fake_marked_page_0(&log));

    // The backend dies during the migration; its replacement gets the log
    // in the replay.
    first.crash();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );
    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn_offering(theirs, logging_offer());
    reg.reconnect("disk0", ours).unwrap();
    second.wait_started(1);
    assert_ne!(
        second.set_features().last().unwrap() & LOG_ALL,
        0,
        "{:?}",
        second.codes()
    );
    assert_eq!(log_bases(&second), vec![(log.size(), 0)]);
    assert_eq!(ring_addrs(&second), vec![(0, 1, USED)]);
    assert!(
        fake_marked_page_0(&log),
        "the new backend did not get the log"
    );

    // After the migration, a new backend starts without it.
    reg.stop_dirty_log().unwrap();
    second.crash();
    rx.recv_timeout(WAIT).unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let third = FakeBackend::spawn_offering(theirs, logging_offer());
    reg.reconnect("disk0", ours).unwrap();
    third.wait_started(1);
    assert!(third.set_features().iter().all(|f| f & LOG_ALL == 0));
    assert!(log_bases(&third).is_empty());
    assert_eq!(ring_addrs(&third), vec![(0, 0, 0)]);
}

#[test]
fn while_logging_a_replacement_backend_without_log_all_is_refused() {
    let fx = fixture("dirty-replacement");
    let (reg, first, rx) = devices(&fx, logging_offer());
    let _d = Driver::init(&fx, reg.get("disk0").unwrap());
    first.wait_started(1);
    let log = new_log();
    reg.start_dirty_log(&log).unwrap();
    first.crash();
    rx.recv_timeout(WAIT).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn(theirs);
    assert!(matches!(
        reg.reconnect("disk0", ours),
        Err(VirtioError::NoDirtyLog(id)) if id == "disk0"
    ));
    assert!(!reg.get("disk0").unwrap().is_connected());
    assert!(ring_addrs(&second).is_empty(), "{:?}", second.codes());
}

#[test]
fn a_device_added_while_logging_logs_from_its_first_start() {
    let fx = fixture("dirty-add");
    let mut reg = VirtioDevices::new();
    let log = new_log();
    reg.start_dirty_log(&log).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = FakeBackend::spawn_offering(theirs, logging_offer());
    let (dev, _rx) = attach_socket(&fx, ours);
    reg.add(dev).unwrap();
    let _d = Driver::init(&fx, reg.get("disk0").unwrap());
    fake.wait_started(1);
    assert_ne!(fake.set_features().last().unwrap() & LOG_ALL, 0);
    assert_eq!(ring_addrs(&fake), vec![(0, 1, USED)]);
    assert!(fake_marked_page_0(&log));
}

#[test]
fn a_backend_that_never_answers_set_log_base_fails_the_start_and_is_replaced_without_logging() {
    let fx = fixture("dirty-silent");
    let (reg, first, rx) = devices(&fx, logging_offer());
    let _d = Driver::init(&fx, reg.get("disk0").unwrap());
    first.wait_started(1);
    // What a backend answering SET_LOG_BASE otherwise than the `vhost`
    // crate expects looks like: no reply.
    first.stall();
    let log = new_log();
    let t = std::time::Instant::now();
    assert!(reg.start_dirty_log(&log).is_err());
    assert!(t.elapsed() < WAIT);
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );
    assert!(reg
        .get("disk0")
        .unwrap()
        .with_transport(|t| t.backend().dirty_log().is_none()));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn_offering(theirs, logging_offer());
    reg.reconnect("disk0", ours).unwrap();
    second.wait_started(1);
    assert!(second.set_features().iter().all(|f| f & LOG_ALL == 0));
    assert!(log_bases(&second).is_empty());
}
