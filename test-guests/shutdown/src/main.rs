#![no_std]
#![no_main]

guest_rt::guest!("shutdown", main);

fn main() -> ! {
    guest_rt::println!("Bulkhead test guest: shutdown");
    guest_rt::exit::pass()
}
