//! `dump-fill`: first writes a non-zero pattern over guest-physical
//! `[16 MiB, 1 GiB - 16 MiB)` so that nearly all of a 1 GiB guest's RAM is
//! in use (`scripts/bench-dump`'s second case), then does what `dump` does.

#![no_std]
#![no_main]

use guest_rt::println;

guest_rt::guest!("dump-fill", main);

const FILL_START: usize = 16 << 20;
const FILL_END: usize = (1 << 30) - (16 << 20);

fn main() -> ! {
    // SAFETY: the range is identity-mapped RAM of a 1 GiB guest that
    // nothing else uses (the image and stacks are below 16 MiB).
    unsafe {
        core::ptr::write_bytes(FILL_START as *mut u8, 0x5a, FILL_END - FILL_START);
    }
    println!("filled {:#x}..{:#x}", FILL_START, FILL_END);
    dump::mark_and_halt()
}
