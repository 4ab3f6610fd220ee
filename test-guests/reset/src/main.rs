#![no_std]
#![no_main]

guest_rt::guest!("reset", main);

fn main() -> ! {
    guest_rt::println!("Bulkhead test guest: reset");
    guest_rt::exit::pass()
}
