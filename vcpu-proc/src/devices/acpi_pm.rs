//! The hardware-reduced ACPI registers: sleep control (0x600), sleep status
//! (0x601) and reset (0x602), as the FADT describes them.

use crate::bus::BusDevice;
use crate::devices::GuestAction;
use crate::layout::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP};

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// Offset of the sleep status register.
pub const STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;

/// The ACPI sleep/reset registers at ports 0x600..=0x602.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction> {
        let v = *data.first()?;
        match offset {
            0 => {
                let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                (v & SLP_EN != 0 && typ == ACPI_S5_SLP_TYP).then_some(GuestAction::Shutdown)
            }
            RESET_OFFSET => (v == ACPI_RESET_VALUE).then_some(GuestAction::Reset),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        assert_eq!(
            AcpiPm.write(0, &[(5 << 2) | 0x20]),
            Some(GuestAction::Shutdown)
        );
    }

    #[test]
    fn sleep_without_slp_en_or_other_state_is_ignored() {
        assert_eq!(AcpiPm.write(0, &[5 << 2]), None);
        assert_eq!(AcpiPm.write(0, &[(3 << 2) | 0x20]), None);
    }

    #[test]
    fn reset_register_resets_only_with_its_value() {
        assert_eq!(
            AcpiPm.write(RESET_OFFSET, &[0x0f]),
            Some(GuestAction::Reset)
        );
        assert_eq!(AcpiPm.write(RESET_OFFSET, &[0x06]), None);
    }
}
