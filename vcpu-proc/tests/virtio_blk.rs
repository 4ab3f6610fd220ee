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

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::block_proc::{connect, BlockProc, TempDir};
use ipc_proto::vcpu::{FdSlot, SerialConfig, VmConfig};
use vcpu_proc::runstate::Input;
use vcpu_proc::virtio::dirty_log::VhostLog;
use vcpu_proc::virtio::registry::VirtioDevices;
use vcpu_proc::virtio::{VhostUserBlkParams, VirtioEvent, VirtioMmioDevice};
use vcpu_proc::vm::{FdTable, Vm};

/// Generous: guest code is very slow on the nested KVM of the CI machines.
const TIMEOUT: Duration = Duration::from_secs(180);
const MEM_SIZE: u64 = 64 << 20;
const IMAGE_SECTORS: u64 = 4096;

fn guest(name: &str) -> PathBuf {
    Path::new(env!("BULKHEAD_TEST_GUEST_DIR")).join(name)
}

fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("bulkhead-vblk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Serial output, collected line by line.
#[derive(Clone, Default)]
struct Serial(Arc<Mutex<Vec<String>>>);

impl Serial {
    fn spawn(read: OwnedFd) -> Self {
        let s = Serial::default();
        let lines = s.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(File::from(read)).lines() {
                let Ok(line) = line else { return };
                lines.lock().unwrap().push(line);
            }
        });
        s
    }

    fn has(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.has(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on serial; got:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Number of completed `pass N ok` lines.
    fn passes(&self) -> usize {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.starts_with("pass ") && l.ends_with(" ok"))
            .count()
    }

    fn wait_passes(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.passes() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} passes; serial:\n{}",
                self.text()
            );
            assert!(!self.has("VERDICT: FAIL"), "{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

struct Machine {
    vm: Vm,
    actions: Receiver<Input>,
    serial: Serial,
    /// disk0, in the registry the migration drives.
    devices: VirtioDevices,
    events: Receiver<VirtioEvent>,
}

fn boot(guest_name: &str, sock: &Path) -> Machine {
    let kvm: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
        .unwrap_or_else(|e| panic!("this test needs /dev/kvm (read-write): {e}"))
        .into();
    let mem = nix::sys::memfd::memfd_create(c"guest-ram", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap();
    nix::unistd::ftruncate(&mem, MEM_SIZE as i64).unwrap();
    let kernel: OwnedFd = File::open(guest(guest_name))
        .unwrap_or_else(|e| panic!("test guest {guest_name} not built: {e}"))
        .into();
    let (serial_r, serial_w) = nix::unistd::pipe().unwrap();
    let cfg = VmConfig {
        kvm: FdSlot(0),
        memory: FdSlot(1),
        mem_size: MEM_SIZE,
        cpus: 1,
        topology: ipc_proto::cpu_topology::CpuTopology::flat(1),
        kernel: Some(FdSlot(2)),
        initrd: None,
        cmdline: String::new(),
        serial: SerialConfig::Stream {
            output: FdSlot(3),
            input: None,
        },
        start_paused: false,
        no_shutdown: false,
        no_reboot: false,
        cpu: Default::default(),
        thread_names: false,
        no_dump_guest_core: false,
        incoming: false,
    };
    let serial = Serial::spawn(serial_r);
    let (tx, actions) = channel();
    let vm = Vm::create(&cfg, FdTable::new(vec![kvm, mem, kernel, serial_w]), tx).unwrap();
    let (etx, events) = channel();
    let disk = VirtioMmioDevice::new_vhost_user_blk(VhostUserBlkParams {
        id: "disk0".into(),
        slot: 0,
        socket: connect(sock),
        mem: vm.mem.clone(),
        vm: &vm.fd,
        bus: &vm.mmio,
        events: etx,
        num_queues: 1,
        queue_size: 128,
    })
    .unwrap();
    let mut devices = VirtioDevices::new();
    devices.add(disk).unwrap();
    vm.sync.resume();
    Machine {
        vm,
        actions,
        serial,
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
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.vm.sync.request_pause();
        self.vm.kick_all();
    }
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    File::create(&p)
        .unwrap()
        .set_len(IMAGE_SECTORS * 512)
        .unwrap();
    p
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
    let dir = temp_dir("pass");
    let img = image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let _backend = BlockProc::start(&img, &sock);
    let m = boot("blk", &sock);
    assert_eq!(m.exit_code(), 0, "serial:\n{}", m.serial.text());
    m.serial.wait_for("VERDICT: PASS blk");
    // The guest's last pass (3) over sectors 0..64.
    assert_image_holds_pass(&img, 64, 3);
    // Completions were signalled through the irqfd on GSI 5.
    assert!(
        !m.serial.has("blk: 0 device interrupts"),
        "{}",
        m.serial.text()
    );
    m.serial.wait_for(" device interrupts");
}

#[test]
fn blk_guest_passes_when_block_proc_is_killed_and_replaced_mid_run() {
    let dir = temp_dir("kill");
    let img = image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = boot("blk", &sock);
    m.serial.wait_for("blk: capacity");
    backend.kill();
    assert_eq!(m.event(), VirtioEvent::Disconnected { id: "disk0".into() });
    assert!(!m.disk().is_connected());
    let _backend2 = BlockProc::start(&img, &sock);
    m.disk().reconnect(connect(&sock)).unwrap();
    assert_eq!(m.event(), VirtioEvent::Reconnected { id: "disk0".into() });
    assert_eq!(m.exit_code(), 0, "serial:\n{}", m.serial.text());
    m.serial.wait_for("VERDICT: PASS blk");
    assert_image_holds_pass(&img, 64, 3);
}

#[test]
fn blk_loop_guest_never_fails_across_repeated_block_proc_kills() {
    let dir = temp_dir("chaos");
    let img = image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = boot("blk-loop", &sock);
    m.serial.wait_passes(1);
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
        m.serial.wait_passes(m.serial.passes() + 2);
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
    m.serial.wait_passes(m.serial.passes() + 2);
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
    let dir = temp_dir("dirty");
    let img = image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = boot("blk-loop", &sock);
    m.serial.wait_passes(1);
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
    m.serial.wait_passes(m.serial.passes() + 2);
    assert_eq!(marked(&log), Default::default());
    assert!(!m.serial.has("VERDICT: FAIL"), "{}", m.serial.text());
}
