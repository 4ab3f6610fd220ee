//! The frames of the `net-gen` traffic generator, shared with the host's
//! benchmark (`vhost-user-harness`'s `bench-net` includes this file with
//! `#[path]`, so it uses `core` only).
//!
//! Control frames (EtherType [`CONTROL_ETHERTYPE`], minimum size) carry
//! the host's orders and the guest's answers; data frames (EtherType
//! [`DATA_ETHERTYPE`], any size) carry a sequence number, so the host side
//! binds one socket to the control EtherType and never sees the flood.
//!
//! ```text
//! control: dst[6] src[6] 0x88b7 | "BHGN" op:u8 0:u8 size:u16 ms:u32 count:u64 | zero padding
//! data:    dst[6] src[6] 0x88b6 | "BHGN" 3:u8 0:u8 size:u16 seq:u32 | padding up to size
//! ```
//!
//! (big-endian fields; `size` is the data frames' length without FCS).

/// EtherType of the data frames.
pub const DATA_ETHERTYPE: u16 = 0x88b6;
/// EtherType of the control frames.
pub const CONTROL_ETHERTYPE: u16 = 0x88b7;
/// First bytes after the Ethernet header.
pub const MAGIC: [u8; 4] = *b"BHGN";
/// Host → guest: send data frames of `size` bytes for `ms` milliseconds.
pub const OP_TX: u8 = 1;
/// Host → guest: count the data frames that arrive for `ms` milliseconds.
pub const OP_RX: u8 = 2;
/// A data frame.
pub const OP_DATA: u8 = 3;
/// Guest → host: the run is over; `count` frames sent (after [`OP_TX`])
/// or received (after [`OP_RX`]).
pub const OP_DONE: u8 = 4;
/// Ethernet header bytes.
pub const ETH_HEADER: usize = 14;
/// Length of a control frame (the Ethernet minimum without FCS).
pub const CONTROL_LEN: usize = 60;
/// Shortest data frame.
pub const MIN_DATA: usize = 60;
/// Longest data frame (a 9000-byte MTU).
pub const MAX_DATA: usize = 9014;

/// A control frame's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// [`OP_TX`], [`OP_RX`] or [`OP_DONE`].
    pub op: u8,
    /// Data frame length.
    pub size: u16,
    /// Duration of the run.
    pub ms: u32,
    /// Frames sent or received ([`OP_DONE`]).
    pub count: u64,
}

fn header(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
    buf[14..18].copy_from_slice(&MAGIC);
}

/// Writes control frame `c` into `buf`; returns its length (None if
/// `buf` is shorter than [`CONTROL_LEN`]).
pub fn control(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], c: &Control) -> Option<usize> {
    let out = buf.get_mut(..CONTROL_LEN)?;
    out.fill(0);
    header(out, dst, src, CONTROL_ETHERTYPE);
    out[18] = c.op;
    out[20..22].copy_from_slice(&c.size.to_be_bytes());
    out[22..26].copy_from_slice(&c.ms.to_be_bytes());
    out[26..34].copy_from_slice(&c.count.to_be_bytes());
    Some(CONTROL_LEN)
}

/// The control frame in `frame` and its source MAC, if it is one.
pub fn parse_control(frame: &[u8]) -> Option<(Control, [u8; 6])> {
    if frame.len() < 34
        || frame[12..14] != CONTROL_ETHERTYPE.to_be_bytes()
        || frame[14..18] != MAGIC
    {
        return None;
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    let mut count = [0u8; 8];
    count.copy_from_slice(&frame[26..34]);
    Some((
        Control {
            op: frame[18],
            size: u16::from_be_bytes([frame[20], frame[21]]),
            ms: u32::from_be_bytes([frame[22], frame[23], frame[24], frame[25]]),
            count: u64::from_be_bytes(count),
        },
        src,
    ))
}

/// Writes the headers of data frame `seq` at the start of `buf` (whose
/// length is the frame's); the padding is left as it is.
pub fn data(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], seq: u32) {
    if buf.len() < 26 {
        return;
    }
    let size = buf.len() as u16;
    header(buf, dst, src, DATA_ETHERTYPE);
    buf[18] = OP_DATA;
    buf[19] = 0;
    buf[20..22].copy_from_slice(&size.to_be_bytes());
    buf[22..26].copy_from_slice(&seq.to_be_bytes());
}

/// The sequence number of the data frame in `frame`, if it is one whose
/// length matches its `size` field.
pub fn parse_data(frame: &[u8]) -> Option<u32> {
    if frame.len() < 26
        || frame[12..14] != DATA_ETHERTYPE.to_be_bytes()
        || frame[14..18] != MAGIC
        || frame[18] != OP_DATA
        || usize::from(u16::from_be_bytes([frame[20], frame[21]])) != frame.len()
    {
        return None;
    }
    Some(u32::from_be_bytes([
        frame[22], frame[23], frame[24], frame[25],
    ]))
}
