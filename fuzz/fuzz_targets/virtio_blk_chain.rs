//! Fuzzes block-proc's guest-facing request path: the split virtqueue
//! (`block_proc::vring`: avail ring, descriptor chains, used ring, event
//! index) and virtio-blk request parsing and execution
//! (`block_proc::virtio_blk::process`) over a null-co node.
//!
//! The input's first bytes choose the queue (size, ring addresses,
//! starting index, event index); the rest becomes guest memory, so the
//! rings, descriptors, request headers and data are all fuzzer-chosen.
//! Invariants: no panic; a chain never exceeds the queue size; a request
//! either completes with a status or uses no bytes.

#![no_main]

use block_proc::block::null::NullDriver;
use block_proc::block::Node;
use block_proc::virtio_blk::{process, BlkConfig};
use block_proc::vring::{Mem, Vring, VringConfig};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size: small, so random addresses often land inside.
const MEM_SIZE: usize = 64 << 10;
/// Header bytes that configure the queue.
const HEADER: usize = 12;
/// Requests processed per input at most.
const MAX_REQUESTS: usize = 64;

fn addr(lo: u8, hi: u8) -> u64 {
    // Mostly inside memory, 16-byte aligned as the spec requires of the
    // descriptor table; the top bit sends it far outside.
    let v = u64::from(u16::from_le_bytes([lo, hi]));
    if v & 0x8000 != 0 {
        v << 32
    } else {
        (v << 4) % MEM_SIZE as u64
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (h, body) = data.split_at(HEADER);
    let cfg = VringConfig {
        // SET_VRING_NUM accepts powers of two only (up to 32768).
        size: 1 << (h[0] % 16),
        desc: addr(h[1], h[2]),
        avail: addr(h[3], h[4]),
        used: addr(h[5], h[6]),
    };
    let next_avail = u16::from_le_bytes([h[7], h[8]]);
    let event_idx = h[9] & 1 != 0;
    let writable = h[9] & 2 != 0;

    let mem: Mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let body = &body[..body.len().min(MEM_SIZE)];
    mem.write_slice(body, GuestAddress(0)).expect("fill memory");

    let node = std::sync::Arc::new(Node::new("fuzz".into(), Box::new(NullDriver::new(1 << 20)), !writable));
    let blk = BlkConfig::new(&node, 1, writable, "fuzz-serial", 512);

    let mut ring = Vring::new(cfg, next_avail, event_idx);
    // The backend starts a queue only on rings inside guest memory.
    if ring.validate(&mem).is_err() {
        return;
    }
    let mut chain = Vec::new();
    for _ in 0..MAX_REQUESTS {
        let head = match ring.pop(&mem) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => break,
        };
        if ring.chain(&mem, head, &mut chain).is_err() {
            break;
        }
        assert!(
            chain.len() <= usize::from(cfg.size),
            "chain longer than the queue"
        );
        let done = process(&node, &blk, &mem, &chain);
        assert!(done.status.is_some() || done.used_len == 0);
        if ring.add_used(&mem, head, done.used_len).is_err() {
            break;
        }
    }
    let _ = ring.needs_notification(&mem);
    let _ = ring.enable_notification(&mem);
    let _ = ring.used_idx_in_memory(&mem);
});
