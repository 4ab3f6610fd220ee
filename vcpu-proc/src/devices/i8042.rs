//! The minimum of an i8042 keyboard controller: status reads say "no data",
//! and the CPU-reset command (0xfe written to port 0x64) resets the machine.

use crate::bus::BusDevice;
use crate::devices::GuestAction;

const CMD_RESET_CPU: u8 = 0xfe;
/// Offset of the command/status port from the data port (0x64 - 0x60).
pub const CMD_OFFSET: u64 = 4;

/// The i8042 at ports 0x60..=0x64.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction> {
        (offset == CMD_OFFSET && data.first() == Some(&CMD_RESET_CPU)).then_some(GuestAction::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_on_port_64_resets() {
        assert_eq!(I8042.write(CMD_OFFSET, &[0xfe]), Some(GuestAction::Reset));
    }

    #[test]
    fn other_writes_do_nothing() {
        assert_eq!(I8042.write(0, &[0xfe]), None);
        assert_eq!(I8042.write(CMD_OFFSET, &[0xd1]), None);
    }
}
