//! The `blk` test guests on a virtio-mmio disk served by the real block-proc
//! (`--standalone`) over vhost-user, the VM built through vcpu-proc's
//! library (`Vm::create`, then `VirtioMmioDevice::new_vhost_user_blk` on its
//! MMIO bus), including SIGKILLing block-proc while the guest runs, and
//! block-proc logging the guest's reads in the vhost-user dirty log while
//! a migration would run (started through `VirtioDevices`), also after
//! it was killed and replaced.
//!
//! Needs /dev/kvm and a built block-proc binary: next to this test's
//! target directory (`cargo build -p block-proc` with the same
//! CARGO_TARGET_DIR) or named by `BULKHEAD_BLOCK_PROC`. Fails with a clear
//! message when either is missing.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::block_proc::{connect, raw_image, temp_dir, BlockProc};
use common::serial_log::SerialLog;
use common::test_vm::{TestVmBuilder, MEM_SIZE};
use vcpu_proc::runstate::Input;
use vcpu_proc::virtio::dirty_log::VhostLog;
use vcpu_proc::virtio::registry::VirtioDevices;
use vcpu_proc::virtio::{VhostUserBlkParams, VirtioEvent, VirtioMmioDevice};
use vcpu_proc::vm::Vm;

/// Generous: guest code is very slow on the nested KVM of the CI machines.
const TIMEOUT: Duration = Duration::from_secs(180);

struct Machine {
    vm: Vm,
    actions: Receiver<Input>,
    serial: SerialLog,
    /// disk0, in the registry the migration drives.
    devices: VirtioDevices,
    events: Receiver<VirtioEvent>,
}

fn boot(guest_name: &str, sock: &Path) -> Machine {
    let c = TestVmBuilder::guest(guest_name).build().create();
    let (etx, events) = channel();
    let disk = VirtioMmioDevice::new_vhost_user_blk(VhostUserBlkParams {
        id: "disk0".into(),
        slot: 0,
        socket: connect(sock),
        mem: c.vm.mem.clone(),
        vm: &c.vm.fd,
        bus: &c.vm.mmio,
        events: etx,
        num_queues: 1,
        queue_size: 128,
    })
    .unwrap();
    let mut devices = VirtioDevices::new();
    devices.add(disk).unwrap();
    c.vm.sync.resume();
    Machine {
        vm: c.vm,
        actions: c.actions,
        serial: SerialLog::spawn(c.serial),
        devices,
        events,
    }
}

impl Machine {
    /// Waits for the guest's debug-exit code.
    fn exit_code(&self) -> u32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.actions.recv_timeout(left) {
                Ok(Input::DebugExit(code)) => return code,
                Ok(Input::Crash(why)) => panic!("guest crashed: {why}\n{}", self.serial.text()),
                Ok(_) => {}
                Err(e) => panic!("no debug exit ({e}); serial:\n{}", self.serial.text()),
            }
        }
    }

    fn disk(&self) -> &VirtioMmioDevice {
        self.devices.get("disk0").unwrap()
    }

    fn event(&self) -> VirtioEvent {
        self.events.recv_timeout(TIMEOUT).unwrap()
    }

    /// Waits for `n` more passes of `blk-loop` than it reported so far.
    fn more_passes(&self, n: u64) {
        self.serial.wait_pass(self.serial.last_pass() + n, TIMEOUT);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.vm.sync.request_pause();
        self.vm.kick_all();
    }
}

/// The guests' sector pattern, the very source the `blk` guests use.
#[path = "../../test-guests/blk/src/pattern.rs"]
#[allow(dead_code)]
mod pattern;

/// Sector `s` of the open image `f`, as the pattern's words.
fn read_sector_words(f: &File, s: u64) -> [u64; pattern::WORDS] {
    let mut b = [0u8; pattern::SECTOR];
    f.read_exact_at(&mut b, s * pattern::SECTOR as u64).unwrap();
    let mut words = [0u64; pattern::WORDS];
    for (w, c) in words.iter_mut().zip(b.chunks_exact(8)) {
        *w = u64::from_le_bytes(c.try_into().unwrap());
    }
    words
}

fn assert_image_holds_pass(image: &Path, sectors: u64, pass: u64) {
    let f = File::open(image).unwrap();
    for s in 0..sectors {
        let words = read_sector_words(&f, s);
        assert_eq!(pattern::check(&words, s, pass), Ok(()), "sector {s}");
    }
}

#[test]
fn blk_guest_passes_on_block_proc_and_its_writes_reach_the_image() {
    let dir = temp_dir("vblk-pass");
    let img = raw_image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let _backend = BlockProc::start(&img, &sock);
    let m = boot("blk", &sock);
    assert_eq!(m.exit_code(), 0, "serial:\n{}", m.serial.text());
    m.serial.wait_for("VERDICT: PASS blk", TIMEOUT);
    // The guest's last pass (3) over sectors 0..64.
    assert_image_holds_pass(&img, 64, 3);
    // Completions were signalled through the irqfd on GSI 5.
    assert!(
        !m.serial.has("blk: 0 device interrupts"),
        "{}",
        m.serial.text()
    );
    m.serial.wait_for(" device interrupts", TIMEOUT);
}

#[test]
fn blk_guest_passes_when_block_proc_is_killed_and_replaced_mid_run() {
    let dir = temp_dir("vblk-kill");
    let img = raw_image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = boot("blk", &sock);
    m.serial.wait_for("blk: capacity", TIMEOUT);
    backend.kill();
    assert_eq!(m.event(), VirtioEvent::Disconnected { id: "disk0".into() });
    assert!(!m.disk().is_connected());
    let _backend2 = BlockProc::start(&img, &sock);
    m.disk().reconnect(connect(&sock)).unwrap();
    assert_eq!(m.event(), VirtioEvent::Reconnected { id: "disk0".into() });
    assert_eq!(m.exit_code(), 0, "serial:\n{}", m.serial.text());
    m.serial.wait_for("VERDICT: PASS blk", TIMEOUT);
    assert_image_holds_pass(&img, 64, 3);
}

#[test]
fn blk_loop_guest_never_fails_across_repeated_block_proc_kills() {
    let dir = temp_dir("vblk-chaos");
    let img = raw_image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = boot("blk-loop", &sock);
    m.serial.wait_pass(1, TIMEOUT);
    for round in 0..8 {
        backend.kill();
        assert_eq!(
            m.event(),
            VirtioEvent::Disconnected { id: "disk0".into() },
            "round {round}"
        );
        backend = BlockProc::start(&img, &sock);
        m.disk().reconnect(connect(&sock)).unwrap();
        assert_eq!(m.event(), VirtioEvent::Reconnected { id: "disk0".into() });
        // At least one whole pass on the new backend.
        m.more_passes(2);
    }
}

/// Where the `blk` guest's buffers are (it uses one data buffer, header
/// and status byte, for every request), from the descriptors of queue 0
/// it last wrote: (data address and length, status byte, used ring).
fn guest_buffers(m: &Machine) -> ((u64, u64), u64, u64) {
    let (desc, size, used) = m.disk().with_transport(|t| {
        let q = t.queues()[0];
        (q.desc, q.size, q.used)
    });
    let mem = &m.vm.mem;
    let (mut data, mut status) = ((0, 0), 0);
    for i in 0..u64::from(size) {
        use vm_memory::{Bytes, GuestAddress};
        let addr: u64 = mem.read_obj(GuestAddress(desc + 16 * i)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(desc + 16 * i + 8)).unwrap();
        if len == 1 {
            status = addr;
        } else if len > 16 && u64::from(len) > data.1 {
            data = (addr, u64::from(len));
        }
    }
    assert!(data.1 > 0 && status != 0, "no request seen in the ring");
    (data, status, used)
}

/// The pages marked in `log` since the last call.
fn marked(log: &VhostLog) -> std::collections::BTreeSet<u64> {
    let mut pages = std::collections::BTreeSet::new();
    log.take(|p| {
        pages.insert(p);
    });
    pages
}

/// Two more passes of the guest: block-proc's reads into its data buffer
/// mark every page of it, its status byte's page and the used ring's
/// page, and nothing else.
fn assert_reads_logged(m: &Machine, log: &VhostLog) {
    const PAGE: u64 = 4096;
    let ((data, len), status, used) = guest_buffers(m);
    let _ = marked(log);
    m.more_passes(2);
    let got = marked(log);
    let data_pages = data / PAGE..=(data + len - 1) / PAGE;
    let mut want: std::collections::BTreeSet<u64> = data_pages.collect();
    want.insert(status / PAGE);
    want.insert((used + 2) / PAGE);
    let ring_pages = used / PAGE..=(used + 6 + 8 * 256) / PAGE;
    assert!(
        want.is_subset(&got),
        "not logged: {:?} (logged {got:?})",
        want.difference(&got).collect::<Vec<_>>()
    );
    assert!(
        got.iter()
            .all(|p| want.contains(p) || ring_pages.contains(p)),
        "logged pages block-proc did not write: {got:?}, wanted {want:?}"
    );
}

#[test]
fn block_proc_logs_the_guests_reads_while_logging_is_on_also_after_a_kill() {
    let dir = temp_dir("vblk-dirty");
    let img = raw_image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = boot("blk-loop", &sock);
    m.serial.wait_pass(1, TIMEOUT);
    let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    let size = ipc_proto::migration::dirty_log_size(MEM_SIZE);
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    let log = Arc::new(VhostLog::map(fd, size).unwrap());

    m.devices.start_dirty_log(&log).unwrap();
    assert_reads_logged(&m, &log);

    // A block-proc killed during the migration: its replacement logs too.
    backend.kill();
    assert_eq!(m.event(), VirtioEvent::Disconnected { id: "disk0".into() });
    let _backend2 = BlockProc::start(&img, &sock);
    m.disk().reconnect(connect(&sock)).unwrap();
    assert_eq!(m.event(), VirtioEvent::Reconnected { id: "disk0".into() });
    assert_reads_logged(&m, &log);

    // Logging off: the guest's reads go on, nothing is marked.
    m.devices.stop_dirty_log().unwrap();
    let _ = marked(&log);
    m.more_passes(2);
    assert_eq!(marked(&log), Default::default());
    assert!(!m.serial.has("VERDICT: FAIL"), "{}", m.serial.text());
}
