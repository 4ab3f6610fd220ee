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

use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::block_proc::{connect, disk_config, raw_image, temp_dir, BlockProc};
use common::serial_log::SerialLog;
use common::test_vm::{TestVmBuilder, MEM_SIZE};
use ipc_proto::vcpu::{FdSlot, VhostUserDeviceConfig, VhostUserKind};
use net_echo::EchoNic;
use vcpu_proc::runstate::Input;
use vcpu_proc::virtio::VirtioEvent;
use vcpu_proc::vm::Vm;
use vm_memory::{Bytes, GuestAddress};

/// Generous: guest code is very slow on the nested KVM of the CI machines.
const TIMEOUT: Duration = Duration::from_secs(180);

struct Machine {
    vm: Vm,
    /// A dup of the guest-RAM memfd.
    ram: std::fs::File,
    serial: SerialLog,
    events: Receiver<VirtioEvent>,
    _actions: Receiver<Input>,
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
    let c = TestVmBuilder::guest(guest).build().create();
    let mut vm = c.vm;
    let (etx, events) = channel();
    vm.attach_vhost_user(device, socket, etx).unwrap();
    Machine {
        vm,
        ram: c.ram,
        serial: SerialLog::spawn(c.serial),
        events,
        _actions: c.actions,
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
    let dir = temp_dir("vstate-move");
    let img = raw_image(&dir.0);
    let sock_a = dir.0.join("a.sock");
    let mut backend_a = BlockProc::start(&img, &sock_a);
    let a = build("blk-loop", &disk_config(), connect(&sock_a));
    a.vm.sync.resume();
    a.serial.wait_pass(1, TIMEOUT);
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
    let b = build("blk-loop", &disk_config(), connect(&sock_b));
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
    b.serial.wait_pass(at + 2, TIMEOUT);
    assert!(
        !b.serial.text().contains("blk: capacity"),
        "B booted the guest again:\n{}",
        b.serial.text()
    );
    b.assert_each_request_completed_once();
}

#[test]
fn a_blk_guest_saved_mid_io_continues_on_the_same_vm_also_after_a_block_proc_kill() {
    let dir = temp_dir("vstate-same");
    let img = raw_image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let mut backend = BlockProc::start(&img, &sock);
    let m = build("blk-loop", &disk_config(), connect(&sock));
    m.vm.sync.resume();
    m.serial.wait_pass(1, TIMEOUT);

    // xen-save-devices-state, then cont.
    m.pause();
    vcpu_proc::state::save(&m.vm).unwrap();
    m.vm.devices.resume_all().unwrap();
    m.vm.sync.resume();
    let at = m.serial.last_pass();
    m.serial.wait_pass(at + 2, TIMEOUT);

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
    m.serial.wait_pass(at + 2, TIMEOUT);
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
fn wait_clean_round_after(serial: &SerialLog, n: u64) -> u64 {
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
