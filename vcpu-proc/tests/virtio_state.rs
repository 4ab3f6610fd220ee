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
//! And the `net-loop` guest, pinging an echo NIC (`common/net_echo.rs`),
//! saved mid-traffic and moved into a fresh VM with a new echo NIC: its
//! rounds go on losing nothing.
//!
//! Needs /dev/kvm and a built block-proc binary (see `virtio_blk.rs`).

mod common;
#[path = "common/net_echo.rs"]
mod net_echo;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::block_proc::{connect, BlockProc, TempDir};
use ipc_proto::vcpu::{FdSlot, SerialConfig, VhostUserDeviceConfig, VhostUserKind, VmConfig};
use net_echo::EchoNic;
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

/// Disk `disk0` on slot 0.
fn disk() -> VhostUserDeviceConfig {
    VhostUserDeviceConfig {
        id: "disk0".into(),
        slot: 0,
        kind: VhostUserKind::Block,
        socket: FdSlot(0),
        num_queues: 1,
        queue_size: 128,
        mac: None,
    }
}

/// NIC `net0` on slot 0 (one queue pair).
fn nic() -> VhostUserDeviceConfig {
    VhostUserDeviceConfig {
        id: "net0".into(),
        slot: 0,
        kind: VhostUserKind::Net,
        socket: FdSlot(0),
        num_queues: 2,
        queue_size: 256,
        mac: Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
    }
}

/// A VM of `guest` with `device` on the backend at the other end of
/// `socket`; its vCPUs have not run.
fn build(guest: &str, device: &VhostUserDeviceConfig, socket: UnixStream) -> Machine {
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
    let path = Path::new(env!("BULKHEAD_TEST_GUEST_DIR")).join(guest);
    let kernel: OwnedFd = File::open(&path)
        .unwrap_or_else(|e| panic!("test guest {guest} not built: {e}"))
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
    vm.attach_vhost_user(device, socket, etx).unwrap();
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

    /// The avail and used index of queue `q` of device `id` in guest RAM.
    fn ring_indices_of(&self, id: &str, q: usize) -> (u16, u16) {
        let d = self.vm.devices.get(id).unwrap();
        let q = d.transport_regs().queues[q];
        let rd = |gpa: u64| self.vm.mem.read_obj::<u16>(GuestAddress(gpa + 2)).unwrap();
        (rd(q.avail), rd(q.used))
    }

    /// The avail and used index of the disk's queue 0 in guest RAM.
    fn ring_indices(&self) -> (u16, u16) {
        self.ring_indices_of("disk0", 0)
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
    let a = build("blk-loop", &disk(), connect(&sock_a));
    a.vm.sync.resume();
    a.serial.wait_pass(1);
    a.pause();
    let t = Instant::now();
    let state = vcpu_proc::state::save(&a.vm).unwrap();
    let save_took = t.elapsed();
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
    let b = build("blk-loop", &disk(), connect(&sock_b));
    b.ram.write_all_at(&ram, 0).unwrap();
    let t = Instant::now();
    vcpu_proc::state::load(&b.vm, &state).unwrap();
    eprintln!(
        "save (disk drained and stopped) {save_took:?}, load (disk started) {:?}",
        t.elapsed()
    );
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
    let m = build("blk-loop", &disk(), connect(&sock));
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

/// Pings of a `net-loop` round.
const ROUND: u32 = 50;

/// The `net: round N: sent S received R lost L duplicate D corrupt C ...`
/// lines: (N, whether every ping of the round came back once, intact).
fn rounds(serial: &str) -> Vec<(u64, bool)> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("net: round ")?;
            let (n, counts) = rest.split_once(':')?;
            let full = format!(" sent {ROUND} received {ROUND} lost 0 duplicate 0 corrupt 0 ");
            Some((n.trim().parse().ok()?, counts.contains(&full)))
        })
        .collect()
}

/// Waits for a clean round after round `n`; returns its number.
fn wait_clean_round_after(serial: &Serial, n: u64) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = serial.text();
        assert!(!text.contains("VERDICT: FAIL"), "{text}");
        if let Some((m, _)) = rounds(&text).into_iter().find(|(m, c)| *m > n && *c) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no clean round after {n}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_net_guest_saved_mid_traffic_continues_in_a_fresh_vm_on_a_new_backend() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let echo_a = EchoNic::spawn(theirs);
    let a = build("net-loop", &nic(), ours);
    a.vm.sync.resume();
    wait_clean_round_after(&a.serial, 1);
    a.pause();
    let state = vcpu_proc::state::save(&a.vm).unwrap();
    let last = rounds(&a.serial.text()).last().map_or(0, |r| r.0);
    let mut ram = vec![0u8; MEM_SIZE as usize];
    a.ram.read_exact_at(&mut ram, 0).unwrap();
    echo_a.crash();

    let (ours, theirs) = UnixStream::pair().unwrap();
    let echo_b = EchoNic::spawn(theirs);
    let b = build("net-loop", &nic(), ours);
    b.ram.write_all_at(&ram, 0).unwrap();
    vcpu_proc::state::load(&b.vm, &state).unwrap();
    b.vm.sync.resume();
    // Two clean rounds on B after the one A was in.
    let n = wait_clean_round_after(&b.serial, last + 1);
    wait_clean_round_after(&b.serial, n);
    echo_b.wait_echoed(2 * u64::from(ROUND), TIMEOUT);
    let text = b.serial.text();
    assert!(
        !text.contains("mac 52:54"),
        "B booted the guest again:\n{text}"
    );
    // No queue has more completions than buffers the guest offered.
    b.pause();
    b.vm.devices.suspend_all().unwrap();
    for q in 0..2 {
        let (avail, used) = b.ring_indices_of("net0", q);
        assert!(
            avail.wrapping_sub(used) <= 256,
            "queue {q}: avail index {avail}, used index {used}"
        );
    }
}
