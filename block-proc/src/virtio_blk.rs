//! virtio-blk device logic, independent of the transport: feature bits,
//! config space, and parsing plus execution of one request given its
//! descriptor chain. Guest input never panics here: a malformed request
//! gets `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`, or, when there is
//! not even a status byte to write, an empty used element.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::block::{iobuf, Node};
use crate::vring::{Desc, Mem};
use ipc_proto::warn_limited;

pub use handler::{BlkDevice, BlkHandler};

pub mod aio;
mod handler;
pub mod throttle_cost;

/// `VIRTIO_BLK_T_*` request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id string.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported.
pub const S_UNSUPP: u8 = 2;

/// Feature bits.
pub mod feat {
    /// VIRTIO_BLK_F_SIZE_MAX.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_RO.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH.
    pub const FLUSH: u64 = 1 << 9;
    /// VIRTIO_BLK_F_MQ.
    pub const MQ: u64 = 1 << 12;
    /// VIRTIO_BLK_F_DISCARD.
    pub const DISCARD: u64 = 1 << 13;
    /// VIRTIO_BLK_F_WRITE_ZEROES.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Size of the virtio-blk config space we expose.
pub const CONFIG_LEN: usize = 60;
/// Largest data transfer of one request.
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;
/// Largest single segment (config `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest discard / write-zeroes range in sectors.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / 512;

/// Static description of one exported device.
#[derive(Clone)]
pub struct BlkConfig {
    /// The exported node: the capacity is its current size, read at
    /// every request and GET_CONFIG (`block_resize` changes it live).
    node: std::sync::Arc<Node>,
    /// Number of request queues.
    pub num_queues: u16,
    /// Queue size the device supports at most.
    pub max_queue_size: u16,
    /// Writes refused.
    pub read_only: bool,
    /// Serial (GET_ID), padded with zeroes.
    pub serial: [u8; 20],
    /// Logical block size.
    pub blk_size: u32,
    /// The export's throttle group membership (shared with the server,
    /// which changes it with `block_set_io_throttle`).
    pub throttle: std::sync::Arc<crate::throttle::Member>,
}

impl BlkConfig {
    /// Describe an export of `node`.
    pub fn new(
        node: &std::sync::Arc<Node>,
        num_queues: u16,
        writable: bool,
        serial: &str,
        blk_size: u32,
    ) -> Self {
        let mut s = [0u8; 20];
        let b = serial.as_bytes();
        let n = b.len().min(20);
        s[..n].copy_from_slice(&b[..n]);
        BlkConfig {
            node: node.clone(),
            num_queues: num_queues.max(1),
            max_queue_size: 1024,
            read_only: !writable || node.read_only,
            serial: s,
            blk_size,
            throttle: std::sync::Arc::default(),
        }
    }

    /// Capacity in 512-byte sectors: the node's size now.
    pub fn capacity(&self) -> u64 {
        self.node.size() / 512
    }

    /// Maximum data segments per request (config `seg_max`).
    pub fn seg_max(&self) -> u32 {
        u32::from(self.max_queue_size) - 2
    }

    /// The device feature bits.
    pub fn features(&self) -> u64 {
        let mut f = feat::SIZE_MAX
            | feat::SEG_MAX
            | feat::BLK_SIZE
            | feat::FLUSH
            | feat::MQ
            | feat::EVENT_IDX
            | feat::VERSION_1
            | feat::PROTOCOL_FEATURES;
        if self.read_only {
            f |= feat::RO;
        } else {
            f |= feat::DISCARD | feat::WRITE_ZEROES;
        }
        f
    }

    /// The config space (`struct virtio_blk_config`, little endian).
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity().to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&self.seg_max().to_le_bytes());
        c[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        c[32] = 1; // writeback
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&1u32.to_le_bytes());
        c[44..48].copy_from_slice(&(self.blk_size / 512).max(1).to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&1u32.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

/// A host I/O failure behind an IOERR status (QEMU's `BLOCK_IO_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure {
    /// The node the I/O failed on, when not the export's own (a SCSI LUN's).
    pub node: Option<String>,
    /// `read`, `write`, `flush` or `discard`.
    pub operation: &'static str,
    /// strerror text.
    pub reason: String,
}

/// What the queue must do with a processed chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into device-writable buffers (used element length).
    pub used_len: u32,
    /// The status written (None when no status byte was available).
    pub status: Option<u8>,
    /// The host error, when the status is IOERR because the I/O failed.
    pub failure: Option<IoFailure>,
}

fn failed(status: &VolatileSlice<'_>, operation: &'static str, e: &std::io::Error) -> Completion {
    let mut c = finish(status, S_IOERR, 0);
    c.failure = Some(IoFailure {
        node: None,
        operation,
        reason: crate::block::graph::strerror(e),
    });
    c
}

struct Parsed<'m> {
    out: Vec<VolatileSlice<'m>>,
    inn: Vec<VolatileSlice<'m>>,
    status: VolatileSlice<'m>,
    status_addr: GuestAddress,
    hdr: [u8; 16],
}

fn map<'m>(mem: &'m Mem, d: &Desc) -> Option<VolatileSlice<'m>> {
    let len = usize::try_from(d.len).ok()?;
    mem.get_slice(GuestAddress(d.addr), len).ok()
}

/// Split the chain into header, out data, in data and status byte.
fn parse<'m>(mem: &'m Mem, descs: &[Desc]) -> Result<Parsed<'m>, Option<VolatileSlice<'m>>> {
    let first_w = descs.iter().position(Desc::is_write).unwrap_or(descs.len());
    let (rd, wr) = descs.split_at(first_w);
    // Locate the status byte: last byte of the last non-empty writable desc.
    let Some(last) = wr.iter().rposition(|d| d.len > 0) else {
        return Err(None);
    };
    let Some(ls) = map(mem, &wr[last]) else {
        return Err(None);
    };
    let Ok(status) = ls.subslice(ls.len() - 1, 1) else {
        return Err(None);
    };
    // The mapping above covers addr..addr+len, so this cannot overflow.
    let status_addr = GuestAddress(wr[last].addr + u64::from(wr[last].len) - 1);
    if wr.iter().any(|d| !d.is_write()) {
        // Readable after writable: not a valid virtio request layout.
        return Err(Some(status));
    }
    let mut hdr = [0u8; 16];
    let mut got = 0usize;
    let mut out = Vec::with_capacity(rd.len());
    for d in rd {
        let s = map(mem, d).ok_or(Some(status))?;
        let skip = (16 - got).min(s.len());
        if skip > 0 {
            s.subslice(0, skip)
                .map_err(|_| Some(status))?
                .copy_to(&mut hdr[got..got + skip]);
            got += skip;
        }
        if s.len() > skip {
            out.push(s.offset(skip).map_err(|_| Some(status))?);
        }
    }
    if got < 16 {
        return Err(Some(status));
    }
    let mut inn = Vec::with_capacity(wr.len());
    for (i, d) in wr.iter().enumerate() {
        let s = map(mem, d).ok_or(Some(status))?;
        let s = if i == last {
            s.subslice(0, s.len() - 1).map_err(|_| Some(status))?
        } else {
            s
        };
        if i > last {
            continue;
        }
        if !s.is_empty() {
            inn.push(s);
        }
    }
    Ok(Parsed {
        out,
        inn,
        status,
        status_addr,
        hdr,
    })
}

fn finish(status_slice: &VolatileSlice<'_>, status: u8, data_in: usize) -> Completion {
    let _ = status_slice.write_obj(status, 0);
    Completion {
        used_len: u32::try_from(data_in + 1).unwrap_or(u32::MAX),
        status: Some(status),
        failure: None,
    }
}

/// Process one request chain against `node`.
pub fn process(node: &Node, cfg: &BlkConfig, mem: &Mem, descs: &[Desc]) -> Completion {
    if descs.len() > cfg.seg_max() as usize + 2 {
        warn_limited!(
            "virtio-blk: request with {} descriptors rejected",
            descs.len()
        );
    }
    let p = match parse(mem, descs) {
        Ok(p) => p,
        Err(Some(status)) => {
            warn_limited!("virtio-blk: malformed request chain");
            return finish(&status, S_IOERR, 0);
        }
        Err(None) => {
            warn_limited!("virtio-blk: request without a status byte dropped");
            return Completion {
                used_len: 0,
                status: None,
                failure: None,
            };
        }
    };
    if descs.len() > cfg.seg_max() as usize + 2 {
        return finish(&p.status, S_IOERR, 0);
    }
    let ty = u32::from_le_bytes([p.hdr[0], p.hdr[1], p.hdr[2], p.hdr[3]]);
    let sector = u64::from_le_bytes([
        p.hdr[8], p.hdr[9], p.hdr[10], p.hdr[11], p.hdr[12], p.hdr[13], p.hdr[14], p.hdr[15],
    ]);
    let out_len = iobuf::total_len(&p.out) as u64;
    let in_len = iobuf::total_len(&p.inn) as u64;
    match ty {
        req::IN | req::OUT => {
            let write = ty == req::OUT;
            let len = if write { out_len } else { in_len };
            let bufs = if write { &p.out } else { &p.inn };
            if !rw_valid(cfg, sector, len, write) {
                node.stats.account_invalid(write);
                return finish(&p.status, S_IOERR, 0);
            }
            let off = sector * 512;
            let r = if write {
                node.write(bufs, off, len)
            } else {
                node.read(bufs, off, len)
            };
            match r {
                Ok(()) => finish(&p.status, S_OK, if write { 0 } else { in_len as usize }),
                Err(e) => {
                    let op = if write { "write" } else { "read" };
                    warn_limited!("virtio-blk: {op} at {off} failed: {e}");
                    failed(&p.status, op, &e)
                }
            }
        }
        req::FLUSH => match node.flush() {
            Ok(()) => finish(&p.status, S_OK, 0),
            Err(e) => {
                warn_limited!("virtio-blk: flush failed: {e}");
                failed(&p.status, "flush", &e)
            }
        },
        req::GET_ID => {
            let n = (in_len as usize).min(20);
            iobuf::scatter(&p.inn, &cfg.serial[..n]);
            finish(&p.status, S_OK, n)
        }
        req::DISCARD | req::WRITE_ZEROES => {
            if cfg.read_only {
                return finish(&p.status, S_UNSUPP, 0);
            }
            discard_or_zero(node, cfg, &p, ty == req::DISCARD)
        }
        _ => finish(&p.status, S_UNSUPP, 0),
    }
}

/// The checked range of a discard or write-zeroes request (offset, length,
/// unmap flag), or the status to answer.
fn discard_range(cfg: &BlkConfig, p: &Parsed<'_>, discard: bool) -> Result<(u64, u64, bool), u8> {
    let mut seg = [0u8; 16];
    if iobuf::total_len(&p.out) != 16 {
        return Err(S_IOERR);
    }
    iobuf::gather(&p.out, &mut seg);
    let sector = u64::from_le_bytes([
        seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
    ]);
    let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
    let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
    let unmap = flags & 1 != 0;
    if (discard && flags != 0) || (!discard && flags & !1 != 0) {
        return Err(S_UNSUPP);
    }
    let in_range = sector
        .checked_add(u64::from(num))
        .is_some_and(|end| end <= cfg.capacity());
    if num > MAX_DISCARD_SECTORS || !in_range {
        return Err(S_IOERR);
    }
    Ok((sector * 512, u64::from(num) * 512, unmap))
}

/// Whether a read or write of `len` bytes at `sector` may run.
fn rw_valid(cfg: &BlkConfig, sector: u64, len: u64, write: bool) -> bool {
    let range_ok = sector
        .checked_mul(512)
        .and_then(|o| o.checked_add(len))
        .is_some_and(|end| end <= cfg.capacity() * 512);
    len.is_multiple_of(512) && len <= MAX_REQUEST_BYTES && range_ok && !(write && cfg.read_only)
}

fn discard_or_zero(node: &Node, cfg: &BlkConfig, p: &Parsed<'_>, discard: bool) -> Completion {
    let (off, len, unmap) = match discard_range(cfg, p, discard) {
        Ok(r) => r,
        Err(status) => return finish(&p.status, status, 0),
    };
    let r = if discard {
        node.discard(off, len)
    } else {
        node.write_zeroes(off, len, unmap)
    };
    match r {
        Ok(()) => finish(&p.status, S_OK, 0),
        Err(e) => {
            warn_limited!("virtio-blk: discard/write-zeroes failed: {e}");
            failed(&p.status, if discard { "discard" } else { "write" }, &e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::null::NullDriver;
    use crate::vring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// A descriptor of a chain in these tests (chained by position, so
    /// `next` is unused): device-readable, or device-writable.
    fn desc(addr: u64, len: u32, writable: bool) -> Desc {
        let flags = if writable { VRING_DESC_F_WRITE } else { 0 };
        Desc {
            addr,
            len,
            flags,
            next: 0,
        }
    }

    fn setup() -> (std::sync::Arc<Node>, BlkConfig, Mem) {
        let node = std::sync::Arc::new(Node::new(
            "n".into(),
            Box::new(NullDriver::new(1 << 20)),
            false,
        ));
        let cfg = BlkConfig::new(&node, 1, true, "serial-1", 512);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        (node, cfg, mem)
    }

    fn hdr(mem: &Mem, ty: u32, sector: u64) {
        mem.write_obj(ty, GuestAddress(0x100)).unwrap();
        mem.write_obj(sector, GuestAddress(0x108)).unwrap();
    }

    #[test]
    fn read_past_capacity_answers_ioerr() {
        let (node, cfg, mem) = setup();
        hdr(&mem, req::IN, 2048);
        let d = [
            desc(0x100, 16, false),
            desc(0x1000, 512, true),
            desc(0x2000, 1, true),
        ];
        let c = process(&node, &cfg, &mem, &d);
        assert_eq!(c.status, Some(S_IOERR));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), S_IOERR);
    }

    #[test]
    fn get_id_returns_serial() {
        let (node, cfg, mem) = setup();
        hdr(&mem, req::GET_ID, 0);
        let d = [
            desc(0x100, 16, false),
            desc(0x1000, 20, true),
            desc(0x2000, 1, true),
        ];
        let c = process(&node, &cfg, &mem, &d);
        assert_eq!(
            c,
            Completion {
                used_len: 21,
                status: Some(S_OK),
                failure: None
            }
        );
        let mut id = [0u8; 8];
        mem.read_slice(&mut id, GuestAddress(0x1000)).unwrap();
        assert_eq!(&id, b"serial-1");
    }

    #[test]
    fn out_of_memory_data_address_answers_ioerr() {
        let (node, cfg, mem) = setup();
        hdr(&mem, req::IN, 0);
        let d = [
            desc(0x100, 16, false),
            desc(1 << 40, 512, true),
            desc(0x2000, 1, true),
        ];
        assert_eq!(process(&node, &cfg, &mem, &d).status, Some(S_IOERR));
    }

    #[test]
    fn chain_without_writable_status_is_dropped_without_status() {
        let (node, cfg, mem) = setup();
        hdr(&mem, req::IN, 0);
        let d = [desc(0x100, 16, false)];
        assert_eq!(
            process(&node, &cfg, &mem, &d),
            Completion {
                used_len: 0,
                status: None,
                failure: None
            }
        );
    }

    #[test]
    fn unknown_type_answers_unsupp() {
        let (node, cfg, mem) = setup();
        hdr(&mem, 77, 0);
        let d = [desc(0x100, 16, false), desc(0x2000, 1, true)];
        assert_eq!(process(&node, &cfg, &mem, &d).status, Some(S_UNSUPP));
    }

    #[test]
    fn random_descriptor_chains_never_panic() {
        let (node, cfg, mem) = setup();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let n = (rnd() % 5) as usize;
            let descs: Vec<Desc> = (0..n)
                .map(|_| Desc {
                    addr: match rnd() % 4 {
                        0 => rnd(),
                        _ => rnd() % (1 << 20),
                    },
                    len: match rnd() % 4 {
                        0 => rnd() as u32,
                        1 => 0,
                        _ => (rnd() % 8192) as u32,
                    },
                    flags: (rnd() % 4) as u16,
                    next: 0,
                })
                .collect();
            let _ = mem.write_obj((rnd() % 16) as u32, GuestAddress((rnd() % (1 << 20)) & !3));
            let c = process(&node, &cfg, &mem, &descs);
            assert!(c.status.is_some() || c.used_len == 0);
        }
    }
}
