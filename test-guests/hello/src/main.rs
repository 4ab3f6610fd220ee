//! `hello`: prints a banner, then echoes serial input back (interrupt driven
//! through IOAPIC pin 4, with polling as a fallback). The line `exit` ends the
//! test with a PASS verdict. This is the demo's default guest.

#![no_std]
#![no_main]

use guest_rt::apic::{ioapic_route, lapic_id, Trigger};
use guest_rt::serial::{self, write_byte};
use guest_rt::{idt, port, println};

const SERIAL_VECTOR: u8 = 0x24;

guest_rt::guest!("hello", main);

fn on_serial(_vector: u8) {}

fn main() -> ! {
    idt::set_handler(SERIAL_VECTOR, on_serial);
    ioapic_route(serial::COM1_GSI, SERIAL_VECTOR, Trigger::Edge, lapic_id());
    serial::enable_rx_interrupt();
    println!("echoing serial input; type 'exit' to finish");
    let mut line = [0u8; 8];
    let mut len = 0usize;
    loop {
        while let Some(b) = serial::try_read_byte() {
            match b {
                b'\r' | b'\n' => {
                    write_byte(b'\r');
                    write_byte(b'\n');
                    if &line[..len] == b"exit" {
                        guest_rt::exit::pass();
                    }
                    len = 0;
                }
                _ => {
                    write_byte(b);
                    if len < line.len() {
                        line[len] = b;
                        len += 1;
                    } else {
                        len = line.len();
                        line[0] = 0;
                    }
                }
            }
        }
        port::wait_for_interrupt();
    }
}
