//! The debug-exit port (like QEMU's isa-debug-exit): any write of V ends the
//! VM with code V.

use crate::bus::BusDevice;
use crate::devices::{le_value, GuestAction};

/// The debug-exit device.
#[derive(Debug, Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<GuestAction> {
        Some(GuestAction::DebugExit(le_value(data) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_of_any_width_exits_with_its_value() {
        assert_eq!(DebugExit.write(0, &[3]), Some(GuestAction::DebugExit(3)));
        assert_eq!(
            DebugExit.write(0, &0x1234_5678u32.to_le_bytes()),
            Some(GuestAction::DebugExit(0x1234_5678))
        );
    }
}
