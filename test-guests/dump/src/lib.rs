//! What the `dump` guests share: the marker page at guest-physical
//! 0x0600_0000 (a 32-byte banner, then byte `i` = `(i * 7 + 3) & 0xff`),
//! known values in R12, R13 and R14, and a halt with interrupts off for
//! good: the VM keeps running, the vCPU's registers stay put, so a core's
//! notes can be checked against them.
//!
//! Serial lines (the tests and `scripts/bench-dump` parse them):
//! - `marker at 0x6000000`
//! - `halt loop at 0xA..0xB r12=0x.. r13=0x.. r14=0x..`, then `halted`
//!   once R12-R14 hold those values; from then on RIP is in `[A, B)`.

#![no_std]

use guest_rt::println;

/// Guest-physical address of the marker page.
pub const MARKER_GPA: usize = 0x0600_0000;
const BANNER: &[u8; 32] = b"BULKHEAD DUMP MARKER 0123456789\n";
const R12: u64 = 0x1234_5678_9abc_def0;
const R13: u64 = 0x0bad_cafe_dead_beef;
const R14: u64 = MARKER_GPA as u64;

// Sets the registers, prints `halted` straight to COM1 (no register of
// the three touched), then halts for good. RIP stays in
// [dump_halt_print, dump_halt_end) from the first byte of `halted` on.
core::arch::global_asm!(
    ".global dump_halt",
    "dump_halt:",
    "mov r12, rdi",
    "mov r13, rsi",
    "mov r14, rdx",
    "cli",
    "lea rsi, [rip + dump_halted_msg]",
    "mov dx, 0x3f8",
    ".global dump_halt_print",
    "dump_halt_print:",
    "mov al, byte ptr [rsi]",
    "test al, al",
    "jz dump_halt_loop",
    "out dx, al",
    "inc rsi",
    "jmp dump_halt_print",
    ".global dump_halt_loop",
    "dump_halt_loop:",
    "hlt",
    "jmp dump_halt_loop",
    ".global dump_halt_end",
    "dump_halt_end:",
    ".section .rodata",
    "dump_halted_msg:",
    ".asciz \"halted\\r\\n\"",
    ".text",
);

extern "C" {
    fn dump_halt(r12: u64, r13: u64, r14: u64) -> !;
    static dump_halt_print: u8;
    static dump_halt_end: u8;
}

/// Writes the marker page, reports, and halts with the known registers.
pub fn mark_and_halt() -> ! {
    let page = MARKER_GPA as *mut u8;
    for i in 0..4096usize {
        let b = if i < BANNER.len() {
            BANNER[i]
        } else {
            (i.wrapping_mul(7).wrapping_add(3) & 0xff) as u8
        };
        // SAFETY: the boot page tables identity-map the first 4 GiB and
        // the tests give the guest more than 96 MiB + 4 KiB of RAM, which
        // nothing else uses.
        unsafe { page.add(i).write_volatile(b) };
    }
    println!("marker at {:#x}", MARKER_GPA);
    // Only the addresses of the two labels are taken.
    let (start, end) = (
        core::ptr::addr_of!(dump_halt_print) as u64,
        core::ptr::addr_of!(dump_halt_end) as u64,
    );
    println!(
        "halt loop at {:#x}..{:#x} r12={:#x} r13={:#x} r14={:#x}",
        start, end, R12, R13, R14
    );
    // SAFETY: dump_halt only sets registers and halts; it never returns.
    unsafe { dump_halt(R12, R13, R14) }
}
