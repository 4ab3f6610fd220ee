//! `poweroff`: proves guest-initiated power-off. Prints the banner and
//! `powering off via <register>`, then writes SLP_EN | SLP_TYP(5) to the
//! ACPI sleep control register (the FADT's, else port 0x600). No debug exit:
//! the VM must end by powering off; if it is still running afterwards the
//! test fails.

#![no_std]
#![no_main]

use guest_rt::{exit, fail, println};

guest_rt::guest!("poweroff", main);

/// Port reads to wait for the power-off to take effect.
const SETTLE_READS: u32 = 20_000;

fn main() -> ! {
    let reg = exit::sleep_control_reg();
    println!("powering off via {}", reg);
    reg.write8(exit::SLEEP_S5);
    exit::settle(SETTLE_READS);
    fail!("still running after writing S5 to the sleep control register")
}
