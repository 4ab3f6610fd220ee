//! virtio-scsi framing (virtio 1.2 §5.6): splitting a request queue's
//! chain into the command header, data-out, the response area and
//! data-in; writing the response; the control queue's task management
//! and asynchronous notification requests. Every length and address
//! comes from the guest and is checked here: a chain too short for a
//! response is dropped (used length 0), a response area without a whole
//! request gets VIRTIO_SCSI_S_FAILURE.

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::cdb::CDB_SIZE;
use crate::block::iobuf;
use crate::vring::{Desc, Mem};

/// `struct virtio_scsi_cmd_req` with the default 32-byte CDB.
pub const CMD_REQ_LEN: usize = 8 + 8 + 3 + CDB_SIZE;
/// Sense bytes in a response (`sense_size`).
pub const SENSE_SIZE: usize = 96;
/// `struct virtio_scsi_cmd_resp` with the default sense size.
pub const CMD_RESP_LEN: usize = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE;

/// Response codes (`VIRTIO_SCSI_S_*`).
pub mod resp {
    /// Command completed (the SCSI status tells how).
    pub const OK: u8 = 0;
    /// The data buffers were too small for the transfer.
    pub const OVERRUN: u8 = 1;
    /// No such target.
    pub const BAD_TARGET: u8 = 3;
    /// Request could not be understood.
    pub const FAILURE: u8 = 9;
    /// TMF: done.
    pub const FUNCTION_COMPLETE: u8 = 0;
    /// TMF: not supported.
    pub const FUNCTION_REJECTED: u8 = 11;
    /// TMF: the target exists but the LUN does not.
    pub const INCORRECT_LUN: u8 = 12;
}

/// Control request types.
pub const T_TMF: u32 = 0;
/// Asynchronous notification query.
pub const T_AN_QUERY: u32 = 1;
/// Asynchronous notification subscribe.
pub const T_AN_SUBSCRIBE: u32 = 2;

/// TMF subtypes.
pub mod tmf {
    /// ABORT TASK.
    pub const ABORT_TASK: u32 = 0;
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: u32 = 1;
    /// CLEAR ACA.
    pub const CLEAR_ACA: u32 = 2;
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: u32 = 3;
    /// I_T NEXUS RESET.
    pub const I_T_NEXUS_RESET: u32 = 4;
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: u32 = 5;
    /// QUERY TASK.
    pub const QUERY_TASK: u32 = 6;
    /// QUERY TASK SET.
    pub const QUERY_TASK_SET: u32 = 7;
}

/// A chain split in its four parts.
pub struct Framed<'m> {
    /// The readable bytes the header needs (may be short: see `header_ok`).
    pub header: Vec<u8>,
    /// Data after the header (device-readable).
    pub data_out: Vec<VolatileSlice<'m>>,
    /// The response area (exactly the response's length).
    pub resp: Vec<VolatileSlice<'m>>,
    /// Data after the response area (device-writable).
    pub data_in: Vec<VolatileSlice<'m>>,
}

fn map<'m>(mem: &'m Mem, d: &Desc) -> Option<VolatileSlice<'m>> {
    let len = usize::try_from(d.len).ok()?;
    mem.get_slice(GuestAddress(d.addr), len).ok()
}

/// Cut `bufs` after `n` bytes (the head may be shorter when they are).
fn split_at<'m>(
    bufs: Vec<VolatileSlice<'m>>,
    n: usize,
) -> (Vec<VolatileSlice<'m>>, Vec<VolatileSlice<'m>>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = n;
    for b in bufs {
        if left == 0 {
            tail.push(b);
        } else if b.len() <= left {
            left -= b.len();
            head.push(b);
        } else {
            if let (Ok(h), Ok(t)) = (b.subslice(0, left), b.offset(left)) {
                head.push(h);
                tail.push(t);
            }
            left = 0;
        }
    }
    (head, tail)
}

/// Split `descs` into a `req_len`-byte header, data-out, a `resp_len`-byte
/// response area and data-in. None: there is no whole response area (no
/// answer is possible), or a descriptor lies outside guest memory, or a
/// readable descriptor follows a writable one.
pub fn frame<'m>(
    mem: &'m Mem,
    descs: &[Desc],
    req_len: usize,
    resp_len: usize,
) -> Option<Framed<'m>> {
    let first_w = descs.iter().position(Desc::is_write).unwrap_or(descs.len());
    let (rd, wr) = descs.split_at(first_w);
    if wr.iter().any(|d| !d.is_write()) {
        return None;
    }
    let readable: Vec<_> = rd.iter().map(|d| map(mem, d)).collect::<Option<_>>()?;
    let writable: Vec<_> = wr.iter().map(|d| map(mem, d)).collect::<Option<_>>()?;
    let (resp, data_in) = split_at(writable, resp_len);
    if iobuf::total_len(&resp) < resp_len {
        return None;
    }
    let (hdr, data_out) = split_at(readable, req_len);
    let mut header = vec![0u8; iobuf::total_len(&hdr)];
    iobuf::gather(&hdr, &mut header);
    Some(Framed {
        header,
        data_out,
        resp,
        data_in,
    })
}

/// A command response.
pub struct CmdResp<'s> {
    /// Response code.
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    /// Sense data (cut to [`SENSE_SIZE`]).
    pub sense: &'s [u8],
    /// Data-in bytes not written (residual).
    pub resid: u32,
}

/// Write `r` into the response area.
pub fn write_cmd_resp(area: &[VolatileSlice<'_>], r: &CmdResp<'_>) {
    let mut b = [0u8; CMD_RESP_LEN];
    let n = r.sense.len().min(SENSE_SIZE);
    b[0..4].copy_from_slice(&u32::try_from(n).unwrap_or(0).to_le_bytes());
    b[4..8].copy_from_slice(&r.resid.to_le_bytes());
    b[10] = r.status;
    b[11] = r.response;
    b[12..12 + n].copy_from_slice(&r.sense[..n]);
    iobuf::scatter(area, &b);
}

/// The (target, LUN) a virtio-scsi LUN field addresses: byte 0 is 1,
/// byte 1 the target, bytes 2-3 the LUN in single-level (0x00) or flat
/// (0x40) addressing. None: not an address this bus has.
pub fn decode_lun(lun: &[u8]) -> Option<(u8, u16)> {
    let b: &[u8; 8] = lun.get(..8)?.try_into().ok()?;
    if b[0] != 1 || !(b[2] == 0 || (0x40..0x80).contains(&b[2])) {
        return None;
    }
    Some((b[1], (u16::from(b[2]) << 8 | u16::from(b[3])) & 0x3fff))
}

/// A REPORT LUNS entry for `lun`.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut e = [0u8; 8];
    if lun < 256 {
        e[1] = u8::try_from(lun).unwrap_or(0);
    } else {
        e[0] = 0x40 | u8::try_from(lun >> 8).unwrap_or(0) & 0x3f;
        e[1] = u8::try_from(lun & 0xff).unwrap_or(0);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_addresses_decode_and_encode_as_linux_and_qemu_do() {
        assert_eq!(decode_lun(&[1, 3, 0, 5, 0, 0, 0, 0]), Some((3, 5)));
        assert_eq!(
            decode_lun(&[1, 0, 0x41, 0x02, 0, 0, 0, 0]),
            Some((0, 0x102))
        );
        assert_eq!(decode_lun(&[0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0]), None);
        assert_eq!(encode_lun(7), [0, 7, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x102), [0x41, 2, 0, 0, 0, 0, 0, 0]);
    }
}
