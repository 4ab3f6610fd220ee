//! Polled driver for the 16550 UART at 0x3f8 (COM1, GSI 4) and the
//! `print!`/`println!` macros. Output from several CPUs is serialized by a
//! spin lock so lines do not interleave.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::port::{inb, outb, pause};

/// Base I/O port of COM1.
pub const COM1: u16 = 0x3f8;
/// GSI (IOAPIC pin) of COM1.
pub const COM1_GSI: u8 = 4;

const THR: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Programs COM1 for 115200 8N1 with FIFOs on and interrupts off.
pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x03);
    outb(COM1 + FCR, 0x07);
    outb(COM1 + MCR, 0x0b); // DTR | RTS | OUT2 (OUT2 gates the IRQ line)
}

/// Enables the "received data available" interrupt.
pub fn enable_rx_interrupt() {
    outb(COM1 + IER, 0x01);
}

/// Writes one byte, waiting for the transmitter.
pub fn write_byte(b: u8) {
    while inb(COM1 + LSR) & LSR_THR_EMPTY == 0 {
        pause();
    }
    outb(COM1 + THR, b);
}

/// Returns a received byte, if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    if inb(COM1 + LSR) & LSR_DATA_READY != 0 {
        Some(inb(COM1 + THR))
    } else {
        None
    }
}

/// Writer used by the print macros; holds the output lock while alive.
pub struct Writer(());

impl Writer {
    /// Takes the output lock.
    pub fn lock() -> Self {
        while LOCK.swap(true, Ordering::Acquire) {
            pause();
        }
        Writer(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                write_byte(b'\r');
            }
            write_byte(b);
        }
        Ok(())
    }
}

/// Releases the output lock without a guard (panic path on a CPU that may
/// hold it).
pub fn force_unlock() {
    LOCK.store(false, Ordering::Release);
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut w = Writer::lock();
    let _ = fmt::write(&mut w, args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to COM1 (CR LF line ends).
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
