//! SCSI sense data: the (key, ASC, ASCQ) triples a drive reports, with
//! QEMU's names (`hw/scsi/utils.c`), and the fixed format (SPC-4 4.5.3)
//! they are sent in.

/// A sense triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

const fn s(key: u8, asc: u8, ascq: u8) -> Sense {
    Sense { key, asc, ascq }
}

/// NO SENSE.
pub const NO_SENSE: Sense = s(0x00, 0x00, 0x00);
/// NOT READY, medium not present.
pub const NO_MEDIUM: Sense = s(0x02, 0x3a, 0x00);
/// NOT READY, medium not present - tray closed.
pub const NO_MEDIUM_TRAY_CLOSED: Sense = s(0x02, 0x3a, 0x01);
/// NOT READY, medium not present - tray open.
pub const NO_MEDIUM_TRAY_OPEN: Sense = s(0x02, 0x3a, 0x02);
/// NOT READY, medium removal prevented.
pub const NOT_READY_REMOVAL_PREVENTED: Sense = s(0x02, 0x53, 0x02);
/// HARDWARE ERROR, internal target failure.
pub const TARGET_FAILURE: Sense = s(0x04, 0x44, 0x00);
/// ILLEGAL REQUEST, parameter list length error.
pub const INVALID_PARAM_LEN: Sense = s(0x05, 0x1a, 0x00);
/// ILLEGAL REQUEST, invalid command operation code.
pub const INVALID_OPCODE: Sense = s(0x05, 0x20, 0x00);
/// ILLEGAL REQUEST, logical block address out of range.
pub const LBA_OUT_OF_RANGE: Sense = s(0x05, 0x21, 0x00);
/// ILLEGAL REQUEST, invalid field in CDB.
pub const INVALID_FIELD: Sense = s(0x05, 0x24, 0x00);
/// ILLEGAL REQUEST, logical unit not supported.
pub const LUN_NOT_SUPPORTED: Sense = s(0x05, 0x25, 0x00);
/// ILLEGAL REQUEST, saving parameters not supported.
pub const SAVING_PARAMS_NOT_SUPPORTED: Sense = s(0x05, 0x39, 0x00);
/// ILLEGAL REQUEST, medium removal prevented.
pub const ILLEGAL_REQ_REMOVAL_PREVENTED: Sense = s(0x05, 0x53, 0x02);
/// UNIT ATTENTION, not ready to ready change, medium may have changed.
pub const MEDIUM_CHANGED: Sense = s(0x06, 0x28, 0x00);
/// UNIT ATTENTION, capacity data has changed.
pub const CAPACITY_CHANGED: Sense = s(0x06, 0x2a, 0x09);
/// UNIT ATTENTION, power on, reset, or bus device reset occurred.
pub const RESET: Sense = s(0x06, 0x29, 0x00);
/// UNIT ATTENTION, medium not present (the first half of a medium change,
/// as QEMU reports it).
pub const UNIT_ATTENTION_NO_MEDIUM: Sense = s(0x06, 0x3a, 0x00);
/// DATA PROTECT, write protected.
pub const WRITE_PROTECTED: Sense = s(0x07, 0x27, 0x00);
/// ABORTED COMMAND, I/O process terminated (a host I/O error).
pub const IO_ERROR: Sense = s(0x0b, 0x00, 0x06);

/// Sense key UNIT ATTENTION.
pub const KEY_UNIT_ATTENTION: u8 = 0x06;

/// Length of fixed-format sense data.
pub const FIXED_LEN: usize = 18;

impl Sense {
    /// The sense in fixed format: response code 0x70 (current error),
    /// additional length 10.
    pub fn fixed(self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }

    /// The NOT READY sense of an empty drive, told apart by its tray.
    pub fn no_medium(tray_open: bool) -> Sense {
        if tray_open {
            NO_MEDIUM_TRAY_OPEN
        } else {
            NO_MEDIUM_TRAY_CLOSED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_places_key_asc_and_ascq_as_spc_says() {
        let b = MEDIUM_CHANGED.fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x06);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x28, 0x00));
        assert_eq!(Sense::no_medium(true), s(2, 0x3a, 2));
        assert_eq!(Sense::no_medium(false), s(2, 0x3a, 1));
    }
}
