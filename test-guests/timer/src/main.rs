//! `timer`: proves timer interrupts reach the guest.
//!
//! 1. The LAPIC timer, periodic (divide 16, 625000 counts: 10 ms with KVM's
//!    1 GHz APIC bus), must deliver 10 interrupts; the TSC must advance
//!    between each.
//! 2. If a PIT answers at ports 0x40-0x43, channel 0 is programmed at 100 Hz
//!    (mode 2) and 10 IRQ 0 interrupts must arrive through the IOAPIC. The
//!    pin is taken from the MADT interrupt source override for IRQ 0 if
//!    there is one; otherwise pins 0 and 2 are both armed and the report
//!    says which one fired. The LAPIC timer is the watchdog: fewer than 10
//!    PIT interrupts within 100 LAPIC ticks is a failure.
//!
//! TSC rates derived from both timers are printed for information only.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::apic::{self, ioapic_mask, ioapic_route, lapic_id, Trigger};
use guest_rt::port::{inb, outb, rdtsc, wait_for_interrupt};
use guest_rt::{acpi, fail, idt, println};

guest_rt::guest!("timer", main);

const LAPIC_VECTOR: u8 = 0x30;
const PIT_VECTOR_PIN0: u8 = 0x31;
const PIT_VECTOR_PIN2: u8 = 0x32;
const PIT_VECTOR_OVERRIDE: u8 = 0x33;
const TICKS: usize = 10;
const LAPIC_COUNT: u32 = 625_000;
const LAPIC_PERIOD_US: u64 = 10_000;
const PIT_HZ: u32 = 1_193_182;
const PIT_DIVISOR: u16 = 11_932;
const WATCHDOG_LAPIC_TICKS: u32 = 100;

static LAPIC_TICKS: AtomicU32 = AtomicU32::new(0);
static PIT_TICKS: AtomicU32 = AtomicU32::new(0);
static PIT_VECTOR_SEEN: AtomicU32 = AtomicU32::new(0);
static LAPIC_TSC: [AtomicU64; TICKS] = [const { AtomicU64::new(0) }; TICKS];
static PIT_TSC: [AtomicU64; TICKS] = [const { AtomicU64::new(0) }; TICKS];

fn on_lapic_timer(_vector: u8) {
    let n = LAPIC_TICKS.fetch_add(1, Ordering::SeqCst) as usize;
    if n < TICKS {
        LAPIC_TSC[n].store(rdtsc(), Ordering::SeqCst);
    }
}

fn on_pit(vector: u8) {
    let n = PIT_TICKS.fetch_add(1, Ordering::SeqCst) as usize;
    PIT_VECTOR_SEEN.fetch_or(1 << (vector - PIT_VECTOR_PIN0), Ordering::SeqCst);
    if n < TICKS {
        PIT_TSC[n].store(rdtsc(), Ordering::SeqCst);
    }
}

/// Checks that the stamps increase and returns (first, last) TSC.
fn check_stamps(what: &str, stamps: &[AtomicU64; TICKS]) -> (u64, u64) {
    let mut prev = 0u64;
    for (i, s) in stamps.iter().enumerate() {
        let t = s.load(Ordering::SeqCst);
        if i > 0 && t <= prev {
            fail!(
                "{}: TSC did not advance between interrupts {} and {}",
                what,
                i - 1,
                i
            );
        }
        prev = t;
    }
    (stamps[0].load(Ordering::SeqCst), prev)
}

fn pit_present() -> bool {
    outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2
    outb(0x40, (PIT_DIVISOR & 0xff) as u8);
    outb(0x40, (PIT_DIVISOR >> 8) as u8);
    outb(0x43, 0x00); // latch channel 0
    let lo = inb(0x40);
    let hi = inb(0x40);
    let count = u16::from(lo) | u16::from(hi) << 8;
    count != 0xffff && count <= PIT_DIVISOR
}

fn pit_stop() {
    outb(0x43, 0x30); // channel 0, mode 0 (one shot), no reload
    outb(0x40, 0);
    outb(0x40, 0);
}

fn main() -> ! {
    let machine = acpi::discover();
    let me = lapic_id();

    idt::set_handler(LAPIC_VECTOR, on_lapic_timer);
    println!("lapic timer: periodic, divide 16, count {}", LAPIC_COUNT);
    apic::timer_periodic(LAPIC_VECTOR, LAPIC_COUNT);
    while (LAPIC_TICKS.load(Ordering::SeqCst) as usize) < TICKS {
        wait_for_interrupt();
    }
    let (first, last) = check_stamps("lapic timer", &LAPIC_TSC);
    let delta = last - first;
    println!(
        "lapic timer: {} interrupts, tsc delta {} over {} periods (~{} MHz if the APIC bus is 1 GHz)",
        TICKS,
        delta,
        TICKS - 1,
        delta / ((TICKS as u64 - 1) * LAPIC_PERIOD_US)
    );

    if pit_present() {
        for v in [PIT_VECTOR_PIN0, PIT_VECTOR_PIN2, PIT_VECTOR_OVERRIDE] {
            idt::set_handler(v, on_pit);
        }
        let pins: &[(u8, u8)] = match machine.irq0_gsi {
            Some(gsi) if gsi < 24 => {
                println!("pit: MADT overrides IRQ 0 to GSI {}", gsi);
                &[(gsi as u8, PIT_VECTOR_OVERRIDE)]
            }
            _ => {
                println!("pit: no IRQ 0 override, arming IOAPIC pins 0 and 2");
                &[(0, PIT_VECTOR_PIN0), (2, PIT_VECTOR_PIN2)]
            }
        };
        for &(pin, vector) in pins {
            ioapic_route(pin, vector, Trigger::Edge, me);
        }
        println!("pit: channel 0 at {} Hz", PIT_HZ / u32::from(PIT_DIVISOR));
        let start = LAPIC_TICKS.load(Ordering::SeqCst);
        while (PIT_TICKS.load(Ordering::SeqCst) as usize) < TICKS {
            if LAPIC_TICKS.load(Ordering::SeqCst) - start > WATCHDOG_LAPIC_TICKS {
                fail!(
                    "pit: only {} interrupts during {} lapic timer periods",
                    PIT_TICKS.load(Ordering::SeqCst),
                    WATCHDOG_LAPIC_TICKS
                );
            }
            wait_for_interrupt();
        }
        pit_stop();
        for &(pin, _) in pins {
            ioapic_mask(pin);
        }
        let (first, last) = check_stamps("pit", &PIT_TSC);
        let delta = last - first;
        let seen = PIT_VECTOR_SEEN.load(Ordering::SeqCst);
        let via = match (seen & 1 != 0, seen & 2 != 0, seen & 4 != 0) {
            (_, _, true) => "the overridden GSI",
            (true, false, false) => "IOAPIC pin 0",
            (false, true, false) => "IOAPIC pin 2",
            _ => "IOAPIC pins 0 and 2",
        };
        let period_ns = u64::from(PIT_DIVISOR) * 1_000_000_000 / u64::from(PIT_HZ);
        println!(
            "pit: {} interrupts via {}, tsc delta {} (~{} MHz)",
            TICKS,
            via,
            delta,
            delta * 1000 / ((TICKS as u64 - 1) * period_ns)
        );
    } else {
        println!("pit: not present");
    }
    apic::timer_stop();
    guest_rt::exit::pass()
}
