//! A millisecond clock from the LAPIC timer (10 ms ticks: KVM's LAPIC
//! runs at 1 GHz on both Bulkhead and QEMU with KVM), with interrupts on.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::{apic, idt, port};

const TICK_VECTOR: u8 = 0x31;
/// 10 ms at 1 GHz / 16.
const TICK_COUNT: u32 = 625_000;
const TICK_MS: u64 = 10;

static TICKS: AtomicU64 = AtomicU64::new(0);

fn on_tick(_vector: u8) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Starts the clock (interrupts stay enabled from here on).
pub fn start() {
    idt::set_handler(TICK_VECTOR, on_tick);
    apic::timer_periodic(TICK_VECTOR, TICK_COUNT);
    port::sti();
}

/// Milliseconds since [`start`] (10 ms resolution).
pub fn now_ms() -> u64 {
    TICKS.load(Ordering::Relaxed) * TICK_MS
}
