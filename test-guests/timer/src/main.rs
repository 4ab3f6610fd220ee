#![no_std]
#![no_main]

guest_rt::guest!("timer", main);

fn main() -> ! {
    guest_rt::println!("Bulkhead test guest: timer");
    guest_rt::exit::pass()
}
