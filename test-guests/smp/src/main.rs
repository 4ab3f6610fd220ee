#![no_std]
#![no_main]

guest_rt::guest!("smp", main);

fn main() -> ! {
    guest_rt::println!("Bulkhead test guest: smp");
    guest_rt::exit::pass()
}
