#![no_std]
#![no_main]

guest_rt::guest!("crash", main);

fn main() -> ! {
    guest_rt::println!("Bulkhead test guest: crash");
    guest_rt::exit::pass()
}
