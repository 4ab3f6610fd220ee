//! `dump`: writes the marker page and halts with known registers (see the
//! crate's library).

#![no_std]
#![no_main]

guest_rt::guest!("dump", main);

fn main() -> ! {
    dump::mark_and_halt()
}
