#![no_std]
#![no_main]

guest_rt::guest!("poweroff", main);

fn main() -> ! {
    guest_rt::println!("Bulkhead test guest: poweroff");
    guest_rt::exit::pass()
}
