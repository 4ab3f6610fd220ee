//! `shutdown`: proves the ACPI power button reaches the guest and the guest
//! can power the machine off.
//!
//! The guest routes the Generic Event Device's interrupt through the IOAPIC
//! (Bulkhead: GED at 0xd0100000, GSI 13), prints `waiting for power button`
//! and halts. On the interrupt it reads the GED event register (read to
//! clear; bit 1 = power button), prints `power button pressed` and writes
//! SLP_EN | SLP_TYP(5) to the ACPI sleep control register (the FADT's, else
//! port 0x600). There is no debug exit: the VM ends by powering off. If the
//! machine is still running afterwards the test fails.
//!
//! Under QEMU's microvm (recognised by its FADT sleep control register at
//! MMIO 0xfea00200) the GED is at 0xfea00000 on GSI 9 and its event register
//! is 32 bits wide.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guest_rt::apic::{ioapic_route_at, lapic_id, Trigger, IOAPIC_BASE};
use guest_rt::{acpi, exit, fail, idt, port, println};

guest_rt::guest!("shutdown", main);

const GED_VECTOR: u8 = 0x40;
const POWER_BUTTON: u32 = 1 << 1;
/// Port reads to wait for the power-off to take effect.
const SETTLE_READS: u32 = 20_000;

/// Where the Generic Event Device is.
struct Ged {
    address: usize,
    gsi: u32,
    wide: bool,
}

const BULKHEAD_GED: Ged = Ged {
    address: 0xd010_0000,
    gsi: 13,
    wide: false,
};
const QEMU_MICROVM_GED: Ged = Ged {
    address: 0xfea0_0000,
    gsi: 9,
    wide: true,
};
const QEMU_MICROVM_SLEEP_CONTROL: u64 = 0xfea0_0200;

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

fn on_ged(_vector: u8) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

fn read_event(ged: &Ged) -> u32 {
    if ged.wide {
        // SAFETY: the GED event register is identity-mapped MMIO.
        unsafe { core::ptr::read_volatile(ged.address as *const u32) }
    } else {
        // SAFETY: as above.
        u32::from(unsafe { core::ptr::read_volatile(ged.address as *const u8) })
    }
}

fn main() -> ! {
    let machine = acpi::discover();
    let ioapics = &machine.ioapics[..machine.ioapic_count];
    let sleep = exit::sleep_control_reg();
    let qemu = sleep.space == 0 && sleep.address == QEMU_MICROVM_SLEEP_CONTROL;
    let ged = if qemu { QEMU_MICROVM_GED } else { BULKHEAD_GED };
    let (ioapic, gsi_base) = ioapics
        .iter()
        .copied()
        .find(|&(_, base)| ged.gsi >= base && ged.gsi < base + 24)
        .unwrap_or((IOAPIC_BASE as u32, 0));
    println!(
        "GED at {:#x}, GSI {} (IOAPIC {:#x} pin {})",
        ged.address,
        ged.gsi,
        ioapic,
        ged.gsi - gsi_base
    );
    idt::set_handler(GED_VECTOR, on_ged);
    ioapic_route_at(
        ioapic as usize,
        (ged.gsi - gsi_base) as u8,
        GED_VECTOR,
        Trigger::Edge,
        lapic_id(),
    );
    println!("waiting for power button");
    let mut seen = 0;
    loop {
        port::wait_for_interrupt();
        let now = INTERRUPTS.load(Ordering::SeqCst);
        if now == seen {
            continue;
        }
        seen = now;
        let event = read_event(&ged);
        if event & POWER_BUTTON == 0 {
            println!(
                "GED interrupt with event {:#x}, not the power button",
                event
            );
            continue;
        }
        println!("power button pressed");
        println!("powering off via {}", sleep);
        sleep.write8(exit::SLEEP_S5);
        exit::settle(SETTLE_READS);
        fail!("still running after writing S5 to the sleep control register");
    }
}
