//! `crash`: makes KVM give up on the guest so the VMM's "internal error →
//! guest crash report" path can be tested. Prints `about to crash`, then
//! executes `xgetbv`, which the emulating nested KVM of the development
//! machines cannot handle. Where `xgetbv` runs natively it raises #UD
//! (CR4.OSXSAVE is off); the #UD hook then jumps to [`UNBACKED`], an address
//! with neither RAM nor a device, and instruction fetch from there is an
//! emulation failure on any KVM. If the guest survives both, it fails.

#![no_std]
#![no_main]

use core::arch::asm;

use guest_rt::idt::{self, Frame};
use guest_rt::{fail, println};

guest_rt::guest!("crash", main);

/// Guest-physical address with no RAM and no device behind it.
pub const UNBACKED: u64 = 0xdead_0000;

fn jump_to_unbacked() -> ! {
    // SAFETY: deliberately transfers control to an address with no memory
    // behind it; the VM is expected to stop right here.
    unsafe { asm!("jmp {}", in(reg) UNBACKED, options(noreturn)) }
}

fn on_exception(vector: u8, frame: &Frame) {
    println!(
        "exception {} at {:#x}; executing from unbacked address {:#x}",
        vector, frame.rip, UNBACKED
    );
    jump_to_unbacked()
}

fn main() -> ! {
    idt::set_exception_hook(on_exception);
    println!("about to crash");
    // SAFETY: `xgetbv` with ECX = 0 reads XCR0 or raises #UD, which the hook
    // above turns into a jump to unbacked memory.
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") _, out("edx") _, options(nomem, nostack)) };
    println!(
        "xgetbv returned; executing from unbacked address {:#x}",
        UNBACKED
    );
    jump_to_unbacked();
    #[allow(unreachable_code)]
    {
        fail!("survived executing from unbacked memory")
    }
}
