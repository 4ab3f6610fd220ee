//! SCSI READs on the node's io_uring engine, as virtio-blk's reads go:
//! [`prepare`] takes only a plain READ(10/12/16) of a ready unit with no
//! unit attention pending, in range, whose response area is one
//! descriptor and whose medium's file is the one the queue's ring has
//! registered; everything else (and every error answer) is left to the
//! synchronous path ([`super::target::Targets::command`]), which decides
//! the same way. [`complete`] writes the response when the engine is done.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::cdb::{op, Cdb};
use super::commands::{STATUS_CHECK_CONDITION, STATUS_GOOD};
use super::sense;
use super::target::Targets;
use super::virtio::{self, resp, CmdResp, CMD_REQ_LEN, CMD_RESP_LEN};
use crate::block::aio::{Kind, Op, Target};
use crate::block::{iobuf, Node};
use crate::virtio_blk::aio::LONE_RING_READ_MAX;
use crate::virtio_blk::{Completion, IoFailure, MAX_REQUEST_BYTES};
use crate::vring::{Desc, Mem};

/// What the completion of an asynchronous READ needs.
pub struct ScsiAsync {
    node: Arc<Node>,
    resp: GuestAddress,
    in_len: usize,
    offset: u64,
    len: u64,
    start: Instant,
}

/// The READ in `descs` for the ring that registered `ring_fd`, or None.
pub fn prepare(
    targets: &Targets,
    mem: &Mem,
    descs: &[Desc],
    lone: bool,
    ring_fd: RawFd,
) -> Option<(ScsiAsync, Target, Vec<libc::iovec>)> {
    let first_w = descs.iter().find(|d| d.is_write())?;
    if usize::try_from(first_w.len).ok()? < CMD_RESP_LEN {
        return None;
    }
    let f = virtio::frame(mem, descs, CMD_REQ_LEN, CMD_RESP_LEN)?;
    let lun = targets.lun_at(f.header.get(..8)?)?;
    let cdb = Cdb::parse(f.header.get(19..CMD_REQ_LEN)?).ok()?;
    if !matches!(cdb.opcode(), op::READ_10 | op::READ_12 | op::READ_16) || cdb.byte(1) & 0xe0 != 0 {
        return None;
    }
    let node = lun.ready_without_attention()?;
    if node.driver.aio().map(|a| a.fd) != Some(ring_fd) {
        return None;
    }
    let (lba, n) = cdb.rw_range()?;
    let bs = lun.block_size();
    let total = node.size() / bs;
    if n == 0 || lba > total || n > total - lba {
        return None;
    }
    let bytes = n * bs;
    if bytes > MAX_REQUEST_BYTES || (lone && bytes > LONE_RING_READ_MAX) {
        return None;
    }
    let len = usize::try_from(bytes).ok()?;
    let in_len = iobuf::total_len(&f.data_in);
    if in_len < len {
        return None;
    }
    let pieces = iobuf::split(&f.data_in, len);
    let part = pieces.first()?;
    let offset = lba * bs;
    let start = Instant::now();
    let target = node.aio_target(&Op::Read { bufs: part, offset })?;
    let iov = iobuf::iovecs(part);
    let r = ScsiAsync {
        node,
        resp: GuestAddress(first_w.addr),
        in_len,
        offset,
        len: bytes,
        start,
    };
    Some((r, target, iov))
}

/// Answer `r` with the engine's result.
pub fn complete(mem: &Mem, r: &ScsiAsync, res: std::io::Result<()>) -> Completion {
    r.node
        .account_aio(Kind::Read, r.offset, r.len, r.start, res.is_ok());
    let Ok(area) = mem.get_slice(r.resp, CMD_RESP_LEN) else {
        // Checked when the request was parsed; the queue keeps its map.
        return Completion {
            used_len: 0,
            status: None,
            failure: None,
        };
    };
    let len = usize::try_from(r.len).unwrap_or(usize::MAX).min(r.in_len);
    match res {
        Ok(()) => {
            let resid = u32::try_from(r.in_len - len).unwrap_or(u32::MAX);
            virtio::write_cmd_resp(
                &[area],
                &CmdResp {
                    response: resp::OK,
                    status: STATUS_GOOD,
                    sense: &[],
                    resid,
                },
            );
            Completion {
                used_len: u32::try_from(CMD_RESP_LEN + len).unwrap_or(u32::MAX),
                status: Some(resp::OK),
                failure: None,
            }
        }
        Err(e) => {
            ipc_proto::warn_limited!("scsi: read at {} failed: {e}", r.offset);
            let resid = u32::try_from(r.in_len).unwrap_or(u32::MAX);
            virtio::write_cmd_resp(
                &[area],
                &CmdResp {
                    response: resp::OK,
                    status: STATUS_CHECK_CONDITION,
                    sense: &sense::IO_ERROR.fixed(),
                    resid,
                },
            );
            Completion {
                used_len: u32::try_from(CMD_RESP_LEN).unwrap_or(u32::MAX),
                status: Some(resp::OK),
                failure: Some(IoFailure {
                    node: Some(r.node.name.clone()),
                    operation: "read",
                    reason: crate::block::graph::strerror(&e),
                }),
            }
        }
    }
}
