//! The frontend against backends that misbehave: one that stops answering
//! (block-proc under SIGSTOP) and one that completed requests out of
//! order and kept no inflight record when it died (the scripted
//! [`FakeBackend`]). Same fixture and guest driver as `tests.rs`.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vm_memory::{Bytes, GuestAddress};

use super::fake_backend::FakeBackend;
use super::mmio::{reg, status};
use super::session::REQUEST_DEADLINE;
use super::tests::{
    attach, attach_socket, connect, fixture, pattern, start, Driver, Fixture, Kind, AVAIL, DATA,
    DESC, HDR, IMAGE_SECTORS, QSIZE, STATUS_BYTE, USED, WAIT,
};
use super::VirtioEvent;

/// Writes a one-sector write request as a three-descriptor chain at
/// `head`, with header, data and status of its own (`n` picks them).
fn write_chain(fx: &Fixture, head: u16, sector: u64, n: u64) {
    let m = &fx.mem;
    let hdr = HDR + 0x100 * n;
    let data = DATA + 0x1000 * n;
    let status = STATUS_BYTE + n;
    m.write_obj(1u32, GuestAddress(hdr)).unwrap();
    m.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    m.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    m.write_slice(&pattern(n as u8, 512), GuestAddress(data))
        .unwrap();
    m.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let descs = [(hdr, 16u32, 0u16), (data, 512, 0), (status, 1, 2)];
    for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
        let idx = u64::from(head) + i as u64;
        let base = DESC + 16 * idx;
        let next = if i + 1 < descs.len() { 1 } else { 0 };
        m.write_obj(addr, GuestAddress(base)).unwrap();
        m.write_obj(len, GuestAddress(base + 8)).unwrap();
        m.write_obj(flags | next, GuestAddress(base + 12)).unwrap();
        m.write_obj((idx + 1) as u16, GuestAddress(base + 14))
            .unwrap();
    }
}

/// Publishes `heads` on the avail ring from position 0.
fn publish(fx: &Fixture, heads: &[u16]) {
    for (i, h) in heads.iter().enumerate() {
        fx.mem
            .write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    fx.mem
        .write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
        .unwrap();
}

/// What a backend does when it completes request `head` (request `n`'s
/// status byte) as used entry number `pos`.
fn complete_as(fx: &Fixture, pos: u16, head: u16, n: u64) {
    fx.mem
        .write_obj(0u8, GuestAddress(STATUS_BYTE + n))
        .unwrap();
    let entry = USED + 4 + 8 * u64::from(pos % QSIZE);
    fx.mem
        .write_obj(u32::from(head), GuestAddress(entry))
        .unwrap();
    fx.mem.write_obj(1u32, GuestAddress(entry + 4)).unwrap();
    fx.mem.write_obj(pos + 1, GuestAddress(USED + 2)).unwrap();
}

#[test]
fn requests_completed_out_of_order_by_a_backend_without_inflight_are_not_resumed_from_the_used_index(
) {
    let fx = fixture("ooo");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn(theirs);
    let (dev, rx) = attach_socket(&fx, ours);
    let d = Driver::init(&fx, &dev);
    first.wait_started(1);
    // Two writes: A at head 0, then B at head 4.
    write_chain(&fx, 0, 0, 0);
    write_chain(&fx, 4, 8, 1);
    publish(&fx, &[0, 4]);
    // The backend completes B first, then dies with A still in flight.
    complete_as(&fx, 0, 4, 1);
    first.crash();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );

    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn(theirs);
    dev.reconnect(ours).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Reconnected { id: "disk0".into() }
    );
    assert_ne!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.rd(reg::INTERRUPT_STATUS) & super::mmio::INT_CONFIG, 0);

    // The driver resets the device and sets it up again: the new backend
    // gets the fresh rings from position 0, and got nothing before them —
    // resuming the old rings at the used index (1) would have handed B to
    // it a second time and A never.
    d.wr(reg::STATUS, 0);
    fx.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(DESC))
        .unwrap();
    let _d = Driver::init(&fx, &dev);
    second.wait_started(1);
    assert_eq!(
        second.vring_bases(),
        vec![(0, 0)],
        "requests: {:?}",
        second.codes()
    );
}

#[test]
fn a_backend_without_inflight_that_left_nothing_outstanding_resumes_at_the_used_index() {
    let fx = fixture("in-order");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn(theirs);
    let (dev, rx) = attach_socket(&fx, ours);
    let d = Driver::init(&fx, &dev);
    first.wait_started(1);
    write_chain(&fx, 0, 0, 0);
    publish(&fx, &[0]);
    complete_as(&fx, 0, 0, 0);
    first.crash();
    rx.recv_timeout(WAIT).unwrap();
    // The guest submits while nobody serves the queue.
    write_chain(&fx, 4, 8, 1);
    publish(&fx, &[0, 4]);

    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn(theirs);
    dev.reconnect(ours).unwrap();
    second.wait_started(1);
    assert_eq!(second.vring_bases(), vec![(0, 1)]);
    assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

/// Runs `f` on a thread of its own (as a vCPU would) and fails if it
/// takes longer than `limit`; the stopped backend `pid` is then killed
/// so that `f` ends and the failure is reported instead of hanging.
fn within<T: Send>(limit: Duration, pid: Pid, what: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let (tx, rx) = channel();
        s.spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(limit) {
            Ok(v) => v,
            Err(_) => {
                let _ = kill(pid, Signal::SIGKILL);
                panic!("{what} waited more than {limit:?} for a stopped backend");
            }
        }
    })
}

#[test]
fn a_stopped_backend_blocks_neither_config_reads_nor_a_device_reset_and_a_new_one_takes_over() {
    let fx = fixture("stopped");
    let mut backend = start(Kind::BlockProc, &fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    let data = pattern(3, 512);
    assert_eq!(d.write_sectors(2, &data), 0);

    let pid = Pid::from_raw(backend.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let base = dev.base();
    let capacity = within(Duration::from_secs(2), pid, "a config read", || {
        let mut last = 0;
        for _ in 0..20 {
            let mut b = [0u8; 4];
            fx.bus.read(base + reg::CONFIG, &mut b);
            last = u32::from_le_bytes(b);
        }
        last
    });
    assert_eq!(u64::from(capacity), IMAGE_SECTORS);
    within(
        REQUEST_DEADLINE * 2 + Duration::from_secs(2),
        pid,
        "a device reset",
        || {
            fx.bus.write(base + reg::STATUS, &0u32.to_le_bytes());
        },
    );
    assert_eq!(dev.status(), 0);
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );
    assert!(!dev.is_connected());

    // The stuck backend is replaced; the driver sets the device up again.
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    let _backend = start(Kind::BlockProc, &fx.image, &fx.sock);
    dev.reconnect(connect(&fx.sock)).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Reconnected { id: "disk0".into() }
    );
    fx.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(DESC))
        .unwrap();
    let mut d = Driver::init(&fx, &dev);
    let (s, back) = d.read_sectors(2, 512);
    assert_eq!(s, 0);
    assert_eq!(back, data);
    assert_eq!(d.write_sectors(4, &pattern(4, 512)), 0);
}

#[test]
fn a_device_reset_during_the_outage_lets_the_new_rings_resume_on_a_backend_without_inflight() {
    let fx = fixture("ooo-reset");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn(theirs);
    let (dev, rx) = attach_socket(&fx, ours);
    let d = Driver::init(&fx, &dev);
    first.wait_started(1);
    write_chain(&fx, 0, 0, 0);
    write_chain(&fx, 4, 8, 1);
    publish(&fx, &[0, 4]);
    complete_as(&fx, 0, 4, 1);
    first.crash();
    rx.recv_timeout(WAIT).unwrap();
    // The guest gives up on the old rings and starts over meanwhile.
    d.wr(reg::STATUS, 0);
    fx.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(DESC))
        .unwrap();
    let d = Driver::init(&fx, &dev);

    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn(theirs);
    dev.reconnect(ours).unwrap();
    second.wait_started(1);
    assert_eq!(second.vring_bases(), vec![(0, 0)]);
    assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_machine_reset_with_two_hung_backends_costs_one_deadline_not_two() {
    let fx = fixture("two-hung");
    let mut reg = super::VirtioDevices::new();
    let mut fakes = Vec::new();
    let mut events = Vec::new();
    for slot in 0..2u32 {
        let (ours, theirs) = UnixStream::pair().unwrap();
        fakes.push(FakeBackend::spawn(theirs));
        let (tx, rx) = channel();
        events.push(rx);
        let dev = super::VirtioMmioDevice::new_vhost_user_blk(super::VhostUserBlkParams {
            id: format!("disk{slot}"),
            slot,
            socket: ours,
            mem: fx.mem.clone(),
            vm: &fx.vm,
            bus: &fx.bus,
            events: tx,
            num_queues: 1,
            queue_size: 128,
        })
        .unwrap();
        reg.add(dev).unwrap();
    }
    for (i, id) in ["disk0", "disk1"].iter().enumerate() {
        let _ = Driver::init(&fx, reg.get(id).unwrap());
        fakes[i].wait_started(1);
        fakes[i].stall();
    }
    let t = std::time::Instant::now();
    let done = std::thread::scope(|s| {
        let (tx, rx) = channel();
        let reg = &reg;
        s.spawn(move || {
            reg.reset_all();
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(REQUEST_DEADLINE * 3);
        if done.is_err() {
            // No deadline: unblock the resets before failing.
            fakes.iter().for_each(FakeBackend::hang_up);
        }
        done
    });
    let took = t.elapsed();
    assert!(
        done.is_ok(),
        "the reset waited for hung backends for {took:?}"
    );
    // Each stop waits for GET_VRING_BASE until the deadline hangs it up.
    assert!(took >= REQUEST_DEADLINE, "{took:?}");
    assert!(
        took < REQUEST_DEADLINE * 2,
        "devices reset one after the other: {took:?}"
    );
    for (rx, id) in events.iter().zip(["disk0", "disk1"]) {
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            VirtioEvent::Disconnected { id: id.into() }
        );
    }
}

#[test]
fn one_request_outstanding_after_in_order_completions_resumes_at_the_used_index() {
    let fx = fixture("one-outstanding");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn(theirs);
    let (dev, rx) = attach_socket(&fx, ours);
    let d = Driver::init(&fx, &dev);
    first.wait_started(1);
    // A completes, then the backend dies with B (its only request) in
    // flight: B is exactly the avail position at the used index.
    write_chain(&fx, 0, 0, 0);
    write_chain(&fx, 4, 8, 1);
    publish(&fx, &[0, 4]);
    complete_as(&fx, 0, 0, 0);
    first.crash();
    rx.recv_timeout(WAIT).unwrap();

    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn(theirs);
    dev.reconnect(ours).unwrap();
    second.wait_started(1);
    assert_eq!(second.vring_bases(), vec![(0, 1)]);
    assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn the_config_space_is_fetched_again_when_the_driver_starts_the_device() {
    let fx = fixture("config-refresh");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn(theirs);
    let (dev, _rx) = attach_socket(&fx, ours);
    let base = dev.base();
    let capacity = || {
        let mut lo = [0u8; 4];
        fx.bus.read(base + reg::CONFIG, &mut lo);
        u32::from_le_bytes(lo)
    };
    assert_eq!(u64::from(capacity()), super::fake_backend::CAPACITY);
    // The disk grows; reads are answered from the cache meanwhile.
    backend.set_capacity(4096);
    assert_eq!(u64::from(capacity()), super::fake_backend::CAPACITY);
    let d = Driver::init(&fx, &dev);
    backend.wait_started(1);
    let deadline = std::time::Instant::now() + WAIT;
    while capacity() != 4096 {
        assert!(std::time::Instant::now() < deadline, "config not refreshed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(d.rd(reg::INTERRUPT_STATUS) & super::mmio::INT_CONFIG, 0);
}

/// Reads the capacity's low word through the transport.
fn capacity_lo(fx: &Fixture, base: u64) -> u32 {
    let mut lo = [0u8; 4];
    fx.bus.read(base + reg::CONFIG, &mut lo);
    u32::from_le_bytes(lo)
}

#[test]
fn a_config_change_message_refetches_the_config_and_raises_the_config_interrupt() {
    let fx = fixture("config-change");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn_with_backend_req(theirs);
    let (dev, _rx) = attach_socket(&fx, ours);
    let d = Driver::init(&fx, &dev);
    backend.wait_started(1);
    assert_eq!(
        u64::from(capacity_lo(&fx, dev.base())),
        super::fake_backend::CAPACITY
    );
    let generation = d.rd(reg::CONFIG_GENERATION);
    d.wr(reg::INTERRUPT_ACK, d.rd(reg::INTERRUPT_STATUS));

    // The backend asks for an acknowledgement: the frontend answers at
    // once (0: handled), the GET_CONFIG follows on the session thread.
    backend.set_capacity(4096);
    assert_eq!(backend.announce_config_change(true), Some(0));
    let deadline = std::time::Instant::now() + WAIT;
    while capacity_lo(&fx, dev.base()) != 4096 {
        assert!(std::time::Instant::now() < deadline, "config not refetched");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(d.rd(reg::INTERRUPT_STATUS) & super::mmio::INT_CONFIG, 0);
    assert_ne!(d.rd(reg::CONFIG_GENERATION), generation);

    // Without a reply asked, and again: each change reaches the driver.
    d.wr(reg::INTERRUPT_ACK, super::mmio::INT_CONFIG);
    backend.set_capacity(8192);
    assert_eq!(backend.announce_config_change(false), None);
    while capacity_lo(&fx, dev.base()) != 8192 {
        assert!(std::time::Instant::now() < deadline, "config not refetched");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(d.rd(reg::INTERRUPT_STATUS) & super::mmio::INT_CONFIG, 0);
}

#[test]
fn a_backend_without_backend_req_gets_no_channel_and_keeps_working() {
    let fx = fixture("no-backend-req");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn(theirs);
    let (dev, _rx) = attach_socket(&fx, ours);
    let _d = Driver::init(&fx, &dev);
    backend.wait_started(1);
    assert!(
        !backend
            .codes()
            .contains(&super::fake_backend::req::SET_BACKEND_REQ_FD),
        "{:?}",
        backend.codes()
    );
}

#[test]
fn the_backend_request_channel_is_set_up_again_with_a_reconnected_backend() {
    let fx = fixture("config-change-reconnect");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let first = FakeBackend::spawn_with_backend_req(theirs);
    let (dev, rx) = attach_socket(&fx, ours);
    let d = Driver::init(&fx, &dev);
    first.wait_started(1);
    first.crash();
    rx.recv_timeout(WAIT).unwrap();

    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = FakeBackend::spawn_with_backend_req(theirs);
    dev.reconnect(ours).unwrap();
    second.wait_started(1);
    d.wr(reg::INTERRUPT_ACK, d.rd(reg::INTERRUPT_STATUS));
    second.set_capacity(4096);
    assert_eq!(second.announce_config_change(true), Some(0));
    let deadline = std::time::Instant::now() + WAIT;
    while capacity_lo(&fx, dev.base()) != 4096 {
        assert!(std::time::Instant::now() < deadline, "config not refetched");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(d.rd(reg::INTERRUPT_STATUS) & super::mmio::INT_CONFIG, 0);
}
