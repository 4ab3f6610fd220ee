//! `blk-loop`: like `blk`, but repeats write / flush / read back / verify
//! passes forever, printing `pass N ok` after each; any error ends the test
//! with `VERDICT: FAIL blk-loop: ...`. For chaos tests that kill the block
//! backend while it runs.

#![no_std]
#![no_main]

use blk::blk::setup;
use guest_rt::println;

guest_rt::guest!("blk-loop", main);

fn main() -> ! {
    let mut disk = setup();
    let mut pass = 1u64;
    loop {
        if let Err(e) = disk.run_pass(0, pass) {
            guest_rt::fail!("pass {}: {:?}", pass, e);
        }
        println!("pass {} ok", pass);
        pass += 1;
    }
}
