//! `blk`: finds the first virtio-blk device (Bulkhead's virtio-mmio slots,
//! then QEMU microvm's transports; see `virtio::find`), then runs
//! [`PASSES`] passes of write / flush / read back / verify over
//! `blk::SECTORS` sectors and reports `VERDICT: PASS blk` (exit 0) or
//! `VERDICT: FAIL blk: ...` (exit 1). After the passes the disk holds the
//! pattern of the last pass (see `pattern.rs`), which a host test can check.

#![no_std]
#![no_main]

use blk::blk::setup;
use guest_rt::println;

/// Passes run before the verdict.
pub const PASSES: u64 = 3;

guest_rt::guest!("blk", main);

fn main() -> ! {
    let mut disk = setup();
    for pass in 1..=PASSES {
        if let Err(e) = disk.run_pass(0, pass) {
            guest_rt::fail!("pass {}: {:?}", pass, e);
        }
        println!("blk: pass {} ok", pass);
    }
    println!("blk: {} device interrupts", blk::blk::device_interrupts());
    guest_rt::exit::pass()
}
