//! The VM state of a guest whose virtio-blk disk is live on a real
//! block-proc (`--standalone`, no broker): the `blk-loop` guest, which
//! writes, flushes, reads back and verifies its disk in a loop, is paused
//! mid-I/O and saved (`vcpu_proc::state::save`: the rings are drained and
//! stopped at block-proc with GET_VRING_BASE), then
//! - moved with its RAM into a fresh VM whose disk is a new block-proc
//!   export of the same image: it goes on passing there, every request
//!   completed exactly once (the rings restarted at the saved avail index
//!   with SET_VRING_BASE);
//! - or continued on the same VM (`resume_all`), also after its
//!   block-proc was SIGKILLed and replaced while the rings were stopped.
//!
//! Needs /dev/kvm and a built block-proc binary (see `virtio_blk.rs`).

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
use ipc_proto::vcpu::{FdSlot, SerialConfig, VhostUserDeviceConfig, VhostUserKind, VmConfig};
use vcpu_proc::runstate::Input;
use vcpu_proc::virtio::VirtioEvent;
use vcpu_proc::vm::{FdTable, Vm};
use vm_memory::{Bytes, GuestAddress};

/// Generous: guest code is very slow on the nested KVM of the CI machines.
const TIMEOUT: Duration = Duration::from_secs(180);
const MEM_SIZE: u64 = 64 << 20;
const IMAGE_SECTORS: u64 = 4096;

fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("bulkhead-vstate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    File::create(&p)
        .unwrap()
        .set_len(IMAGE_SECTORS * 512)
        .unwrap();
    p
}

/// Serial output, line by line.
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

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// The last `pass N ok` the guest printed (0: none yet).
    fn last_pass(&self) -> u64 {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("pass ")?.strip_suffix(" ok")?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Waits until the guest reported pass `n`; fails on its FAIL verdict.
    fn wait_pass(&self, n: u64) {
        let deadline = Instant::now() + TIMEOUT;
        while self.last_pass() < n {
            assert!(!self.text().contains("VERDICT: FAIL"), "{}", self.text());
            assert!(
                Instant::now() < deadline,
                "no pass {n}; serial:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!self.text().contains("VERDICT: FAIL"), "{}", self.text());
    }
}

struct Machine {
    vm: Vm,
    /// A dup of the guest-RAM memfd.
    ram: File,
    serial: Serial,
    events: Receiver<VirtioEvent>,
    _actions: Receiver<Input>,
}

/// A VM of the `blk-loop` guest with disk `disk0` on the block-proc at
/// `sock`; its vCPUs have not run.
fn build(sock: &Path) -> Machine {
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
    let ram = File::from(mem.try_clone().unwrap());
    let guest = Path::new(env!("BULKHEAD_TEST_GUEST_DIR")).join("blk-loop");
    let kernel: OwnedFd = File::open(&guest)
        .unwrap_or_else(|e| panic!("test guest blk-loop not built: {e}"))
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
    let mut vm = Vm::create(&cfg, FdTable::new(vec![kvm, mem, kernel, serial_w]), tx).unwrap();
    let (etx, events) = channel();
    let disk = VhostUserDeviceConfig {
        id: "disk0".into(),
        slot: 0,
        kind: VhostUserKind::Block,
        socket: FdSlot(0),
        num_queues: 1,
        queue_size: 128,
        mac: None,
    };
    vm.attach_vhost_user(&disk, connect(sock), etx).unwrap();
    assert!(vm.sync.wait_parked(vm.vcpus.len(), TIMEOUT));
    Machine {
        vm,
        ram,
        serial,
        events,
        _actions: actions,
    }
}

impl Machine {
    fn pause(&self) {
        self.vm.sync.request_pause();
        self.vm.kick_all();
        assert!(self.vm.sync.wait_parked(self.vm.vcpus.len(), TIMEOUT));
    }

    /// The avail and used index of the disk's queue 0 in guest RAM.
    fn ring_indices(&self) -> (u16, u16) {
        let d = self.vm.devices.get("disk0").unwrap();
        let q = d.transport_regs().queues[0];
        let rd = |gpa: u64| self.vm.mem.read_obj::<u16>(GuestAddress(gpa + 2)).unwrap();
        (rd(q.avail), rd(q.used))
    }

    /// Pauses the guest with its disk drained and checks that every
    /// request the guest published was completed exactly once: no more
    /// completions than requests, and at most the one request the guest
    /// may have published but the backend not yet taken.
    fn assert_each_request_completed_once(&self) {
        self.pause();
        self.vm.devices.suspend_all().unwrap();
        let (avail, used) = self.ring_indices();
        assert!(
            avail.wrapping_sub(used) <= 1,
            "avail index {avail}, used index {used}: completions do not match the requests"
        );
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.vm.sync.request_pause();
        self.vm.kick_all();
    }
}

#[test]
fn a_blk_guest_saved_mid_io_continues_in_a_fresh_vm_on_a_new_block_proc() {
    let dir = temp_dir("move");
    let img = image(&dir.0);
    let sock_a = dir.0.join("a.sock");
    let mut backend_a = BlockProc::start(&img, &sock_a);
    let a = build(&sock_a);
    a.vm.sync.resume();
    a.serial.wait_pass(1);
    a.pause();
    let state = vcpu_proc::state::save(&a.vm).unwrap();
    assert!(a.vm.devices.get("disk0").unwrap().is_suspended());
    let at = a.serial.last_pass();
    let (avail, used) = a.ring_indices();
    eprintln!("saved after pass {at}: avail {avail}, used {used}");
    assert!(used > 0, "the guest did I/O before the save");
    let mut ram = vec![0u8; MEM_SIZE as usize];
    a.ram.read_exact_at(&mut ram, 0).unwrap();
    // The source side is gone: its block-proc too (the image stays).
    backend_a.kill();

    let sock_b = dir.0.join("b.sock");
    let _backend_b = BlockProc::start(&img, &sock_b);
    let b = build(&sock_b);
    b.ram.write_all_at(&ram, 0).unwrap();
    vcpu_proc::state::load(&b.vm, &state).unwrap();
    assert!(!b.vm.devices.get("disk0").unwrap().is_suspended());
    b.vm.sync.resume();
    // B did not boot: it continues the passes where A stopped.
    b.serial.wait_pass(at + 2);
    assert!(
        !b.serial.text().contains("blk: capacity"),
        "B booted the guest again:\n{}",
        b.serial.text()
    );
    b.assert_each_request_completed_once();
}

#[test]
fn a_blk_guest_saved_mid_io_continues_on_the_same_vm_also_after_a_block_proc_kill() {
    let dir = temp_dir("same");
    let img = image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = build(&sock);
    m.vm.sync.resume();
    m.serial.wait_pass(1);

    // xen-save-devices-state, then cont.
    m.pause();
    vcpu_proc::state::save(&m.vm).unwrap();
    m.vm.devices.resume_all().unwrap();
    m.vm.sync.resume();
    let at = m.serial.last_pass();
    m.serial.wait_pass(at + 2);

    // Saved again; block-proc dies while the rings are stopped, a new one
    // takes the device without starting them; the resume does.
    m.pause();
    let state = vcpu_proc::state::save(&m.vm).unwrap();
    backend.kill();
    assert_eq!(
        m.events.recv_timeout(TIMEOUT).unwrap(),
        VirtioEvent::Disconnected { id: "disk0".into() }
    );
    backend = BlockProc::start(&img, &sock);
    let disk = m.vm.devices.shared("disk0").unwrap();
    disk.reconnect(connect(&sock)).unwrap();
    assert_eq!(
        m.events.recv_timeout(TIMEOUT).unwrap(),
        VirtioEvent::Reconnected { id: "disk0".into() }
    );
    assert!(disk.is_suspended(), "the reconnection kept the suspension");
    // The state loads over the same (paused, suspended) VM as well.
    vcpu_proc::state::load(&m.vm, &state).unwrap();
    m.vm.devices.resume_all().unwrap();
    m.vm.sync.resume();
    let at = m.serial.last_pass();
    m.serial.wait_pass(at + 2);
    m.assert_each_request_completed_once();
    drop(backend);
}
