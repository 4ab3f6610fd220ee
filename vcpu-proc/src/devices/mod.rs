//! Platform devices: the 16550 UART, the i8042 reset line, the debug-exit
//! port, the ACPI sleep/reset registers and the Generic Event Device, plus
//! the interrupt line they raise.

pub mod acpi_pm;
pub mod debug_exit;
pub mod ged;
pub mod i8042;
pub mod irq;
pub mod serial;

/// A machine-level action a guest's device access asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAction {
    /// Reset the machine (i8042, ACPI reset register, triple fault).
    Reset,
    /// Power off (ACPI S5).
    Shutdown,
    /// End the VM with this code (debug-exit port).
    DebugExit(u32),
}

/// Little-endian value of a 1/2/4/8-byte access.
pub fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}
