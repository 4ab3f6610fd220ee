//! Command descriptor blocks: operation codes, the CDB length each group
//! implies, and the fields the handlers read (big-endian, at fixed
//! offsets). The CDB arrives in a fixed 32-byte field of the virtio-scsi
//! request, so reading a field inside the CDB's length never goes out of
//! bounds; a CDB whose group has no defined length is refused.

use super::sense::{self, Sense};

/// Operation codes handled here.
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0a;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1b;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW: u8 = 0x1e;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2a;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// READ TOC/PMA/ATIP.
    pub const READ_TOC: u8 = 0x43;
    /// GET CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 0x46;
    /// GET EVENT STATUS NOTIFICATION.
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8a;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16) is its action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xa0;
    /// READ(12).
    pub const READ_12: u8 = 0xa8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xaa;
}

/// SERVICE ACTION IN(16)'s READ CAPACITY(16).
pub const SAI_READ_CAPACITY_16: u8 = 0x10;

/// Largest CDB the request carries (`cdb_size` of the config space).
pub const CDB_SIZE: usize = 32;

/// A CDB, at least as long as its group says.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a> {
    bytes: &'a [u8],
}

/// The CDB length of `opcode`'s group, or None for the groups without one
/// (3: reserved/variable length, 6 and 7: vendor specific).
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        3 | 6 | 7 => None,
        // `opcode >> 5` of a u8 is at most 7.
        8..=u8::MAX => None,
    }
}

impl<'a> Cdb<'a> {
    /// The CDB at the start of `bytes`; INVALID OPCODE when its group has
    /// no length or `bytes` is shorter than it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Sense> {
        let op = *bytes.first().ok_or(sense::INVALID_OPCODE)?;
        let len = cdb_len(op).ok_or(sense::INVALID_OPCODE)?;
        let bytes = bytes.get(..len).ok_or(sense::INVALID_OPCODE)?;
        Ok(Cdb { bytes })
    }

    /// The operation code.
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// Byte `i` (0 beyond the CDB).
    pub fn byte(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// `n` bytes big-endian from `at`.
    pub fn be(&self, at: usize, n: usize) -> u64 {
        (at..at + n).fold(0u64, |v, i| (v << 8) | u64::from(self.byte(i)))
    }

    /// The CDB's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// The logical block and block count of a READ or WRITE CDB.
    pub fn rw_range(&self) -> Option<(u64, u64)> {
        match self.opcode() {
            op::READ_6 | op::WRITE_6 => {
                let lba = self.be(1, 3) & 0x1f_ffff;
                // A transfer length of 0 means 256 blocks in READ(6).
                let n = match self.byte(4) {
                    0 => 256,
                    n => u64::from(n),
                };
                Some((lba, n))
            }
            op::READ_10 | op::WRITE_10 => Some((self.be(2, 4), self.be(7, 2))),
            op::READ_12 | op::WRITE_12 => Some((self.be(2, 4), self.be(6, 4))),
            op::READ_16 | op::WRITE_16 => Some((self.be(2, 8), self.be(10, 4))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(b: &[u8]) -> [u8; CDB_SIZE] {
        let mut c = [0u8; CDB_SIZE];
        c[..b.len()].copy_from_slice(b);
        c
    }

    #[test]
    fn read_cdbs_give_lba_and_length_for_each_size() {
        let c = cdb(&[0x28, 0, 0, 0, 1, 2, 0, 0, 3]);
        assert_eq!(Cdb::parse(&c).unwrap().rw_range(), Some((0x102, 3)));
        let c = cdb(&[0xa8, 0, 0, 0, 0, 9, 0, 0, 1, 0]);
        assert_eq!(Cdb::parse(&c).unwrap().rw_range(), Some((9, 256)));
        let c = cdb(&[0x88, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 7]);
        assert_eq!(Cdb::parse(&c).unwrap().rw_range(), Some((0x1_0000_0005, 7)));
        let c = cdb(&[0x08, 0xff, 0, 4, 0]);
        assert_eq!(Cdb::parse(&c).unwrap().rw_range(), Some((0x1f_0004, 256)));
    }

    #[test]
    fn groups_without_a_length_and_short_cdbs_are_invalid_opcodes() {
        for op in [0x60u8, 0x7f, 0xc0, 0xff] {
            assert_eq!(Cdb::parse(&cdb(&[op])).unwrap_err(), sense::INVALID_OPCODE);
        }
        assert_eq!(
            Cdb::parse(&[0x88, 0, 0]).unwrap_err(),
            sense::INVALID_OPCODE
        );
        assert_eq!(Cdb::parse(&[]).unwrap_err(), sense::INVALID_OPCODE);
    }
}
