//! `blk-config-write`: like `blk`, but between its passes it writes the
//! device's config space (the `writeback` byte, as Linux does when the
//! cache mode changes). The backend may refuse the write; the disk must
//! keep working: the later passes must pass.

#![no_std]
#![no_main]

use blk::blk::setup;
use guest_rt::println;

/// Passes run before the verdict (the config write comes after the first).
pub const PASSES: u64 = 3;

guest_rt::guest!("blk-config-write", main);

fn main() -> ! {
    let mut disk = setup();
    for pass in 1..=PASSES {
        if pass == 2 {
            disk.write_writeback(1);
            println!("blk-config-write: config space written");
        }
        if let Err(e) = disk.run_pass(0, pass) {
            guest_rt::fail!("pass {}: {:?}", pass, e);
        }
        println!("blk-config-write: pass {} ok", pass);
    }
    guest_rt::exit::pass()
}
