//! `ticker`: a guest that keeps counting for a few seconds, so it can be
//! stopped, saved and restored mid-way (`xen-save-devices-state` /
//! `xen-load-devices-state`) and prove it went on where it was.
//!
//! The LAPIC timer ticks every 10 ms (periodic); the PIT's channel 0 runs
//! at 100 Hz through the IOAPIC as a second clock. Each tick the guest
//! checks that a 512-byte buffer still holds the previous tick's pattern and
//! writes the next one (RAM and state must arrive together); every 25
//! ticks it prints `tick N pit M`. After 300 ticks it checks the TSC only
//! went forward, that the PIT kept running, and passes. Restored, its
//! output goes on with the next `tick` line, without the boot banner.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guest_rt::apic::{self, ioapic_route, lapic_id, Trigger};
use guest_rt::port::{outb, rdtsc, wait_for_interrupt};
use guest_rt::{acpi, fail, idt, println};

guest_rt::guest!("ticker", main);

const LAPIC_VECTOR: u8 = 0x30;
const PIT_VECTOR: u8 = 0x31;
const LAPIC_COUNT: u32 = 625_000;
const PIT_DIVISOR: u16 = 11_932;
const TICKS: u32 = 300;
const PRINT_EVERY: u32 = 25;
const WORDS: usize = 64;

static LAPIC_TICKS: AtomicU32 = AtomicU32::new(0);
static PIT_TICKS: AtomicU32 = AtomicU32::new(0);
static mut BUFFER: [u64; WORDS] = [0; WORDS];

fn on_lapic_timer(_vector: u8) {
    LAPIC_TICKS.fetch_add(1, Ordering::SeqCst);
}

fn on_pit(_vector: u8) {
    PIT_TICKS.fetch_add(1, Ordering::SeqCst);
}

fn pattern(tick: u32, i: usize) -> u64 {
    u64::from(tick).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0x0101_0101)
}

/// Checks the buffer holds `tick - 1`'s pattern, then writes `tick`'s.
fn rewrite(tick: u32) {
    let base = core::ptr::addr_of_mut!(BUFFER) as *mut u64;
    for i in 0..WORDS {
        // SAFETY: `i < WORDS`, inside the static buffer only this loop uses.
        let p = unsafe { base.add(i) };
        if tick > 0 {
            // SAFETY: as above.
            let got = unsafe { core::ptr::read_volatile(p) };
            if got != pattern(tick - 1, i) {
                fail!("tick {}: word {} is {:#x}, not the last tick's pattern", tick, i, got);
            }
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p, pattern(tick, i)) };
    }
}

fn main() -> ! {
    let machine = acpi::discover();
    idt::set_handler(LAPIC_VECTOR, on_lapic_timer);
    idt::set_handler(PIT_VECTOR, on_pit);
    let pin = match machine.irq0_gsi {
        Some(gsi) if gsi < 24 => gsi as u8,
        _ => 2,
    };
    ioapic_route(pin, PIT_VECTOR, Trigger::Edge, lapic_id());
    outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2
    outb(0x40, (PIT_DIVISOR & 0xff) as u8);
    outb(0x40, (PIT_DIVISOR >> 8) as u8);
    apic::timer_periodic(LAPIC_VECTOR, LAPIC_COUNT);
    println!("ticker: counting to {}", TICKS);
    let mut done = 0u32;
    let mut last_tsc = rdtsc();
    rewrite(0);
    while done < TICKS {
        wait_for_interrupt();
        let now = LAPIC_TICKS.load(Ordering::SeqCst).min(TICKS);
        while done < now {
            done += 1;
            rewrite(done);
            if done % PRINT_EVERY == 0 {
                println!("tick {} pit {}", done, PIT_TICKS.load(Ordering::SeqCst));
            }
        }
        let tsc = rdtsc();
        if tsc < last_tsc {
            fail!("the TSC went back from {} to {}", last_tsc, tsc);
        }
        last_tsc = tsc;
    }
    apic::timer_stop();
    let pit = PIT_TICKS.load(Ordering::SeqCst);
    if pit < TICKS / 4 {
        fail!("the PIT ticked {} times during {} LAPIC ticks", pit, TICKS);
    }
    println!("ticker: {} ticks, pit {}", TICKS, pit);
    guest_rt::exit::pass()
}
