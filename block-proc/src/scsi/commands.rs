//! Running one CDB on one logical unit: the unit attention check, the
//! dispatch by operation code, and the SPC commands every unit has (TEST
//! UNIT READY, INQUIRY with its VPD pages, REQUEST SENSE). The block
//! commands are in [`super::sbc`], the MMC ones in [`super::mmc`]; REPORT
//! LUNS is the target's ([`super::target`]).

use vm_memory::VolatileSlice;

use super::cdb::{op, Cdb};
use super::lun::Lun;
use super::sense::{self, Sense};
use super::{mmc, sbc};
use crate::block::iobuf;
use crate::virtio_blk::IoFailure;

/// SCSI status GOOD.
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// The data buffers of a command (the guest's, or a test's).
pub struct Io<'a, 'm> {
    /// Device-writable data (data-in).
    pub data_in: &'a [VolatileSlice<'m>],
    /// Device-readable data (data-out).
    pub data_out: &'a [VolatileSlice<'m>],
}

impl Io<'_, '_> {
    /// Bytes of data-in room.
    pub fn in_len(&self) -> usize {
        iobuf::total_len(self.data_in)
    }

    /// Answer with `data`, cut to the CDB's allocation length `alloc` and
    /// the room the guest gave.
    pub fn reply(&self, data: &[u8], alloc: u64) -> Outcome {
        let n = data
            .len()
            .min(usize::try_from(alloc).unwrap_or(usize::MAX))
            .min(self.in_len());
        iobuf::scatter(self.data_in, &data[..n]);
        Outcome::Good { data_in: n }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD, with this many bytes of data-in written.
    Good {
        /// Bytes written to the data-in buffers.
        data_in: usize,
    },
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// CHECK CONDITION because the host I/O failed.
    IoError(IoFailure),
    /// The command transfers more than the guest's buffers hold
    /// (virtio-scsi's OVERRUN response; nothing was run).
    Overrun,
}

impl From<Sense> for Outcome {
    fn from(s: Sense) -> Self {
        Outcome::Check(s)
    }
}

/// Run `cdb` (the request's whole CDB field) on `lun`.
pub fn execute(lun: &Lun, cdb: &[u8], io: &Io<'_, '_>) -> Outcome {
    let cdb = match Cdb::parse(cdb) {
        Ok(c) => c,
        Err(s) => return s.into(),
    };
    if let Some(ua) = lun.take_unit_attention(cdb.opcode()) {
        return ua.into();
    }
    match run(lun, &cdb, io) {
        Ok(o) => o,
        Err(s) => s.into(),
    }
}

fn run(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    match cdb.opcode() {
        op::TEST_UNIT_READY => lun.ready().map(|_| Outcome::Good { data_in: 0 }),
        op::INQUIRY => inquiry(lun, cdb, io),
        op::REQUEST_SENSE => request_sense(lun, cdb, io),
        op::READ_CAPACITY_10 => sbc::read_capacity_10(lun, cdb, io),
        op::SERVICE_ACTION_IN_16 => sbc::service_action_in(lun, cdb, io),
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => {
            sbc::read_write(lun, cdb, io, false)
        }
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            sbc::read_write(lun, cdb, io, true)
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => sbc::synchronize_cache(lun),
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => sbc::mode_sense(lun, cdb, io),
        op::START_STOP_UNIT => mmc::start_stop_unit(lun, cdb),
        op::PREVENT_ALLOW => mmc::prevent_allow(lun, cdb),
        // On a disk QEMU answers these two with 05/24/00 (its handlers
        // refuse the field, not the opcode).
        op::GET_CONFIGURATION | op::GET_EVENT_STATUS_NOTIFICATION if !lun.is_cd() => {
            Err(sense::INVALID_FIELD)
        }
        op::GET_CONFIGURATION => mmc::get_configuration(lun, cdb, io),
        op::GET_EVENT_STATUS_NOTIFICATION => mmc::event_status(lun, cdb, io),
        op::READ_TOC if lun.is_cd() => mmc::read_toc(lun, cdb, io),
        // REPORT LUNS is answered by the target before a LUN is chosen.
        _ => Err(sense::INVALID_OPCODE),
    }
}

/// The peripheral device type: 5 (CD/DVD) or 0 (direct access).
pub fn device_type(lun: &Lun) -> u8 {
    if lun.is_cd() {
        0x05
    } else {
        0x00
    }
}

/// Standard INQUIRY data length we return.
const INQUIRY_LEN: usize = 36;

fn inquiry(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    let alloc = cdb.be(3, 2);
    let evpd = cdb.byte(1) & 1 != 0;
    let page = cdb.byte(2);
    if !evpd {
        if page != 0 {
            return Err(sense::INVALID_FIELD);
        }
        return Ok(io.reply(&standard_inquiry(lun), alloc));
    }
    let ty = device_type(lun);
    let body: Vec<u8> = match page {
        0x00 => vec![0x00, 0x80, 0x83],
        0x80 => serial(lun).as_bytes().to_vec(),
        0x83 => {
            // One designator: ASCII, vendor specific, associated with
            // the logical unit (as QEMU's from its device id).
            let id = device_identifier(lun);
            let mut d = vec![0x02, 0x00, 0x00, u8::try_from(id.len()).unwrap_or(0)];
            d.extend_from_slice(id.as_bytes());
            d
        }
        _ => return Err(sense::INVALID_FIELD),
    };
    let mut out = vec![ty, page];
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(io.reply(&out, alloc))
}

/// The serial number of VPD page 0x80 (at most 36 bytes, printable).
fn serial(lun: &Lun) -> String {
    lun.cfg
        .serial
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(36)
        .collect()
}

/// The identifier of VPD page 0x83: the serial, else the device id.
fn device_identifier(lun: &Lun) -> String {
    let s = serial(lun);
    let id = if s.is_empty() {
        lun.cfg.device_id.clone()
    } else {
        s
    };
    id.chars()
        .filter(char::is_ascii_graphic)
        .take(255)
        .collect()
}

/// Standard INQUIRY data: QEMU's vendor and product strings, SPC-3,
/// response data format 2 with HiSup, CmdQue.
fn standard_inquiry(lun: &Lun) -> [u8; INQUIRY_LEN] {
    let mut b = [0u8; INQUIRY_LEN];
    b[0] = device_type(lun);
    b[1] = if lun.is_cd() { 0x80 } else { 0x00 };
    b[2] = 0x05;
    b[3] = 0x02 | 0x10;
    b[4] = u8::try_from(INQUIRY_LEN - 5).unwrap_or(31);
    b[7] = 0x10 | 0x02;
    b[8..16].copy_from_slice(b"QEMU    ");
    let product: &[u8; 16] = if lun.is_cd() {
        b"QEMU CD-ROM     "
    } else {
        b"QEMU HARDDISK   "
    };
    b[16..32].copy_from_slice(product);
    b[32..36].copy_from_slice(b"2.5+");
    b
}

fn request_sense(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    if cdb.byte(1) & 1 != 0 {
        // Descriptor format is not supported (SPC-4 says: refuse).
        return Err(sense::INVALID_FIELD);
    }
    Ok(io.reply(&lun.take_sense().fixed(), u64::from(cdb.byte(4))))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use ipc_proto::scsi::{ScsiLunConfig, ScsiLunKind};

    use super::*;
    use crate::block::null::NullDriver;
    use crate::block::Node;
    use crate::scsi::lun::Notifier;

    /// A LUN of `kind` with a null medium of `size` bytes (or none).
    pub fn lun(kind: ScsiLunKind, size: Option<u64>) -> Lun {
        let bs = if kind == ScsiLunKind::Cd { 2048 } else { 512 };
        let cfg = ScsiLunConfig {
            device_id: "cd0".into(),
            target: 0,
            lun: 0,
            kind,
            node_name: size.map(|_| "n".into()),
            writable: kind == ScsiLunKind::Hd,
            tray_open: false,
            locked: false,
            serial: "SER1".into(),
            logical_block_size: bs,
        };
        let medium =
            size.map(|s| Arc::new(Node::new("n".into(), Box::new(NullDriver::new(s)), false)));
        Lun::new(
            cfg,
            medium,
            Notifier {
                export_id: "scsi0".into(),
                events: None,
            },
        )
    }

    /// Run `cdb` with a data-in buffer of `room` bytes; the outcome and
    /// the bytes written.
    pub fn run_in(lun: &Lun, cdb: &[u8], room: usize) -> (Outcome, Vec<u8>) {
        let mut c = [0u8; 32];
        c[..cdb.len()].copy_from_slice(cdb);
        let mut buf = vec![0u8; room];
        let o = {
            let s = [iobuf::slice_of(&mut buf)];
            let data_in: &[VolatileSlice<'_>] = if room == 0 { &[] } else { &s };
            execute(
                lun,
                &c,
                &Io {
                    data_in,
                    data_out: &[],
                },
            )
        };
        let n = match o {
            Outcome::Good { data_in } => data_in,
            _ => 0,
        };
        buf.truncate(n);
        (o, buf)
    }

    #[test]
    fn inquiry_of_a_cd_says_removable_type_5_and_qemus_strings() {
        let l = lun(ScsiLunKind::Cd, Some(1 << 20));
        let (o, d) = run_in(&l, &[0x12, 0, 0, 0, 36, 0], 96);
        assert_eq!(o, Outcome::Good { data_in: 36 });
        assert_eq!((d[0], d[1], d[2], d[4]), (5, 0x80, 5, 31));
        assert_eq!(&d[8..32], b"QEMU    QEMU CD-ROM     ");
        let h = lun(ScsiLunKind::Hd, Some(1 << 20));
        let (_, d) = run_in(&h, &[0x12, 0, 0, 0, 36, 0], 96);
        assert_eq!((d[0], d[1]), (0, 0));
    }

    #[test]
    fn inquiry_is_cut_to_the_allocation_length() {
        let l = lun(ScsiLunKind::Cd, Some(1 << 20));
        assert_eq!(
            run_in(&l, &[0x12, 0, 0, 0, 5, 0], 96).0,
            Outcome::Good { data_in: 5 }
        );
    }

    #[test]
    fn vpd_pages_list_serial_and_identification() {
        let l = lun(ScsiLunKind::Cd, Some(1 << 20));
        let (_, d) = run_in(&l, &[0x12, 1, 0x00, 0, 255, 0], 255);
        assert_eq!(d, vec![5, 0, 0, 3, 0x00, 0x80, 0x83]);
        let (_, d) = run_in(&l, &[0x12, 1, 0x80, 0, 255, 0], 255);
        assert_eq!(d, b"\x05\x80\x00\x04SER1".to_vec());
        let (_, d) = run_in(&l, &[0x12, 1, 0x83, 0, 255, 0], 255);
        assert_eq!(d, b"\x05\x83\x00\x08\x02\x00\x00\x04SER1".to_vec());
        // An unknown page, or a page code without EVPD: 05/24/00.
        assert_eq!(
            run_in(&l, &[0x12, 1, 0xb0, 0, 255, 0], 255).0,
            sense::INVALID_FIELD.into()
        );
        assert_eq!(
            run_in(&l, &[0x12, 0, 0x80, 0, 255, 0], 255).0,
            sense::INVALID_FIELD.into()
        );
    }

    #[test]
    fn unknown_opcodes_are_illegal_requests_even_in_groups_without_a_length() {
        let l = lun(ScsiLunKind::Cd, Some(1 << 20));
        for opc in [0x02u8, 0x4c, 0x7e, 0xa3, 0xc5, 0xff] {
            assert_eq!(
                run_in(&l, &[opc], 64).0,
                sense::INVALID_OPCODE.into(),
                "{opc:#x}"
            );
        }
        // READ TOC is unknown to a disk; GET CONFIGURATION and GESN are
        // refused with 05/24/00, as QEMU's scsi-hd does.
        let h = lun(ScsiLunKind::Hd, Some(1 << 20));
        assert_eq!(
            run_in(&h, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0], 64).0,
            sense::INVALID_OPCODE.into()
        );
        let gc = [0x46, 0, 0, 0, 0, 0, 0, 0, 40, 0];
        assert_eq!(run_in(&h, &gc, 64).0, sense::INVALID_FIELD.into());
        let gesn = [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];
        assert_eq!(run_in(&h, &gesn, 64).0, sense::INVALID_FIELD.into());
    }

    #[test]
    fn empty_drive_is_not_ready_with_the_trays_qualifier() {
        let l = lun(ScsiLunKind::Cd, None);
        assert_eq!(run_in(&l, &[0], 0).0, sense::NO_MEDIUM_TRAY_CLOSED.into());
        let (o, d) = run_in(&l, &[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!(o, Outcome::Good { data_in: 18 });
        assert_eq!((d[2], d[12], d[13]), (2, 0x3a, 1));
        l.state().tray_open = true;
        assert_eq!(run_in(&l, &[0], 0).0, sense::NO_MEDIUM_TRAY_OPEN.into());
        assert_eq!(
            run_in(&l, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).0,
            sense::NO_MEDIUM_TRAY_OPEN.into()
        );
    }

    #[test]
    fn request_sense_refuses_descriptor_format() {
        let l = lun(ScsiLunKind::Cd, Some(1 << 20));
        assert_eq!(
            run_in(&l, &[0x03, 1, 0, 0, 18, 0], 18).0,
            sense::INVALID_FIELD.into()
        );
        let (o, d) = run_in(&l, &[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!(o, Outcome::Good { data_in: 18 });
        assert_eq!((d[0], d[2], d[12]), (0x70, 0, 0));
    }
}
