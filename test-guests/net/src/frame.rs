//! The test frames of the `net` guests, shared with the host tests (they
//! include this file with `#[path]`, so it uses `core` only).
//!
//! An Ethernet frame of EtherType [`ETHERTYPE`] (0x88b5, "local
//! experimental"):
//!
//! ```text
//! dst[6] src[6] 0x88b5 | "BHNT" kind:u8 0:u8 len:u16 seq:u32 | data[len] | sum:u32
//! ```
//!
//! (big-endian fields). `data` is a pattern derived from `seq`
//! ([`data_byte`]), so a receiver checks the whole frame; `sum` is FNV-1a
//! over kind, len, seq and data. A [`PING`] asks the receiver to answer
//! with a [`PONG`] carrying the same seq and data to the sender's MAC.
//! Frames shorter than 60 bytes are padded with zeros.

/// The test frames' EtherType.
pub const ETHERTYPE: u16 = 0x88b5;
/// First bytes of the payload.
pub const MAGIC: [u8; 4] = *b"BHNT";
/// Please answer with a [`PONG`].
pub const PING: u8 = 1;
/// The answer to a [`PING`].
pub const PONG: u8 = 2;
/// Ethernet header bytes.
pub const ETH_HEADER: usize = 14;
/// Bytes between the Ethernet header and the data.
pub const FIXED: usize = 12;
/// Largest data length (the frame stays under 1514 bytes).
pub const MAX_DATA: usize = 1400;
/// Shortest Ethernet frame (without FCS).
pub const MIN_FRAME: usize = 60;
/// The broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// A parsed test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// [`PING`] or [`PONG`].
    pub kind: u8,
    /// Sequence number.
    pub seq: u32,
    /// The data.
    pub data: &'a [u8],
}

/// What a received frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Another EtherType (ARP, IPv6, ...).
    Other,
    /// Our EtherType, but damaged (bad magic, length or checksum).
    Corrupt,
    /// A good test frame.
    Test(Frame<'a>),
}

/// FNV-1a, 32 bits.
pub fn fnv1a(seed: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(seed, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

const FNV_SEED: u32 = 0x811c_9dc5;

/// Byte `i` of the data of frame `seq`.
pub fn data_byte(seq: u32, i: usize) -> u8 {
    (seq as usize)
        .wrapping_mul(31)
        .wrapping_add(i.wrapping_mul(7))
        .wrapping_add(i >> 8) as u8
}

/// Data length of frame `seq`: from 34 (a minimum-size frame) to
/// [`MAX_DATA`], varying with `seq`.
pub fn data_len(seq: u32) -> usize {
    34 + (seq as usize).wrapping_mul(389) % (MAX_DATA - 34 + 1)
}

/// True if `data` is frame `seq`'s pattern.
pub fn pattern_ok(seq: u32, data: &[u8]) -> bool {
    data.len() == data_len(seq)
        && data
            .iter()
            .enumerate()
            .all(|(i, b)| *b == data_byte(seq, i))
}

fn sum(kind: u8, seq: u32, data: &[u8]) -> u32 {
    let len = (data.len() as u16).to_be_bytes();
    let mut h = fnv1a(FNV_SEED, &[kind, 0, len[0], len[1]]);
    h = fnv1a(h, &seq.to_be_bytes());
    fnv1a(h, data)
}

/// Writes a frame with `data` into `buf`; returns its length, or None if
/// `buf` is too small or `data` too long.
pub fn build_with(
    buf: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    kind: u8,
    seq: u32,
    data: &[u8],
) -> Option<usize> {
    if data.len() > MAX_DATA {
        return None;
    }
    let end = ETH_HEADER + FIXED + data.len() + 4;
    let len = end.max(MIN_FRAME);
    let out = buf.get_mut(..len)?;
    out.fill(0);
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let p = ETH_HEADER;
    out[p..p + 4].copy_from_slice(&MAGIC);
    out[p + 4] = kind;
    out[p + 6..p + 8].copy_from_slice(&(data.len() as u16).to_be_bytes());
    out[p + 8..p + 12].copy_from_slice(&seq.to_be_bytes());
    let d = p + FIXED;
    out[d..d + data.len()].copy_from_slice(data);
    out[d + data.len()..end].copy_from_slice(&sum(kind, seq, data).to_be_bytes());
    Some(len)
}

/// Writes frame `seq` (its pattern data) into `buf`; returns its length.
pub fn build(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], kind: u8, seq: u32) -> Option<usize> {
    let mut data = [0u8; MAX_DATA];
    let n = data_len(seq);
    for (i, b) in data[..n].iter_mut().enumerate() {
        *b = data_byte(seq, i);
    }
    build_with(buf, dst, src, kind, seq, &data[..n])
}

/// Parses a received frame.
pub fn parse(frame: &[u8]) -> Parsed<'_> {
    if frame.len() < ETH_HEADER || frame[12..14] != ETHERTYPE.to_be_bytes() {
        return Parsed::Other;
    }
    let p = &frame[ETH_HEADER..];
    if p.len() < FIXED + 4 || p[..4] != MAGIC {
        return Parsed::Corrupt;
    }
    let kind = p[4];
    let len = usize::from(u16::from_be_bytes([p[6], p[7]]));
    let seq = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    if len > MAX_DATA || p.len() < FIXED + len + 4 || !(kind == PING || kind == PONG) {
        return Parsed::Corrupt;
    }
    let data = &p[FIXED..FIXED + len];
    let s = &p[FIXED + len..FIXED + len + 4];
    if u32::from_be_bytes([s[0], s[1], s[2], s[3]]) != sum(kind, seq, data) {
        return Parsed::Corrupt;
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[..6]);
    src.copy_from_slice(&frame[6..12]);
    Parsed::Test(Frame {
        dst,
        src,
        kind,
        seq,
        data,
    })
}
