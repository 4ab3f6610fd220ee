//! virtio-blk requests on an asynchronous engine: [`prepare`] parses a
//! chain like [`super::process`] and, when the node can hand the I/O to
//! its engine as it is, returns it split into the engine's [`Target`],
//! the iovecs into guest memory and what the completion needs;
//! [`complete`] writes the status and accounts the request when the
//! engine is done. Anything else (malformed chains, unaligned I/O under
//! `O_DIRECT`, write-zeroes, GET_ID, ...) is left to [`super::process`].

use std::time::Instant;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{discard_range, failed, finish, parse, req, rw_valid, BlkConfig, Completion, S_OK};
use crate::block::aio::{Kind, Op, Target};
use crate::block::{iobuf, Node};
use crate::vring::{Desc, Mem};
use ipc_proto::warn_limited;

/// What the completion of an asynchronous request needs.
#[derive(Debug)]
pub struct AsyncReq {
    kind: Kind,
    status: GuestAddress,
    offset: u64,
    len: u64,
    /// Bytes of data the device writes (reads).
    data_in: usize,
    start: Instant,
}

impl AsyncReq {
    /// What kind of request it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// The largest read a lone request (queue depth 1) sends to the ring;
/// a larger one runs as the thread pool runs it. At queue depth 1 a big
/// read gains nothing from the ring (one request either way) and
/// measured no faster than `preadv`, so it takes the pool's path.
pub const LONE_RING_READ_MAX: u64 = 64 << 10;

/// The request in `descs` for the node's engine, or None to run it with
/// [`super::process`]. With `lone` (a request run alone, waiting for it),
/// writes and reads above [`LONE_RING_READ_MAX`] get None before the
/// node's guards are taken: they run synchronously, as the pool runs them.
pub fn prepare(
    node: &Node,
    cfg: &BlkConfig,
    mem: &Mem,
    descs: &[Desc],
    lone: bool,
) -> Option<(AsyncReq, Target, Vec<libc::iovec>)> {
    if descs.len() > cfg.seg_max() as usize + 2 {
        return None;
    }
    let p = parse(mem, descs).ok()?;
    let ty = u32::from_le_bytes([p.hdr[0], p.hdr[1], p.hdr[2], p.hdr[3]]);
    let sector = u64::from_le_bytes([
        p.hdr[8], p.hdr[9], p.hdr[10], p.hdr[11], p.hdr[12], p.hdr[13], p.hdr[14], p.hdr[15],
    ]);
    let start = Instant::now();
    let (op, offset, len, data_in) = match ty {
        req::OUT if lone => return None,
        req::IN | req::OUT => {
            let write = ty == req::OUT;
            let bufs = if write { &p.out } else { &p.inn };
            let len = iobuf::total_len(bufs) as u64;
            if lone && len > LONE_RING_READ_MAX {
                return None;
            }
            if !rw_valid(cfg, sector, len, write) {
                return None;
            }
            let offset = sector * 512;
            let op = if write {
                Op::Write { bufs, offset }
            } else {
                Op::Read { bufs, offset }
            };
            let data_in = if write { 0 } else { len as usize };
            (op, offset, len, data_in)
        }
        req::FLUSH => (Op::Flush, 0, 0, 0),
        req::DISCARD if !cfg.read_only => {
            let (offset, len, _) = discard_range(cfg, &p, true).ok()?;
            (Op::Discard { offset, len }, offset, len, 0)
        }
        _ => return None,
    };
    let target = node.aio_target(&op)?;
    let iov = match op {
        Op::Read { bufs, .. } | Op::Write { bufs, .. } => iobuf::iovecs(bufs),
        Op::Flush | Op::Discard { .. } => Vec::new(),
    };
    let r = AsyncReq {
        kind: op.kind(),
        status: p.status_addr,
        offset,
        len,
        data_in,
        start,
    };
    Some((r, target, iov))
}

/// Finish `r` with the engine's result: status byte, accounting, and the
/// used element's length.
pub fn complete(node: &Node, mem: &Mem, r: &AsyncReq, res: std::io::Result<()>) -> Completion {
    node.account_aio(r.kind, r.offset, r.len, r.start, res.is_ok());
    let Ok(status) = mem.get_slice(r.status, 1) else {
        // The memory was checked when the request was parsed and a queue
        // keeps its map: not reachable, but never a panic.
        return Completion {
            used_len: 0,
            status: None,
            failure: None,
        };
    };
    match res {
        Ok(()) => finish(&status, S_OK, r.data_in),
        Err(e) => {
            let op = match r.kind {
                Kind::Read => "read",
                Kind::Write => "write",
                Kind::Flush => "flush",
                Kind::Discard => "discard",
            };
            warn_limited!("virtio-blk: {op} at {} failed: {e}", r.offset);
            failed(&status, op, &e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::null::NullDriver;
    use crate::vring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn node_without_an_async_engine_leaves_every_request_to_process() {
        let node = std::sync::Arc::new(Node::new(
            "n".into(),
            Box::new(NullDriver::new(1 << 20)),
            false,
        ));
        let cfg = BlkConfig::new(&node, 1, true, "s", 512);
        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(req::IN, GuestAddress(0x100)).unwrap();
        let d = [
            Desc {
                addr: 0x100,
                len: 16,
                flags: 0,
                next: 0,
            },
            Desc {
                addr: 0x1000,
                len: 512,
                flags: VRING_DESC_F_WRITE,
                next: 0,
            },
            Desc {
                addr: 0x2000,
                len: 1,
                flags: VRING_DESC_F_WRITE,
                next: 0,
            },
        ];
        assert!(prepare(&node, &cfg, &mem, &d, false).is_none());
    }
}
