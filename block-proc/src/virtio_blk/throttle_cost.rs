//! What a request costs the export's throttle group: reads and writes
//! count their data bytes (QEMU meters them at the BlockBackend, as here
//! at the export); flush, discard, write-zeroes and get-id are not
//! metered.

use super::{iobuf, parse, req};
use crate::throttle::gate::Cost;
use crate::vring::{Desc, Mem};

/// The cost of the request in `descs` (a chain that does not parse is
/// free here: executing it fails it).
pub fn request_cost(mem: &Mem, descs: &[Desc]) -> Cost {
    let Ok(p) = parse(mem, descs) else {
        return Cost::Free;
    };
    match u32::from_le_bytes([p.hdr[0], p.hdr[1], p.hdr[2], p.hdr[3]]) {
        req::IN => Cost::Io {
            write: false,
            bytes: iobuf::total_len(&p.inn) as u64,
        },
        req::OUT => Cost::Io {
            write: true,
            bytes: iobuf::total_len(&p.out) as u64,
        },
        _ => Cost::Free,
    }
}
