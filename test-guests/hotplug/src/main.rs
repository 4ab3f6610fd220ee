//! `hotplug`: serves CPU hotplug the way an OS's ACPI code does, by
//! polling QEMU's CPU hotplug register block (I/O port 0x0cd8, see
//! docs/platform.md) instead of running the DSDT's AML.
//!
//! The boot CPU checks that the modern interface answers (command data 2
//! reads 0 after selecting CPU 0 and command 0), counts the possible and
//! present CPUs, then loops: "next CPU with an event" (command 0); for an
//! insert event it clears the event, reads the CPU's APIC id (command 3)
//! and starts it with INIT-SIPI-SIPI; the new CPU prints
//! `cpu slot N online (apic id X)`, and the boot CPU reports `_OST`
//! (device check, success) through the OST registers. For a remove event it
//! clears the event
//! and ejects the (halted) CPU, then checks the slot reads as empty and
//! prints `cpu slot N ejected`. It runs until the VM ends.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicUsize, Ordering};

use guest_rt::{apic, fail, port, println, smp};

guest_rt::guest!("hotplug", main);

/// The register block.
const BASE: u16 = 0x0cd8;
/// Flags: enabled, insert event, remove event (read); clear insert,
/// clear remove, eject (write).
const FLAGS: u16 = BASE + 4;
/// Command.
const COMMAND: u16 = BASE + 5;
/// Command data.
const DATA: u16 = BASE + 8;

const ENABLED: u8 = 1 << 0;
const INSERT: u8 = 1 << 1;
const REMOVE: u8 = 1 << 2;
const EJECT: u8 = 1 << 3;

const CMD_NEXT_EVENT: u8 = 0;
const CMD_OST_EVENT: u8 = 1;
const CMD_OST_STATUS: u8 = 2;
const CMD_CPU_ID: u8 = 3;
/// ACPI `_OST` source event: device check (the insert notification).
const OST_DEVICE_CHECK: u32 = 1;
/// ACPI `_OST` status: success.
const OST_SUCCESS: u32 = 0;

/// Polls to wait per SIPI (each a LAPIC read, i.e. one VM exit).
const SPINS_PER_SIPI: u32 = 200_000;
/// `pause`s between two polls of the registers (they cost VM exits).
const POLL_GAP: u32 = 20_000;

/// Slot + 1 of the last CPU that reported in.
static ONLINE: AtomicUsize = AtomicUsize::new(0);

fn select(slot: u32) {
    port::outl(BASE, slot);
}

fn ap_main(slot: usize, apic_id: u8) -> ! {
    println!("cpu slot {} online (apic id {})", slot, apic_id);
    ONLINE.store(slot + 1, Ordering::SeqCst);
    port::halt_forever()
}

/// (possible, present) CPUs, by the specification's enumeration.
fn enumerate() -> (u32, u32) {
    let (mut possible, mut present) = (0, 0);
    select(0);
    port::outb(COMMAND, CMD_NEXT_EVENT);
    loop {
        if port::inb(FLAGS) & ENABLED != 0 {
            present += 1;
        }
        possible += 1;
        select(possible);
        if port::inl(DATA) == 0 {
            break;
        }
    }
    select(0);
    (possible, present)
}

fn plugged(slot: u32) {
    port::outb(COMMAND, CMD_CPU_ID);
    let apic_id = port::inl(DATA);
    port::outb(FLAGS, INSERT);
    println!("cpu slot {} inserted (apic id {})", slot, apic_id);
    let index = slot as usize;
    if index == 0 || index >= guest_rt::entry::MAX_CPUS || apic_id > 254 {
        fail!("cannot start cpu slot {} (apic id {})", slot, apic_id);
    }
    ONLINE.store(0, Ordering::SeqCst);
    if !smp::start_ap(index, apic_id as u8, ap_main, SPINS_PER_SIPI) {
        fail!("cpu slot {} (apic id {}) did not start", slot, apic_id);
    }
    while ONLINE.load(Ordering::SeqCst) != index + 1 {
        port::pause();
    }
    // What the DSDT's `_OST` does after a device check: OST event, then
    // OST status (QEMU's ACPI_DEVICE_OST).
    select(slot);
    port::outb(COMMAND, CMD_OST_EVENT);
    port::outl(DATA, OST_DEVICE_CHECK);
    port::outb(COMMAND, CMD_OST_STATUS);
    port::outl(DATA, OST_SUCCESS);
    println!("cpu slot {} _OST: device check, success", slot);
}

fn eject_requested(slot: u32) {
    port::outb(FLAGS, REMOVE);
    println!("cpu slot {} eject requested", slot);
    // The CPU sits in `hlt` with interrupts off: offline, as an OS would
    // leave it before `_EJ0`.
    select(slot);
    port::outb(FLAGS, EJECT);
    select(slot);
    if port::inb(FLAGS) & ENABLED != 0 {
        fail!("cpu slot {} still present after its eject", slot);
    }
    println!("cpu slot {} ejected", slot);
}

fn main() -> ! {
    select(0);
    port::outb(COMMAND, CMD_NEXT_EVENT);
    if port::inl(BASE) != 0 {
        fail!("no modern ACPI CPU hotplug interface at port {:#x}", BASE);
    }
    let (possible, present) = enumerate();
    println!(
        "{} possible cpus, {} present; boot cpu apic id {}; waiting for hotplug events",
        possible,
        present,
        apic::lapic_id()
    );
    loop {
        select(0);
        port::outb(COMMAND, CMD_NEXT_EVENT);
        let flags = port::inb(FLAGS);
        if flags & (INSERT | REMOVE) == 0 {
            for _ in 0..POLL_GAP {
                port::pause();
            }
            continue;
        }
        let slot = port::inl(DATA);
        if flags & INSERT != 0 {
            plugged(slot);
        } else {
            eject_requested(slot);
        }
    }
}
