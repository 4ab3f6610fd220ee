//! Running the page loops in ring 3.
//!
//! The nested KVM of the development machines emulates guest kernel code
//! instruction by instruction (~10,000 times slower than native: a 4 KiB
//! page takes milliseconds to write from ring 0) while user code runs
//! natively. So the guest keeps its logic in ring 0 and hands each batch of
//! pages to a ring-3 function:
//!
//! - [`init`] loads a GDT with user segments and a TSS (RSP0: the stack
//!   interrupts taken in ring 3 land on), sets the U bit in guest-rt's
//!   identity map, and hooks guest-rt's exception path for the way back;
//! - [`call`] saves the kernel's callee-saved registers and stack pointer,
//!   enters `entry(arg)` in ring 3 with `iretq` (interrupts on, IOPL 0), and
//!   returns once that function calls [`exit`], with interrupts on again.
//!
//! The way back is a `ud2` at a known address: on that nested KVM, ring 0
//! reached by `syscall` still fails privilege checks (`sti` raises #GP) and
//! `int 0x80` through a DPL-3 gate raises #UD, while exceptions from ring 3
//! are delivered correctly. The exception hook recognises the `ud2` and
//! resumes the saved kernel context; any other exception still fails the
//! test with guest-rt's report.
//!
//! The ring-3 function does no I/O and no privileged instruction: it works
//! on memory and reports through `arg`.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut};

use guest_rt::idt::Frame;

extern "C" {
    static guest_rt_pml4: u8;
    fn dirty_user_call(entry: u64, arg: u64, stack_top: u64);
    fn dirty_user_return() -> !;
    fn dirty_user_exit() -> !;
}

/// Kernel code, kernel data (guest-rt's), 32-bit code (unused), user data,
/// user code, TSS (two slots).
const GDT_ENTRIES: usize = 8;
const USER_DATA: u64 = 0x20 | 3;
const USER_CODE: u64 = 0x28 | 3;
const TSS_SELECTOR: u16 = 0x30;
const TSS_SIZE: u64 = 104;
const STACK_SIZE: usize = 64 * 1024;
const UD: u8 = 6;
const PTE_USER: u64 = 4;

#[repr(C, align(16))]
struct Tables {
    gdt: [u64; GDT_ENTRIES],
    tss: [u8; TSS_SIZE as usize],
}

#[repr(C, align(4096))]
struct Stack([u8; STACK_SIZE]);

/// Memory only [`init`] and the CPU touch.
struct Cpu<T>(UnsafeCell<T>);
// SAFETY: the guest runs on one CPU; `init` writes these once before any
// user code runs, and afterwards only the CPU (TSS busy bit, stacks) does.
unsafe impl<T> Sync for Cpu<T> {}

static TABLES: Cpu<Tables> = Cpu(UnsafeCell::new(Tables {
    gdt: [
        0,
        0x00af_9a00_0000_ffff, // 0x08: kernel code64 (as guest-rt's)
        0x00cf_9200_0000_ffff, // 0x10: kernel data
        0x00cf_9a00_0000_ffff, // 0x18: code32 (as guest-rt's)
        0x00cf_f200_0000_ffff, // 0x20: user data, DPL 3
        0x00af_fa00_0000_ffff, // 0x28: user code64, DPL 3
        0,                     // 0x30: TSS, filled by `init`
        0,
    ],
    tss: [0; TSS_SIZE as usize],
}));
static INTERRUPT_STACK: Cpu<Stack> = Cpu(UnsafeCell::new(Stack([0; STACK_SIZE])));
static USER_STACK: Cpu<Stack> = Cpu(UnsafeCell::new(Stack([0; STACK_SIZE])));

global_asm!(
    r#"
    .section .data.dirty_user, "aw"
    .p2align 3
dirty_kernel_rsp:
    .quad 0

    .text
    /* dirty_user_call(entry, arg, stack_top): enter entry(arg) in ring 3. */
    .global dirty_user_call
dirty_user_call:
    cli
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + dirty_kernel_rsp], rsp
    push {user_data}
    push rdx
    push 0x202
    push {user_code}
    push rdi
    mov rdi, rsi
    iretq

    /* Ring 3 ends here (see on_exception). */
    .global dirty_user_exit
dirty_user_exit:
    ud2

    /* Back to the caller of dirty_user_call, on its stack (interrupts
       off: the exception came through an interrupt gate). */
    .global dirty_user_return
dirty_user_return:
    mov rsp, [rip + dirty_kernel_rsp]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#,
    user_data = const USER_DATA,
    user_code = const USER_CODE,
);

/// Prepares ring 3: GDT + TSS, user-accessible identity map, the exit
/// hook.
pub fn init() {
    let t = TABLES.0.get();
    let stack_top = INTERRUPT_STACK.0.get() as u64 + STACK_SIZE as u64;
    // SAFETY: single CPU, before any user code: nothing else uses TABLES.
    unsafe {
        let tss = addr_of_mut!((*t).tss) as u64;
        // RSP0 at offset 4; I/O map base past the end (no I/O bitmap).
        core::ptr::write_unaligned((tss + 4) as *mut u64, stack_top);
        core::ptr::write_unaligned((tss + 102) as *mut u16, TSS_SIZE as u16);
        (*t).gdt[6] = ((TSS_SIZE - 1) & 0xffff)
            | (tss & 0xff_ffff) << 16
            | 0x89 << 40 // present, 64-bit TSS (available)
            | ((tss >> 24) & 0xff) << 56;
        (*t).gdt[7] = tss >> 32;
    }
    #[repr(C, packed)]
    struct Gdtr {
        limit: u16,
        base: u64,
    }
    let gdtr = Gdtr {
        limit: (GDT_ENTRIES * 8 - 1) as u16,
        // SAFETY: only the address is taken.
        base: unsafe { addr_of!((*t).gdt) } as u64,
    };
    // SAFETY: the new GDT keeps guest-rt's selectors 0x08/0x10 (the ones
    // loaded) identical and lives forever; the TSS descriptor is valid.
    unsafe {
        asm!("lgdt [{}]", in(reg) &gdtr, options(readonly, nostack));
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
    user_accessible_identity_map();
    guest_rt::idt::set_exception_hook(on_exception);
}

/// Sets the U bit on every entry of guest-rt's identity map (PML4 entry 0,
/// the 4 PDPT entries, the 2048 2 MiB PD entries) and flushes the TLB.
fn user_accessible_identity_map() {
    let pml4 = addr_of!(guest_rt_pml4) as *mut u64;
    // SAFETY: guest-rt's tables are writable data in the image, laid out
    // as entry.rs builds them; only the U/S bit changes.
    unsafe {
        *pml4 |= PTE_USER;
        let pdpt = (*pml4 & !0xfff) as *mut u64;
        for i in 0..4 {
            *pdpt.add(i) |= PTE_USER;
            let pd = (*pdpt.add(i) & !0xfff) as *mut u64;
            for j in 0..512 {
                *pd.add(j) |= PTE_USER;
            }
        }
        asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack));
    }
}

/// Runs `entry(arg)` in ring 3 until it calls [`exit`]; returns with
/// interrupts on.
///
/// # Safety
/// [`init`] must have run; `entry` must only touch memory (no I/O, no
/// privileged instruction) and end with [`exit`].
pub unsafe fn call(entry: extern "C" fn(u64) -> !, arg: u64) {
    // As after a `call`: 8 below a 16-byte boundary.
    let stack_top = USER_STACK.0.get() as u64 + STACK_SIZE as u64 - 8;
    // SAFETY: per the contract above; dirty_user_call returns through
    // dirty_user_return with the callee-saved registers restored.
    unsafe { dirty_user_call(entry as *const () as u64, arg, stack_top) };
    guest_rt::port::sti();
}

/// The way back from ring 3: [`exit`]'s `ud2` at `dirty_user_exit`.
/// Anything else falls through to guest-rt's report-and-fail path.
fn on_exception(vector: u8, frame: &Frame) {
    if vector == UD && frame.cs == USER_CODE && frame.rip == dirty_user_exit as *const () as u64 {
        // SAFETY: the ring-3 code reached its exit: resume the kernel
        // context `dirty_user_call` saved, abandoning this frame (on the
        // TSS's RSP0 stack, reused from its top next time).
        unsafe { dirty_user_return() }
    }
}

/// Leaves ring 3: back to the caller of [`call`].
pub fn exit() -> ! {
    // SAFETY: jumps to the `ud2` that `on_exception` recognises.
    unsafe { asm!("jmp dirty_user_exit", options(noreturn)) }
}
