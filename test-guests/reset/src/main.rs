//! `reset`: proves the three reset paths restart the guest from its entry
//! point with RAM preserved.
//!
//! A magic value and a boot counter live at [`STATE_ADDR`] (8 MiB), outside
//! the guest image; guest RAM survives a reset. Boot 1 resets through the
//! i8042 (0xfe to port 0x64), boot 2 through the ACPI reset register (the
//! FADT's RESET_REG, else 0x0f to port 0x602), boot 3 by a triple fault (empty IDT, then `ud2`), and boot 4
//! prints the boots seen and passes. A reset request that does not take
//! effect fails the test.

#![no_std]
#![no_main]

use core::arch::asm;

use guest_rt::{exit, fail, idt, println};

guest_rt::guest!("reset", main);

/// Where the boot counter lives: guest RAM at 8 MiB, above the guest image
/// and clear of anything the VMM (or, under QEMU, the firmware) writes, so
/// the guest needs more than 8 MiB of RAM.
const STATE_ADDR: usize = 0x80_0000;
const MAGIC: u64 = 0x5445_5345_5244_4842; // "BHDRESET"
/// Port reads to wait for a requested reset before declaring it failed.
const SETTLE_READS: u32 = 20_000;

fn read_state(word: usize) -> u64 {
    // SAFETY: STATE_ADDR is identity-mapped guest RAM reserved for this test.
    unsafe { core::ptr::read_volatile((STATE_ADDR as *const u64).add(word)) }
}

fn write_state(word: usize, value: u64) {
    // SAFETY: as in `read_state`.
    unsafe { core::ptr::write_volatile((STATE_ADDR as *mut u64).add(word), value) };
}

fn main() -> ! {
    let boot = if read_state(0) == MAGIC {
        read_state(1) + 1
    } else {
        1
    };
    write_state(0, MAGIC);
    write_state(1, boot);
    println!("boot {}", boot);
    match boot {
        1 => {
            println!("resetting via i8042 (0xfe to port 0x64)");
            exit::i8042_reset();
            exit::settle(SETTLE_READS);
            write_state(0, 0);
            fail!("the i8042 reset did not happen");
        }
        2 => {
            let (reg, value) = exit::reset_reg();
            println!(
                "resetting via the ACPI reset register ({:#x} to {})",
                value, reg
            );
            reg.write8(value);
            exit::settle(SETTLE_READS);
            write_state(0, 0);
            fail!("the ACPI reset register did not reset");
        }
        3 => {
            println!("resetting via triple fault (empty IDT, ud2)");
            idt::load_null();
            // SAFETY: deliberately raises #UD with no IDT: the CPU shuts down
            // (triple fault) and the VMM resets the machine.
            unsafe { asm!("ud2", options(nomem, nostack)) };
            write_state(0, 0);
            fail!("the triple fault did not reset the machine");
        }
        4 => {
            write_state(0, 0);
            println!("boots seen: 1 (cold), 2 (after i8042 reset), 3 (after ACPI reset), 4 (after triple fault)");
            exit::pass()
        }
        n => {
            write_state(0, 0);
            fail!("unexpected boot number {}", n);
        }
    }
}
