//! Interrupt descriptor table: one assembly stub per vector, a common
//! save/restore path, per-vector handlers for device interrupts and a
//! report-and-fail path for CPU exceptions.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A handler for one interrupt vector (runs with interrupts off; the LAPIC
/// EOI is sent after it returns).
pub type Handler = fn(vector: u8);
/// A hook for CPU exceptions; returning from it fails the test as usual.
pub type ExceptionHook = fn(vector: u8, frame: &Frame);

/// The stack frame an interrupt stub leaves for the Rust handler.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    /// Vector number.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error: u64,
    /// Interrupted instruction pointer.
    pub rip: u64,
    /// Interrupted code segment.
    pub cs: u64,
    /// Interrupted flags.
    pub rflags: u64,
    /// Interrupted stack pointer.
    pub rsp: u64,
    /// Interrupted stack segment.
    pub ss: u64,
}

/// The spurious-interrupt vector programmed into the LAPIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static EXCEPTION_HOOK: AtomicUsize = AtomicUsize::new(0);

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 512]>);
// SAFETY: the IDT is written only by `init`, on the boot CPU, before any
// other CPU runs or any interrupt is enabled.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

global_asm!(
    r#"
    .text
    .p2align 4
    .global guest_rt_isr_stubs
guest_rt_isr_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp guest_rt_isr_common
    .set vec, vec + 1
    .endr

guest_rt_isr_common:
    cld
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq 72(%rsp), %rdi
    leaq 72(%rsp), %rsi
    pushq %rbp
    movq %rsp, %rbp
    andq $-16, %rsp
    call guest_rt_interrupt
    movq %rbp, %rsp
    popq %rbp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp
    iretq
"#,
    options(att_syntax)
);

extern "C" {
    static guest_rt_isr_stubs: u8;
}

/// Fills and loads the IDT (boot CPU).
pub fn init() {
    let stubs = core::ptr::addr_of!(guest_rt_isr_stubs) as u64;
    let idt = IDT.0.get();
    for v in 0..256u64 {
        let addr = stubs + v * 16;
        let low = (addr & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((addr >> 16) & 0xffff) << 48;
        let high = addr >> 32;
        // SAFETY: single-threaded initialisation before interrupts are on
        // (see `Idt`); indices are in bounds.
        unsafe { (*idt)[(2 * v) as usize] = low };
        // SAFETY: as above.
        unsafe { (*idt)[(2 * v + 1) as usize] = high };
    }
    load();
}

/// Loads the (already filled) IDT on the calling CPU.
pub fn load() {
    let idtr = Idtr {
        limit: 4095,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is fully initialised and lives forever.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(nostack, readonly)) };
}

/// Loads an empty IDT: the next exception triple-faults the CPU.
pub fn load_null() {
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately makes every interrupt undeliverable; only the
    // reset test calls this, right before it faults on purpose.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(nostack, readonly)) };
}

/// Installs `handler` for `vector` (32..=254).
pub fn set_handler(vector: u8, handler: Handler) {
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
}

/// Installs a hook called on CPU exceptions before the test fails.
pub fn set_exception_hook(hook: ExceptionHook) {
    EXCEPTION_HOOK.store(hook as usize, Ordering::Release);
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "rsvd", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "rsvd", "rsvd", "rsvd", "rsvd",
    "rsvd", "rsvd", "#HV", "#VC", "#SX", "rsvd",
];

#[no_mangle]
extern "C" fn guest_rt_interrupt(vector: u64, frame: *const Frame) {
    let vector = (vector & 0xff) as u8;
    if vector < 32 {
        // SAFETY: the stub passes a pointer to the frame it just built.
        let frame = unsafe { &*frame };
        let hook = EXCEPTION_HOOK.load(Ordering::Acquire);
        if hook != 0 {
            // SAFETY: only `set_exception_hook` stores non-zero values, and
            // it stores valid `ExceptionHook` pointers.
            let hook: ExceptionHook = unsafe { core::mem::transmute(hook) };
            hook(vector, frame);
        }
        crate::serial::force_unlock();
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
        crate::println!(
            "exception {} ({}) error {:#x} at rip {:#x} rsp {:#x} cr2 {:#x}",
            vector,
            EXCEPTION_NAMES[usize::from(vector)],
            frame.error,
            frame.rip,
            frame.rsp,
            cr2
        );
        crate::fail!(
            "exception {} at {:#x}",
            EXCEPTION_NAMES[usize::from(vector)],
            frame.rip
        );
    }
    if vector == SPURIOUS_VECTOR {
        return;
    }
    let h = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `set_handler` stores non-zero values, and it stores
        // valid `Handler` pointers.
        let h: Handler = unsafe { core::mem::transmute(h) };
        h(vector);
    }
    crate::apic::eoi();
}
