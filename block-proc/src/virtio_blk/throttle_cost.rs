//! What a request costs the export's throttle group: reads and writes
//! count their data bytes, write-zeroes its range as a write (QEMU meters
//! them at the BlockBackend, as here at the export); flush, discard and
//! get-id are not metered, as in QEMU.

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
        req::WRITE_ZEROES if iobuf::total_len(&p.out) == 16 => {
            let mut seg = [0u8; 16];
            iobuf::gather(&p.out, &mut seg);
            let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            Cost::Io {
                write: true,
                bytes: u64::from(num) * 512,
            }
        }
        _ => Cost::Free,
    }
}
