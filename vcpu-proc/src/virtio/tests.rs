//! End-to-end tests of the vhost-user virtio-mmio device without vCPUs:
//! a real KVM VM (for the ioeventfds and the irqfd), guest memory in a
//! memfd, and a real vhost-user-blk backend (`qemu-storage-daemon`, the
//! reference, and block-proc, which also tracks inflight I/O). The
//! test plays the guest driver: it programs the transport registers,
//! builds the split ring in guest memory and kicks through the queue's
//! ioeventfd (written directly, as KVM would on a QueueNotify write).
//!
//! Needs /dev/kvm, qemu-storage-daemon and a built block-proc binary
//! (`cargo build -p block-proc` with the same CARGO_TARGET_DIR, or
//! `BULKHEAD_BLOCK_PROC`); fails with a clear message when one is missing.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};

use super::mmio::{reg, status, F_VERSION_1};
use super::*;
use crate::block_proc_bin::block_proc_bin;
use crate::bus::Bus;
use crate::memory::{map_guest_memory, register_with_kvm};

pub(super) const MEM_SIZE: u64 = 16 << 20;
pub(super) const QSIZE: u16 = 16;
pub(super) const DESC: u64 = 0x10000;
pub(super) const AVAIL: u64 = 0x11000;
pub(super) const USED: u64 = 0x12000;
pub(super) const HDR: u64 = 0x20000;
pub(super) const DATA: u64 = 0x10_0000;
pub(super) const STATUS_BYTE: u64 = 0x23000;
pub(super) const IMAGE_SECTORS: u64 = 2048;
pub(super) const WAIT: Duration = Duration::from_secs(30);

pub(super) struct Backend {
    pub(super) child: Child,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which vhost-user-blk backend serves the disk.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// qemu-storage-daemon: the reference backend (no inflight tracking).
    Qsd,
    /// block-proc `--standalone` (inflight tracking).
    BlockProc,
}

fn start_backend(image: &Path, sock: &Path) -> Backend {
    start(Kind::Qsd, image, sock)
}

pub(super) fn start(kind: Kind, image: &Path, sock: &Path) -> Backend {
    let _ = std::fs::remove_file(sock);
    let mut cmd = match kind {
        Kind::Qsd => {
            let mut c = Command::new("qemu-storage-daemon");
            c.arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=file0,filename={}",
                    image.display()
                ))
                .arg("--blockdev")
                .arg("driver=raw,node-name=disk0,file=file0")
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on",
                    sock.display()
                ));
            c
        }
        Kind::BlockProc => {
            let mut c = Command::new(block_proc_bin());
            c.arg("--standalone")
                .arg("--socket")
                .arg(sock)
                .arg("--blockdev")
                .arg(format!(
                    r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}"}}}}"#,
                    image.display()
                ));
            c
        }
    };
    let child = cmd.stdout(Stdio::null()).spawn().unwrap_or_else(|e| {
        panic!("cannot start {kind:?} (qemu-storage-daemon comes with Debian qemu-utils): {e}")
    });
    Backend { child }
}

pub(super) fn connect(sock: &Path) -> UnixStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    }
}

pub(super) struct Fixture {
    pub(super) dir: PathBuf,
    pub(super) image: PathBuf,
    pub(super) sock: PathBuf,
    _kvm: Kvm,
    pub(super) vm: VmFd,
    pub(super) mem: GuestMemoryMmap,
    pub(super) bus: Bus,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("bulkhead-virtio-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    File::create(&image)
        .unwrap()
        .set_len(IMAGE_SECTORS * 512)
        .unwrap();
    let sock = dir.join("vu.sock");
    let kvm = Kvm::new().expect("this test needs /dev/kvm");
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let fd = nix::sys::memfd::memfd_create(c"guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let f = File::from(fd);
    f.set_len(MEM_SIZE).unwrap();
    let mem = map_guest_memory(f, MEM_SIZE).unwrap();
    register_with_kvm(&vm, &mem).unwrap();
    Fixture {
        dir,
        image,
        sock,
        _kvm: kvm,
        vm,
        mem,
        bus: Bus::new(),
    }
}

pub(super) fn attach(fx: &Fixture) -> (VirtioMmioDevice, Receiver<VirtioEvent>) {
    attach_socket(fx, connect(&fx.sock))
}

/// Attaches device `disk0` on an already connected `socket`.
pub(super) fn attach_socket(
    fx: &Fixture,
    socket: UnixStream,
) -> (VirtioMmioDevice, Receiver<VirtioEvent>) {
    let (tx, rx) = channel();
    let dev = VirtioMmioDevice::new_vhost_user_blk(VhostUserBlkParams {
        id: "disk0".into(),
        slot: 0,
        socket,
        mem: fx.mem.clone(),
        vm: &fx.vm,
        bus: &fx.bus,
        events: tx,
        num_queues: 1,
        queue_size: 128,
    })
    .unwrap();
    (dev, rx)
}

/// The test's guest driver, talking to the device through the bus.
pub(super) struct Driver<'a> {
    fx: &'a Fixture,
    dev: &'a VirtioMmioDevice,
    next_avail: u16,
    last_used: u16,
}

impl<'a> Driver<'a> {
    pub(super) fn rd(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.fx.bus.read(self.dev.base() + off, &mut b);
        u32::from_le_bytes(b)
    }

    pub(super) fn wr(&self, off: u64, v: u32) {
        self.fx.bus.write(self.dev.base() + off, &v.to_le_bytes());
    }

    pub(super) fn init(fx: &'a Fixture, dev: &'a VirtioMmioDevice) -> Self {
        let d = Driver {
            fx,
            dev,
            next_avail: 0,
            last_used: 0,
        };
        assert_eq!(d.rd(reg::MAGIC), mmio::MAGIC_VALUE);
        assert_eq!(d.rd(reg::VERSION), 2);
        assert_eq!(d.rd(reg::DEVICE_ID), VIRTIO_ID_BLOCK);
        d.wr(reg::STATUS, 0);
        d.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.wr(reg::DEVICE_FEATURES_SEL, 1);
        let hi = d.rd(reg::DEVICE_FEATURES);
        assert_ne!(u64::from(hi) << 32 & F_VERSION_1, 0);
        d.wr(reg::DRIVER_FEATURES_SEL, 0);
        d.wr(reg::DRIVER_FEATURES, 1 << 9); // FLUSH
        d.wr(reg::DRIVER_FEATURES_SEL, 1);
        d.wr(reg::DRIVER_FEATURES, 1); // VERSION_1
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        d.wr(reg::STATUS, s);
        assert_ne!(d.rd(reg::STATUS) & status::FEATURES_OK, 0);
        d.wr(reg::QUEUE_SEL, 0);
        assert!(d.rd(reg::QUEUE_NUM_MAX) >= u32::from(QSIZE));
        d.wr(reg::QUEUE_NUM, u32::from(QSIZE));
        d.wr(reg::QUEUE_DESC_LOW, DESC as u32);
        d.wr(reg::QUEUE_AVAIL_LOW, AVAIL as u32);
        d.wr(reg::QUEUE_USED_LOW, USED as u32);
        d.wr(reg::QUEUE_READY, 1);
        d.wr(reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(d.rd(reg::STATUS), s | status::DRIVER_OK);
        d
    }

    pub(super) fn capacity(&self) -> u64 {
        let lo = self.rd(reg::CONFIG);
        let hi = self.rd(reg::CONFIG + 4);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Posts a request; does not wait.
    pub(super) fn post(&mut self, kind: u32, sector: u64, data_len: u32) {
        let m = &self.fx.mem;
        m.write_obj(kind, GuestAddress(HDR)).unwrap();
        m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS_BYTE)).unwrap();
        let mut descs: Vec<(u64, u32, u16)> = vec![(HDR, 16, 0)];
        if data_len > 0 {
            let w = if kind == 0 { 2 } else { 0 };
            descs.push((DATA, data_len, w));
        }
        descs.push((STATUS_BYTE, 1, 2));
        let n = descs.len();
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let base = DESC + 16 * i as u64;
            let next = if i + 1 < n { 1 } else { 0 };
            m.write_obj(addr, GuestAddress(base)).unwrap();
            m.write_obj(len, GuestAddress(base + 8)).unwrap();
            m.write_obj(flags | next, GuestAddress(base + 12)).unwrap();
            m.write_obj((i + 1) as u16, GuestAddress(base + 14))
                .unwrap();
        }
        let slot = u64::from(self.next_avail % QSIZE);
        m.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        m.write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // What KVM does on the guest's QueueNotify write.
        self.dev
            .with_transport(|t| t.backend().kicks()[0].write(1))
            .unwrap();
    }

    /// Waits for the posted request; returns its status byte.
    pub(super) fn complete(&mut self) -> u8 {
        let deadline = Instant::now() + WAIT;
        loop {
            let used: u16 = self.fx.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            if used != self.last_used {
                break;
            }
            assert!(Instant::now() < deadline, "request not completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.fx.mem.read_obj(GuestAddress(STATUS_BYTE)).unwrap()
    }

    pub(super) fn write_sectors(&mut self, sector: u64, data: &[u8]) -> u8 {
        self.fx.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.post(1, sector, data.len() as u32);
        self.complete()
    }

    pub(super) fn read_sectors(&mut self, sector: u64, len: usize) -> (u8, Vec<u8>) {
        self.fx
            .mem
            .write_slice(&vec![0u8; len], GuestAddress(DATA))
            .unwrap();
        self.post(0, sector, len as u32);
        let s = self.complete();
        let mut out = vec![0u8; len];
        self.fx
            .mem
            .read_slice(&mut out, GuestAddress(DATA))
            .unwrap();
        (s, out)
    }

    fn flush(&mut self) -> u8 {
        self.post(4, 0, 0);
        self.complete()
    }
}

fn inflight_inode(dev: &VirtioMmioDevice) -> Option<u64> {
    dev.with_transport(|t| {
        t.backend()
            .inflight()
            .map(|b| b.file().metadata().unwrap().ino())
    })
}

pub(super) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

#[test]
fn vhost_user_blk_write_flush_read_reaches_the_image() {
    let fx = fixture("rw");
    let _b = start_backend(&fx.image, &fx.sock);
    let (dev, _rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    assert_eq!(d.capacity(), IMAGE_SECTORS);
    let data = pattern(3, 4096);
    assert_eq!(d.write_sectors(8, &data), 0);
    assert_eq!(d.flush(), 0);
    let (s, back) = d.read_sectors(8, 4096);
    assert_eq!(s, 0);
    assert_eq!(back, data);
    let mut on_disk = vec![0u8; 4096];
    File::open(&fx.image)
        .unwrap()
        .read_exact_at(&mut on_disk, 8 * 512)
        .unwrap();
    assert_eq!(on_disk, data);
    assert!(dev.is_connected());
}

fn kick_during_outage(kind: Kind, name: &str) {
    let fx = fixture(name);
    let mut backend = start(kind, &fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    assert_eq!(d.write_sectors(0, &pattern(1, 512)), 0);
    let inflight_before = inflight_inode(&dev);

    // Kill the backend: the watcher reports it, the device stays usable.
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );
    assert!(!dev.is_connected());
    assert_eq!(d.capacity(), IMAGE_SECTORS, "config answered from cache");

    // The guest submits while nobody serves the queue.
    let data = pattern(9, 1024);
    d.fx.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    d.post(1, 16, 1024);

    let _backend2 = start(kind, &fx.image, &fx.sock);
    dev.reconnect(connect(&fx.sock)).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        VirtioEvent::Reconnected { id: "disk0".into() }
    );
    assert!(dev.is_connected());
    assert_eq!(inflight_inode(&dev), inflight_before, "same inflight memfd");
    assert_eq!(d.complete(), 0);
    let (s, back) = d.read_sectors(16, 1024);
    assert_eq!(s, 0);
    assert_eq!(back, data);
    let (s, first) = d.read_sectors(0, 512);
    assert_eq!(s, 0);
    assert_eq!(first, pattern(1, 512));
}

#[test]
fn request_kicked_while_qsd_is_down_completes_after_reconnect() {
    kick_during_outage(Kind::Qsd, "reconnect-qsd");
}

#[test]
fn request_kicked_while_block_proc_is_down_completes_after_reconnect() {
    kick_during_outage(Kind::BlockProc, "reconnect-bp");
}

#[test]
fn block_proc_inflight_memfd_is_kept_and_handed_to_the_new_backend() {
    let fx = fixture("inflight-kept");
    let mut backend = start(Kind::BlockProc, &fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    assert_eq!(d.write_sectors(0, &pattern(4, 512)), 0);
    let before = inflight_inode(&dev);
    assert!(before.is_some(), "block-proc offers INFLIGHT_SHMFD");
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let _backend2 = start(Kind::BlockProc, &fx.image, &fx.sock);
    dev.reconnect(connect(&fx.sock)).unwrap();
    assert_eq!(inflight_inode(&dev), before);
    assert_eq!(d.write_sectors(1, &pattern(6, 512)), 0);
}

#[test]
fn guest_reset_stops_the_queues_and_the_driver_can_start_again() {
    let fx = fixture("reset");
    let _b = start_backend(&fx.image, &fx.sock);
    let (dev, _rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    assert_eq!(d.write_sectors(4, &pattern(5, 512)), 0);
    d.wr(reg::STATUS, 0);
    assert_eq!(dev.status(), 0);
    // Fresh rings after the reset.
    fx.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(DESC))
        .unwrap();
    let mut d = Driver::init(&fx, &dev);
    let (s, back) = d.read_sectors(4, 512);
    assert_eq!(s, 0);
    assert_eq!(back, pattern(5, 512));
}

#[test]
fn reconnect_to_a_backend_with_other_features_is_refused() {
    let fx = fixture("features");
    let mut backend = start_backend(&fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    rx.recv_timeout(WAIT).unwrap();
    // Same image, exported read-only: VIRTIO_BLK_F_RO appears.
    let _ = std::fs::remove_file(&fx.sock);
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},read-only=on",
            fx.image.display()
        ))
        .arg("--blockdev")
        .arg("driver=raw,node-name=disk0,file=file0,read-only=on")
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=off",
            fx.sock.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _ro = Backend { child };
    let r = dev.reconnect(connect(&fx.sock));
    assert!(matches!(r, Err(VirtioError::FeaturesChanged { .. })));
    assert!(!dev.is_connected());
}

#[test]
fn driver_ok_while_disconnected_starts_the_queues_on_reconnect() {
    let fx = fixture("late");
    let mut backend = start_backend(&fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    rx.recv_timeout(WAIT).unwrap();

    // The guest brings the device up while nobody serves it.
    let mut d = Driver::init(&fx, &dev);
    let data = pattern(7, 512);
    d.fx.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    d.post(1, 2, 512);

    let _backend2 = start_backend(&fx.image, &fx.sock);
    dev.reconnect(connect(&fx.sock)).unwrap();
    assert_eq!(d.complete(), 0);
    let (s, back) = d.read_sectors(2, 512);
    assert_eq!(s, 0);
    assert_eq!(back, data);
}

#[test]
fn guest_reset_drops_the_inflight_buffer() {
    let fx = fixture("reset-inflight");
    let _b = start(Kind::BlockProc, &fx.image, &fx.sock);
    let (dev, _rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    assert_eq!(d.write_sectors(0, &pattern(2, 512)), 0);
    assert!(inflight_inode(&dev).is_some());
    d.wr(reg::STATUS, 0);
    assert_eq!(inflight_inode(&dev), None);
}

#[test]
fn registry_reconnects_a_device_by_id_and_lists_it_for_the_dsdt() {
    let fx = fixture("registry");
    let mut backend = start_backend(&fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    let mut reg = VirtioDevices::new();
    reg.add(dev).unwrap();
    let acpi = reg.acpi_devices();
    assert_eq!(acpi.len(), 1);
    assert_eq!(
        (acpi[0].base, acpi[0].size, acpi[0].gsi),
        (0xd000_0000, 0x1000, 5)
    );
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let _b2 = start_backend(&fx.image, &fx.sock);
    reg.reconnect("disk0", connect(&fx.sock)).unwrap();
    assert!(reg.get("disk0").unwrap().is_connected());
}

#[test]
fn ring_outside_guest_ram_sets_device_needs_reset_and_keeps_the_backend() {
    let fx = fixture("badring");
    let _b = start_backend(&fx.image, &fx.sock);
    let (dev, _rx) = attach(&fx);
    let base = dev.base();
    let wr = |off: u64, v: u32| {
        fx.bus.write(base + off, &v.to_le_bytes());
    };
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(reg::DRIVER_FEATURES_SEL, 1);
    wr(reg::DRIVER_FEATURES, 1);
    wr(reg::STATUS, s);
    wr(reg::QUEUE_SEL, 0);
    wr(reg::QUEUE_NUM, u32::from(QSIZE));
    wr(reg::QUEUE_DESC_LOW, 0xc000_0000); // beyond the 16 MiB of RAM
    wr(reg::QUEUE_AVAIL_LOW, AVAIL as u32);
    wr(reg::QUEUE_USED_LOW, USED as u32);
    wr(reg::QUEUE_READY, 1);
    wr(reg::STATUS, s | status::DRIVER_OK);
    assert_ne!(dev.status() & status::DEVICE_NEEDS_RESET, 0);
    assert!(dev.is_connected());
    // The driver resets and sets the device up properly.
    wr(reg::STATUS, 0);
    let mut d = Driver::init(&fx, &dev);
    assert_eq!(d.write_sectors(0, &pattern(8, 512)), 0);
}

#[test]
fn requests_cut_by_a_block_proc_kill_complete_exactly_once_after_reconnect() {
    const LEN: usize = 1 << 20;
    let kind = Kind::BlockProc;
    let fx = fixture("cut");
    let mut backend = start(kind, &fx.image, &fx.sock);
    let (dev, rx) = attach(&fx);
    let mut d = Driver::init(&fx, &dev);
    let mut cut_in_flight = 0;
    for round in 0..16u8 {
        let data = pattern(round, LEN);
        fx.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        d.post(1, 0, LEN as u32);
        // Vary the moment of the kill to land inside the request sometimes
        // (coverage only: the assertions hold wherever it lands).
        std::thread::sleep(Duration::from_micros(60 * u64::from(round)));
        backend.child.kill().unwrap();
        backend.child.wait().unwrap();
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            VirtioEvent::Disconnected { id: "disk0".into() }
        );
        let pending =
            dev.with_transport(|t| t.backend().inflight().map_or(0, |b| b.pending(0).unwrap()));
        cut_in_flight += pending;
        backend = start(kind, &fx.image, &fx.sock);
        dev.reconnect(connect(&fx.sock)).unwrap();
        rx.recv_timeout(WAIT).unwrap();
        assert_eq!(d.complete(), 0, "round {round}");
        let (s, back) = d.read_sectors(0, LEN);
        assert_eq!(s, 0);
        if let Some(i) = (0..LEN).find(|&i| back[i] != data[i]) {
            let used: u16 = fx.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            panic!(
                "round {round} (pending {pending}): byte {i} is {:#x}, want {:#x}; used {used}, last {}",
                back[i], data[i], d.last_used
            );
        }
        // Exactly one completion per request: nothing extra appeared.
        let used: u16 = fx.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used, d.last_used, "round {round}");
    }
    eprintln!("{cut_in_flight} of 16 writes were in flight at the kill");
}
