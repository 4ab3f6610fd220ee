//! The block commands (SBC-3, and the parts MMC shares): READ CAPACITY
//! (10/16), READ/WRITE (6/10/12/16), SYNCHRONIZE CACHE, MODE SENSE
//! (6/10). Data moves straight between the node and the guest's buffers
//! through the node's I/O path (`Node::read`/`write`: range locks,
//! bounce buffers for `O_DIRECT`, statistics, job taps).

use super::cdb::{op, Cdb, SAI_READ_CAPACITY_16};
use super::commands::{Io, Outcome};
use super::lun::Lun;
use super::sense::{self, Sense};
use crate::block::iobuf;
use crate::virtio_blk::{IoFailure, MAX_REQUEST_BYTES};

/// Blocks of the ready medium, or the NOT READY sense.
fn blocks(lun: &Lun) -> Result<u64, Sense> {
    let m = lun.ready()?;
    match m.size() / lun.block_size() {
        0 => Err(sense::NO_MEDIUM_TRAY_CLOSED),
        n => Ok(n),
    }
}

/// READ CAPACITY(10): the last LBA (clipped to 0xffffffff) and the block
/// size.
pub fn read_capacity_10(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    let n = blocks(lun)?;
    // Without PMI the LBA field must be zero.
    if cdb.byte(8) & 1 == 0 && cdb.be(2, 4) != 0 {
        return Err(sense::INVALID_FIELD);
    }
    let last = u32::try_from(n - 1).unwrap_or(u32::MAX);
    let bs = u32::try_from(lun.block_size()).unwrap_or(u32::MAX);
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&last.to_be_bytes());
    b[4..].copy_from_slice(&bs.to_be_bytes());
    Ok(io.reply(&b, 8))
}

/// SERVICE ACTION IN(16): READ CAPACITY(16) only.
pub fn service_action_in(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    if cdb.byte(1) & 0x1f != SAI_READ_CAPACITY_16 {
        return Err(sense::INVALID_FIELD);
    }
    let n = blocks(lun)?;
    if cdb.byte(14) & 1 == 0 && cdb.be(2, 8) != 0 {
        return Err(sense::INVALID_FIELD);
    }
    let bs = u32::try_from(lun.block_size()).unwrap_or(u32::MAX);
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(n - 1).to_be_bytes());
    b[8..12].copy_from_slice(&bs.to_be_bytes());
    Ok(io.reply(&b, cdb.be(10, 4)))
}

/// READ or WRITE of any size: checked against the medium and the
/// guest's buffers, then run on the node.
pub fn read_write(
    lun: &Lun,
    cdb: &Cdb<'_>,
    io: &Io<'_, '_>,
    write: bool,
) -> Result<Outcome, Sense> {
    let node = lun.ready()?;
    if write && (!lun.cfg.writable || node.read_only) {
        return Err(sense::WRITE_PROTECTED);
    }
    if !matches!(cdb.opcode(), op::READ_6 | op::WRITE_6) && cdb.byte(1) & 0xe0 != 0 {
        // RDPROTECT/WRPROTECT: no protection information here.
        return Err(sense::INVALID_FIELD);
    }
    let (lba, n) = cdb.rw_range().ok_or(sense::INVALID_OPCODE)?;
    let bs = lun.block_size();
    let total = node.size() / bs;
    if lba > total || n > total - lba {
        return Err(sense::LBA_OUT_OF_RANGE);
    }
    if n == 0 {
        return Ok(Outcome::Good { data_in: 0 });
    }
    let bytes = n * bs;
    if bytes > MAX_REQUEST_BYTES {
        return Err(sense::INVALID_FIELD);
    }
    let bufs = if write { io.data_out } else { io.data_in };
    let len = usize::try_from(bytes).map_err(|_| sense::INVALID_FIELD)?;
    if iobuf::total_len(bufs) < len {
        return Ok(Outcome::Overrun);
    }
    let pieces = iobuf::split(bufs, len);
    let part = pieces.first().map_or(&[][..], Vec::as_slice);
    let off = lba * bs;
    let r = if write {
        node.write(part, off, bytes)
    } else {
        node.read(part, off, bytes)
    };
    match r {
        Ok(()) => Ok(Outcome::Good {
            data_in: if write { 0 } else { len },
        }),
        Err(e) => {
            let operation = if write { "write" } else { "read" };
            ipc_proto::warn_limited!(
                "scsi {}: {operation} at {off} failed: {e}",
                lun.cfg.device_id
            );
            Ok(Outcome::IoError(IoFailure {
                node: Some(node.name.clone()),
                operation,
                reason: crate::block::graph::strerror(&e),
            }))
        }
    }
}

/// SYNCHRONIZE CACHE (10/16): flush the medium.
pub fn synchronize_cache(lun: &Lun) -> Result<Outcome, Sense> {
    let node = lun.ready()?;
    match node.flush() {
        Ok(()) => Ok(Outcome::Good { data_in: 0 }),
        Err(e) => Ok(Outcome::IoError(IoFailure {
            node: Some(node.name.clone()),
            operation: "flush",
            reason: crate::block::graph::strerror(&e),
        })),
    }
}

/// Mode page codes.
const PAGE_RW_ERROR: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CAPABILITIES: u8 = 0x2a;
const PAGE_ALL: u8 = 0x3f;

/// Mode page `page` (with its 2-byte header), or None when the unit has
/// no such page. `changeable`: the changeable-values mask (all zero: no
/// parameter can be changed).
fn mode_page(lun: &Lun, page: u8, changeable: bool) -> Option<Vec<u8>> {
    let mut p = match page {
        PAGE_RW_ERROR => {
            let mut p = vec![0u8; 10];
            p[0] = 0x80; // AWRE
            if lun.is_cd() {
                p[1] = 0x20; // read retry count
            }
            p
        }
        PAGE_CACHING => {
            let mut p = vec![0u8; 18];
            p[0] = 0x04; // WCE: writeback, as QEMU's default
            p
        }
        PAGE_CAPABILITIES if lun.is_cd() => {
            let locked = lun.state().locked;
            let mut p = vec![0u8; 20];
            p[0] = 0x3b; // reads CD-R, CD-RW (and DVD-ROM)
            p[2] = 0x7f; // audio play, composite, digital ports, mode 2, multisession
            p[3] = 0xff; // CD-DA, accurate stream, R-W, C2 pointers, ISRC, UPC, bar code
            p[4] = 0x2d | if locked { 0x02 } else { 0x00 }; // lock, eject, tray loader
            p[6..8].copy_from_slice(&(50u16 * 176).to_be_bytes()); // max read speed
            p[8..10].copy_from_slice(&16u16.to_be_bytes()); // volume levels
            p[10..12].copy_from_slice(&2048u16.to_be_bytes()); // buffer size
            p[12..14].copy_from_slice(&(16u16 * 176).to_be_bytes()); // current read speed
            p
        }
        _ => return None,
    };
    if changeable {
        p.iter_mut().for_each(|b| *b = 0);
    }
    let mut out = vec![page, u8::try_from(p.len()).unwrap_or(0)];
    out.extend(p);
    Some(out)
}

/// MODE SENSE (6/10): header, a block descriptor unless DBD (and only
/// with a medium), then the pages asked for.
pub fn mode_sense(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    let ten = cdb.opcode() == op::MODE_SENSE_10;
    let dbd = cdb.byte(1) & 0x08 != 0;
    let control = cdb.byte(2) >> 6;
    let page = cdb.byte(2) & 0x3f;
    if control == 3 {
        return Err(sense::SAVING_PARAMS_NOT_SUPPORTED);
    }
    if cdb.byte(3) != 0 {
        return Err(sense::INVALID_FIELD);
    }
    let changeable = control == 1;
    let pages: Vec<u8> = if page == PAGE_ALL {
        [PAGE_RW_ERROR, PAGE_CACHING, PAGE_CAPABILITIES]
            .iter()
            .filter_map(|&p| mode_page(lun, p, changeable))
            .flatten()
            .collect()
    } else {
        mode_page(lun, page, changeable).ok_or(sense::INVALID_FIELD)?
    };
    let nblocks = blocks(lun).unwrap_or(0);
    let mut desc = Vec::new();
    if !dbd && nblocks > 0 {
        let n = if nblocks > 0xff_ffff { 0 } else { nblocks };
        desc.extend_from_slice(&u32::try_from(n).unwrap_or(0).to_be_bytes());
        desc[0] = 0; // density code
        let bs = u32::try_from(lun.block_size()).unwrap_or(0);
        desc.extend_from_slice(&bs.to_be_bytes());
        desc[4] = 0;
    }
    let dsp = if !lun.is_cd() && !lun.cfg.writable {
        0x80
    } else {
        0x00
    };
    let mut out = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[6..8].copy_from_slice(&u16::try_from(desc.len()).unwrap_or(0).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, u8::try_from(desc.len()).unwrap_or(0)]
    };
    out.extend(desc);
    out.extend(pages);
    let alloc = if ten {
        let len = u16::try_from(out.len() - 2).unwrap_or(u16::MAX);
        out[..2].copy_from_slice(&len.to_be_bytes());
        cdb.be(7, 2)
    } else {
        out[0] = u8::try_from(out.len() - 1).unwrap_or(u8::MAX);
        u64::from(cdb.byte(4))
    };
    Ok(io.reply(&out, alloc))
}

#[cfg(test)]
mod tests {
    use ipc_proto::scsi::ScsiLunKind;

    use super::*;
    use crate::scsi::commands::tests::{lun, run_in};

    #[test]
    fn read_capacity_reports_last_lba_and_block_size() {
        let l = lun(ScsiLunKind::Cd, Some(10 * 2048 + 100));
        let (o, d) = run_in(&l, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(o, Outcome::Good { data_in: 8 });
        assert_eq!(d, vec![0, 0, 0, 9, 0, 0, 8, 0]);
        let (o, d) = run_in(
            &l,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            32,
        );
        assert_eq!(o, Outcome::Good { data_in: 32 });
        assert_eq!(&d[..12], &[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 8, 0]);
        // An LBA without PMI, and an unknown service action: 05/24/00.
        assert_eq!(
            run_in(&l, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], 8).0,
            sense::INVALID_FIELD.into()
        );
        assert_eq!(
            run_in(
                &l,
                &[0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                32
            )
            .0,
            sense::INVALID_FIELD.into()
        );
    }

    #[test]
    fn reads_past_the_end_are_lba_out_of_range_and_short_buffers_overrun() {
        let l = lun(ScsiLunKind::Cd, Some(10 * 2048));
        assert_eq!(
            run_in(&l, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], 2048).0,
            Outcome::Good { data_in: 2048 }
        );
        assert_eq!(
            run_in(&l, &[0x28, 0, 0, 0, 0, 9, 0, 0, 2, 0], 4096).0,
            sense::LBA_OUT_OF_RANGE.into()
        );
        assert_eq!(
            run_in(&l, &[0x28, 0, 0, 0, 0, 11, 0, 0, 0, 0], 0).0,
            sense::LBA_OUT_OF_RANGE.into()
        );
        let big = [
            0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ];
        assert_eq!(run_in(&l, &big, 2048).0, sense::LBA_OUT_OF_RANGE.into());
        assert_eq!(
            run_in(&l, &[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], 2048).0,
            Outcome::Overrun
        );
        assert_eq!(
            run_in(&l, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], 2048).0,
            sense::INVALID_FIELD.into()
        );
    }

    #[test]
    fn huge_transfer_lengths_are_refused_not_allocated() {
        let l = lun(ScsiLunKind::Hd, Some(1 << 40));
        let c = [0xa8, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0];
        assert_eq!(run_in(&l, &c, 4096).0, sense::INVALID_FIELD.into());
    }

    #[test]
    fn writes_to_a_cd_are_write_protected() {
        let l = lun(ScsiLunKind::Cd, Some(10 * 2048));
        assert_eq!(
            run_in(&l, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0).0,
            sense::WRITE_PROTECTED.into()
        );
    }

    #[test]
    fn mode_sense_gives_the_cd_capabilities_page_and_refuses_saved_values() {
        let l = lun(ScsiLunKind::Cd, Some(10 * 2048));
        let (o, d) = run_in(&l, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 255, 0], 255);
        assert_eq!(
            o,
            Outcome::Good {
                data_in: 8 + 8 + 22
            }
        );
        assert_eq!(&d[..8], &[0, 36, 0, 0, 0, 0, 0, 8]);
        assert_eq!(&d[8..16], &[0, 0, 0, 10, 0, 0, 8, 0]);
        assert_eq!((d[16], d[17], d[18], d[22]), (0x2a, 20, 0x3b, 0x2d));
        l.state().locked = true;
        let (_, d) = run_in(&l, &[0x1a, 0x08, 0x2a, 0, 255, 0], 255);
        assert_eq!((d[0], d[3], d[4], d[10]), (25, 0, 0x2a, 0x2f));
        assert_eq!(
            run_in(&l, &[0x1a, 0, 0xea, 0, 255, 0], 255).0,
            sense::SAVING_PARAMS_NOT_SUPPORTED.into()
        );
        assert_eq!(
            run_in(&l, &[0x1a, 0, 0x05, 0, 255, 0], 255).0,
            sense::INVALID_FIELD.into()
        );
        let h = lun(ScsiLunKind::Hd, Some(1 << 20));
        assert_eq!(
            run_in(&h, &[0x1a, 0, 0x2a, 0, 255, 0], 255).0,
            sense::INVALID_FIELD.into()
        );
        let (_, d) = run_in(&h, &[0x1a, 0, 0x3f, 0, 255, 0], 255);
        assert_eq!(usize::from(d[0]) + 1, d.len());
    }
}
