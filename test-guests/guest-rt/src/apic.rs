//! Local APIC (xAPIC MMIO at 0xfee00000) and IOAPIC (0xfec00000) access.

use crate::port::outb;

/// LAPIC MMIO base.
pub const LAPIC_BASE: usize = 0xfee0_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_BASE: usize = 0xfec0_0000;

const ID: usize = 0x20;
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const TPR: usize = 0x80;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const LVT_ERROR: usize = 0x370;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const ICR_PENDING: u32 = 1 << 12;

/// Reads a LAPIC register.
pub fn lapic_read(reg: usize) -> u32 {
    // SAFETY: the LAPIC page is identity-mapped and `reg` is a register
    // offset inside it.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

/// Writes a LAPIC register.
pub fn lapic_write(reg: usize, value: u32) {
    // SAFETY: as in `lapic_read`.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) };
}

/// Enables the calling CPU's LAPIC (spurious vector 0xff), accepts all
/// priorities and masks LINT0/LINT1/timer/error. Also masks the legacy PICs
/// so that an uninitialised 8259 cannot inject ExtINT vectors.
pub fn lapic_init() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic_write(SVR, 0x100 | u32::from(crate::idt::SPURIOUS_VECTOR));
    lapic_write(TPR, 0);
    lapic_write(LVT_LINT0, LVT_MASKED);
    lapic_write(LVT_LINT1, LVT_MASKED);
    lapic_write(LVT_TIMER, LVT_MASKED);
    lapic_write(LVT_ERROR, LVT_MASKED);
}

/// The calling CPU's APIC ID.
pub fn lapic_id() -> u8 {
    (lapic_read(ID) >> 24) as u8
}

/// Signals end of interrupt.
pub fn eoi() {
    lapic_write(EOI, 0);
}

/// Starts the LAPIC timer in periodic mode: `count` ticks of the bus clock
/// divided by 16 per interrupt on `vector`.
pub fn timer_periodic(vector: u8, count: u32) {
    lapic_write(TIMER_DIVIDE, 0x3); // divide by 16
    lapic_write(LVT_TIMER, u32::from(vector) | (1 << 17));
    lapic_write(TIMER_INITIAL, count);
}

/// Stops the LAPIC timer.
pub fn timer_stop() {
    lapic_write(LVT_TIMER, LVT_MASKED);
    lapic_write(TIMER_INITIAL, 0);
}

/// Current count of the LAPIC timer.
pub fn timer_current() -> u32 {
    lapic_read(TIMER_CURRENT)
}

/// Sends an inter-processor interrupt (raw ICR value) to `apic_id` and waits
/// until the LAPIC has accepted it.
pub fn send_ipi(apic_id: u8, icr_low: u32) {
    lapic_write(ICR_HIGH, u32::from(apic_id) << 24);
    lapic_write(ICR_LOW, icr_low);
    while lapic_read(ICR_LOW) & ICR_PENDING != 0 {
        crate::port::pause();
    }
}

fn ioapic_write_at(base: usize, reg: u32, value: u32) {
    // SAFETY: IOREGSEL/IOWIN are identity-mapped IOAPIC registers at `base`
    // (the platform's IOAPIC or one the MADT lists).
    unsafe { core::ptr::write_volatile(base as *mut u32, reg) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile((base + 0x10) as *mut u32, value) };
}

fn ioapic_write(reg: u32, value: u32) {
    ioapic_write_at(IOAPIC_BASE, reg, value);
}

fn ioapic_read(reg: u32) -> u32 {
    // SAFETY: IOREGSEL/IOWIN are identity-mapped IOAPIC registers.
    unsafe { core::ptr::write_volatile(IOAPIC_BASE as *mut u32, reg) };
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile((IOAPIC_BASE + 0x10) as *const u32) }
}

/// Number of IOAPIC redirection entries.
pub fn ioapic_pins() -> u32 {
    ((ioapic_read(1) >> 16) & 0xff) + 1
}

/// Trigger mode of an IOAPIC pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge triggered, active high (ISA style).
    Edge,
    /// Level triggered, active high.
    Level,
}

/// Routes IOAPIC `pin` to `vector` on APIC ID `dest`, fixed delivery,
/// active high, unmasked.
pub fn ioapic_route(pin: u8, vector: u8, trigger: Trigger, dest: u8) {
    ioapic_route_at(IOAPIC_BASE, pin, vector, trigger, dest);
}

/// Like [`ioapic_route`] for the IOAPIC at `base`.
pub fn ioapic_route_at(base: usize, pin: u8, vector: u8, trigger: Trigger, dest: u8) {
    let reg = 0x10 + 2 * u32::from(pin);
    let mut low = u32::from(vector);
    match trigger {
        Trigger::Edge => {}
        Trigger::Level => low |= 1 << 15,
    }
    ioapic_write_at(base, reg, LVT_MASKED);
    ioapic_write_at(base, reg + 1, u32::from(dest) << 24);
    ioapic_write_at(base, reg, low);
}

/// Masks IOAPIC `pin`.
pub fn ioapic_mask(pin: u8) {
    ioapic_write(0x10 + 2 * u32::from(pin), LVT_MASKED);
}
