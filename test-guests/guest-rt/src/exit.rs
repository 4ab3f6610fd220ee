//! Ending a test: the verdict line, the debug-exit port, ACPI power-off and
//! the reset paths.

use crate::acpi::Gas;
use crate::port::{inb, outb};

/// Debug-exit port (isa-debug-exit compatible).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// ACPI sleep control register (FADT SLEEP_CONTROL_REG).
pub const ACPI_SLEEP_CONTROL: u16 = 0x600;
/// ACPI reset register (FADT RESET_REG).
pub const ACPI_RESET_REG: u16 = 0x602;
/// Value written to the ACPI reset register.
pub const ACPI_RESET_VALUE: u8 = 0x0f;
/// i8042 command port.
pub const I8042_COMMAND: u16 = 0x64;
/// SLP_EN | SLP_TYP(5): enter S5 (power off).
pub const SLEEP_S5: u8 = (5 << 2) | (1 << 5);

/// Writes `value` to the debug-exit port; the VMM ends the VM with status
/// `(value << 1) | 1`. Halts if the port does not end the VM.
pub fn debug_exit(value: u8) -> ! {
    outb(DEBUG_EXIT_PORT, value);
    crate::port::halt_forever()
}

/// Prints `VERDICT: PASS <name>` and exits with status 1.
pub fn pass() -> ! {
    crate::println!("VERDICT: PASS {}", crate::guest_name());
    debug_exit(0)
}

/// Prints `VERDICT: FAIL <name>: <why>` and exits with status 3.
pub fn fail(why: core::fmt::Arguments<'_>) -> ! {
    crate::println!("VERDICT: FAIL {}: {}", crate::guest_name(), why);
    debug_exit(1)
}

/// Fails the test with a formatted reason.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { $crate::exit::fail(format_args!($($arg)*)) };
}

/// The ACPI sleep control register: the FADT's SLEEP_CONTROL_REG, or port
/// 0x600 (platform.md) if there is no FADT or it names none.
pub fn sleep_control_reg() -> Gas {
    crate::acpi::fadt()
        .and_then(|f| f.sleep_control)
        .unwrap_or(Gas {
            space: 1,
            address: u64::from(ACPI_SLEEP_CONTROL),
        })
}

/// The ACPI reset register and value: the FADT's RESET_REG/RESET_VALUE, or
/// 0x0f to port 0x602 (platform.md) if there is no FADT or it names none.
pub fn reset_reg() -> (Gas, u8) {
    crate::acpi::fadt().and_then(|f| f.reset).unwrap_or((
        Gas {
            space: 1,
            address: u64::from(ACPI_RESET_REG),
        },
        ACPI_RESET_VALUE,
    ))
}

/// Requests S5 through the ACPI sleep control register; returns the
/// register used (for reports) if the machine is still running.
pub fn acpi_poweroff() -> Gas {
    let reg = sleep_control_reg();
    reg.write8(SLEEP_S5);
    reg
}

/// Requests a reset through the i8042 controller (pulse the reset line).
pub fn i8042_reset() {
    outb(I8042_COMMAND, 0xfe);
}

/// Busy-waits for roughly `n` port reads (a VM exit each), to give an
/// asynchronous request (reset, power-off) time to take effect.
pub fn settle(n: u32) {
    for _ in 0..n {
        let _ = inb(I8042_COMMAND);
    }
}
