//! Capture and restore on a real VM running the `timer` test guest (needs
//! /dev/kvm, as every vcpu-proc VM test).

use std::fs::File;
use std::time::{Duration, Instant};

use ipc_proto::vmstate::{SectionId, VmStateError};

use super::*;
use crate::test_vm::{pump_serial, TestVmBuilder};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A test VM (also used by `migration::tests`).
pub(crate) struct Running {
    pub(crate) vm: Vm,
    /// A dup of the guest-RAM memfd.
    pub(crate) ram: File,
    pub(crate) serial: std::sync::mpsc::Receiver<u8>,
    pub(crate) seen: Vec<u8>,
}

fn start(guest: &str) -> Running {
    start_smp(guest, 1)
}

fn start_smp(guest: &str, cpus: u8) -> Running {
    let g = built(guest, cpus);
    g.vm.sync.resume();
    g
}

/// A VM of `guest` whose vCPUs have not run yet.
pub(crate) fn built(guest: &str, cpus: u8) -> Running {
    let c = TestVmBuilder::guest(guest).cpus(cpus).build().create();
    // The receiver must outlive the VM: leak it into the test's lifetime.
    std::mem::forget(c.actions);
    let (tx, serial) = std::sync::mpsc::channel();
    pump_serial(c.serial, move |bytes| {
        bytes.iter().all(|&b| tx.send(b).is_ok())
    });
    Running {
        vm: c.vm,
        ram: c.ram,
        serial,
        seen: Vec::new(),
    }
}

impl Running {
    fn wait_serial(&mut self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !String::from_utf8_lossy(&self.seen).contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.serial.recv_timeout(left) {
                Ok(b) => self.seen.push(b),
                Err(_) => panic!(
                    "no {text:?} on the serial port; got {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Pauses the guest and checks it had not finished yet (so what it
    /// prints after the resume was computed on the restored state).
    fn pause(&mut self) {
        self.vm.sync.request_pause();
        self.vm.kick_all();
        assert!(self.vm.sync.wait_parked(self.vm.vcpus.len(), TIMEOUT));
        while let Ok(b) = self.serial.recv_timeout(Duration::from_millis(50)) {
            self.seen.push(b);
        }
        let seen = String::from_utf8_lossy(&self.seen);
        assert!(!seen.contains("VERDICT"), "paused too late: {seen:?}");
        self.seen.clear();
    }
}

/// The vCPU sections and the irqchip, which do not move while the VM is
/// paused (the TSC and kvm-clock do).
/// The parts of a paused VM's state that do not move on their own: not
/// the TSC, and not what KVM's in-kernel timers change while the vCPUs
/// are parked (a LAPIC or PIT tick sets IRR bits in the LAPIC, the
/// IOAPIC/PIC and the pending events).
fn still_parts(s: &VmState) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in &s.vcpus {
        let mut v = v.clone();
        v.msrs.retain(|(i, _)| *i != cpu::MSR_IA32_TSC);
        v.lapic = Default::default();
        v.events = Default::default();
        out.push(v.encode().unwrap());
    }
    out
}

#[test]
fn a_paused_guest_restored_after_its_registers_were_scribbled_runs_on() {
    let mut g = start("timer");
    g.wait_serial("timer");
    g.pause();
    let file = save(&g.vm).unwrap();
    let before = VmState::decode(&file).unwrap();
    assert!(before.vcpus[0].msrs.len() > 10, "saveable MSRs read");

    // Scribble: a RIP and RSP the guest would crash on, a cleared LAPIC.
    let view = &g.vm.vcpus[0].view;
    let mut regs = view.get_regs().unwrap();
    regs.rip = 0xdead_0000;
    regs.rsp = 0;
    view.set_regs(&regs).unwrap();
    view.set_lapic(&Default::default()).unwrap();

    load(&g.vm, &file).unwrap();
    let after = VmState::capture(&g.vm).unwrap();
    assert!(
        still_parts(&before) == still_parts(&after),
        "restore is byte-exact"
    );
    // The LAPIC was cleared: its spurious-vector and timer LVT registers
    // are back (its IRR may move with the timer, see `still_parts`).
    let apic = |s: &VmState, off: usize| s.vcpus[0].lapic.regs[off..off + 4].to_vec();
    for off in [0xf0, 0x320] {
        assert_eq!(
            apic(&before, off),
            apic(&after, off),
            "LAPIC register {off:#x}"
        );
    }

    g.vm.sync.resume();
    g.wait_serial("VERDICT: PASS timer");
}

#[test]
fn a_guest_restored_into_a_fresh_vm_with_its_ram_continues_there() {
    use std::os::unix::fs::FileExt;
    let mut a = start("timer");
    a.wait_serial("lapic timer: periodic");
    a.pause();
    let file = save(&a.vm).unwrap();
    let mut ram = vec![0u8; 64 << 20];
    a.ram.read_exact_at(&mut ram, 0).unwrap();

    // B loaded the guest afresh at creation; it gets A's RAM and state.
    let mut b = built("timer", 1);
    b.ram.write_all_at(&ram, 0).unwrap();
    load(&b.vm, &file).unwrap();
    let saved = VmState::decode(&file).unwrap();
    assert_eq!(lock(&b.vm.serial).state(), saved.serial, "COM1 restored");
    b.vm.sync.resume();
    b.wait_serial("VERDICT: PASS timer");
    let out = String::from_utf8_lossy(&b.seen);
    assert!(!out.contains("Bulkhead test guest"), "B booted: {out:?}");
    assert!(out.contains("pit:"), "B continued the test: {out:?}");
}

/// A VM whose guest never ran (`-S`): its capture holds the vCPUs in
/// their boot state (not KVM's reset state), so a fresh VM given its RAM
/// and state boots the guest once, where the first would have.
#[test]
fn a_vm_that_never_ran_moves_to_a_fresh_vm_and_boots_there() {
    use std::os::unix::fs::FileExt;
    let a = built("timer", 1);
    let file = save(&a.vm).unwrap();
    let state = VmState::decode(&file).unwrap();
    let entry = a.vm.sync.boot_pending(&[]).1;
    assert_eq!(
        state.vcpus[0].regs.rip, entry.rip,
        "boot CPU not at the entry"
    );
    let mut ram = vec![0u8; 64 << 20];
    a.ram.read_exact_at(&mut ram, 0).unwrap();

    let mut b = built("timer", 1);
    b.ram.write_all_at(&ram, 0).unwrap();
    load(&b.vm, &file).unwrap();
    b.vm.sync.resume();
    b.wait_serial("VERDICT: PASS timer");
    let out = String::from_utf8_lossy(&b.seen);
    assert_eq!(out.matches("Bulkhead test guest").count(), 1, "{out:?}");
    // A captured its own boot state: it boots the same way when it runs.
    assert!(a.vm.sync.boot_pending(&[0]).0.is_empty());
}

/// The ids of a state file's sections, in order.
fn section_ids(file: &[u8]) -> Vec<SectionId> {
    ipc_proto::vmstate::decode(file)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

#[test]
fn the_run_state_travels_and_a_file_without_it_still_loads() {
    use ipc_proto::vcpu::RunState;
    let a = built("timer", 1);
    a.vm.global_state.set_to_save(RunState::Prelaunch);
    let file = save(&a.vm).unwrap();
    let state = VmState::decode(&file).unwrap();
    assert_eq!(state.run_state, Some(RunState::Prelaunch));
    let b = built("timer", 1);
    load(&b.vm, &file).unwrap();
    assert_eq!(b.vm.global_state.take_loaded(), Some(RunState::Prelaunch));
    // A file written before the section existed: the rest loads, and
    // no run state is taken from it.
    let old = VmState {
        run_state: None,
        ..state
    }
    .encode()
    .unwrap();
    let ids = section_ids(&old);
    assert!(!ids.contains(&SectionId::RunState), "{ids:?}");
    b.vm.global_state.set_loaded(Some(RunState::Paused));
    load(&b.vm, &old).unwrap();
    assert_eq!(b.vm.global_state.take_loaded(), None);
    // A running (or suspended) VM writes no section: its absence says
    // the same, and a reader that predates the section loads the file.
    for live in [RunState::Running, RunState::Suspended] {
        a.vm.global_state.set_to_save(live);
        let file = save(&a.vm).unwrap();
        let ids = section_ids(&file);
        assert!(!ids.contains(&SectionId::RunState), "{live:?}: {ids:?}");
    }
}

#[test]
fn a_corrupt_state_is_refused_and_leaves_the_vm_as_it_was() {
    let mut g = start("timer");
    g.wait_serial("timer");
    g.pause();
    let mut file = save(&g.vm).unwrap();
    let before = VmState::capture(&g.vm).unwrap();
    let n = file.len();
    file[n / 2] ^= 0xff;
    assert!(matches!(
        load(&g.vm, &file),
        Err(StateError::Format(VmStateError::Checksum { .. }))
    ));
    assert!(matches!(
        load(&g.vm, &file[..n - 100]),
        Err(StateError::Format(VmStateError::Truncated { .. }))
    ));
    let after = VmState::capture(&g.vm).unwrap();
    assert!(still_parts(&before) == still_parts(&after));
    g.vm.sync.resume();
    g.wait_serial("VERDICT: PASS timer");
}

#[test]
fn a_state_missing_its_pit_section_is_refused() {
    let mut g = start("timer");
    g.wait_serial("timer");
    g.pause();
    let state = VmState::capture(&g.vm).unwrap();
    let mut sections: Vec<_> = state
        .vcpus
        .iter()
        .map(|v| ipc_proto::vmstate::OwnedSection {
            id: SectionId::Vcpu,
            payload: v.encode().unwrap(),
        })
        .collect();
    sections.extend(
        state
            .platform
            .encode()
            .unwrap()
            .into_iter()
            .filter(|s| s.id != SectionId::Pit),
    );
    let file = ipc_proto::vmstate::encode(&sections).unwrap();
    let err = load(&g.vm, &file).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the VM state does not match this VM: the state has no pit section"
    );
}

#[test]
fn a_two_cpu_guest_moves_to_a_fresh_vm_with_both_vcpus() {
    use std::os::unix::fs::FileExt;
    let mut a = start_smp("timer", 2);
    a.wait_serial("lapic timer: periodic");
    a.pause();
    let file = save(&a.vm).unwrap();
    let state = VmState::decode(&file).unwrap();
    let slots: Vec<u32> = state.vcpus.iter().map(|v| v.slot).collect();
    assert_eq!(slots, [0, 1]);
    let mut ram = vec![0u8; 64 << 20];
    a.ram.read_exact_at(&mut ram, 0).unwrap();

    let mut b = built("timer", 2);
    b.ram.write_all_at(&ram, 0).unwrap();
    load(&b.vm, &file).unwrap();
    let restored = VmState::capture(&b.vm).unwrap();
    let mp: Vec<u32> = restored.vcpus.iter().map(|v| v.mp_state.mp_state).collect();
    let saved: Vec<u32> = state.vcpus.iter().map(|v| v.mp_state.mp_state).collect();
    assert_eq!(mp, saved);
    b.vm.sync.resume();
    b.wait_serial("VERDICT: PASS timer");
    assert!(!String::from_utf8_lossy(&b.seen).contains("Bulkhead test guest"));
}

#[test]
fn a_state_of_two_vcpus_is_refused_by_a_one_vcpu_vm() {
    let mut a = start_smp("timer", 2);
    a.wait_serial("timer");
    a.pause();
    let file = save(&a.vm).unwrap();
    let b = built("timer", 1);
    let err = load(&b.vm, &file).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the VM state does not match this VM: the state has vCPUs [0, 1], the VM has [0]"
    );
}

#[test]
fn the_ged_events_and_cpu_hotplug_registers_move_to_a_fresh_vm() {
    use crate::bus::BusDevice;
    use crate::devices::ged::EVENT_CPU_HOTPLUG;
    let a = built("timer", 2);
    a.vm.ged.lock().unwrap().notify(EVENT_CPU_HOTPLUG).unwrap();
    {
        let mut regs = a.vm.cpu_regs();
        regs.request_remove(1);
        regs.write(0, &1u32.to_le_bytes()); // select CPU 1
        regs.write(5, &[3]); // command: CPU id
    }
    let file = save(&a.vm).unwrap();
    let b = built("timer", 2);
    assert_ne!(b.vm.cpu_regs().selector_and_command(), (1, 3));
    load(&b.vm, &file).unwrap();
    assert_eq!(b.vm.ged.lock().unwrap().pending(), EVENT_CPU_HOTPLUG);
    let regs = b.vm.cpu_regs();
    assert_eq!(regs.selector_and_command(), (1, 3));
    assert_eq!(regs.slots(), a.vm.cpu_regs().slots());
    assert!(regs.slots()[1].removing);
}
