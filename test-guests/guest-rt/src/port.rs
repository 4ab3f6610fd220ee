//! x86 port I/O, TSC and small CPU helpers.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the guest owns
    // the whole machine, so any port may be written.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`; reads have no memory effects.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the TSC.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: clearing IF has no memory effects.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Enables interrupts.
pub fn sti() {
    // SAFETY: the IDT is loaded before any interrupt source is enabled.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Enables interrupts and halts until one arrives (atomically: `sti; hlt`),
/// then disables them again.
pub fn wait_for_interrupt() {
    // SAFETY: `sti` takes effect after `hlt`, so an interrupt pending now
    // wakes the `hlt` instead of being lost; handlers preserve all registers.
    unsafe { asm!("sti", "hlt", "cli") };
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting with interrupts off only stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}
