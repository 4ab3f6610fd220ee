//! Bringing up application processors: the real-mode trampoline is copied to
//! [`AP_TRAMPOLINE_ADDR`] and each AP is woken with INIT-SIPI-SIPI through the
//! LAPIC ICR. An AP switches to long mode with the guest's page tables and
//! runs the function given to [`start_ap`].

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::apic::{lapic_id, send_ipi};
use crate::entry::{AP_STACK_SIZE, MAX_CPUS};

/// Physical address of the AP trampoline (SIPI vector 0x08). Below 1 MiB
/// and clear of the VMM's boot structures (0x500 GDT, 0x7000 zero page,
/// 0x9000 page tables).
pub const AP_TRAMPOLINE_ADDR: usize = 0x8000;

/// Entry point of an application processor.
pub type ApMain = fn(cpu_index: usize, apic_id: u8) -> !;

/// Stack top for the next AP, read by the trampoline.
#[no_mangle]
static guest_rt_ap_stack_top: AtomicU64 = AtomicU64::new(0);
static AP_INDEX: AtomicUsize = AtomicUsize::new(0);
static AP_MAIN: AtomicUsize = AtomicUsize::new(0);
static AP_STARTED: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    static guest_rt_trampoline_start: u8;
    static guest_rt_trampoline_end: u8;
    static guest_rt_ap_stacks: u8;
}

fn copy_trampoline() {
    let start = core::ptr::addr_of!(guest_rt_trampoline_start);
    let end = core::ptr::addr_of!(guest_rt_trampoline_end);
    let len = end as usize - start as usize;
    // SAFETY: the trampoline is `len` bytes of rodata; the destination page
    // is guest RAM the VMM leaves unused (see AP_TRAMPOLINE_ADDR).
    unsafe { core::ptr::copy_nonoverlapping(start, AP_TRAMPOLINE_ADDR as *mut u8, len) };
}

/// Starts the AP with `apic_id` as CPU number `cpu_index` (1-based; the BSP
/// is 0) running `main`, and waits until it has reached Rust code or about
/// `spins` polls have passed. Returns whether it arrived.
pub fn start_ap(cpu_index: usize, apic_id: u8, main: ApMain, spins: u32) -> bool {
    if cpu_index == 0 || cpu_index >= MAX_CPUS {
        return false;
    }
    copy_trampoline();
    let stacks = core::ptr::addr_of!(guest_rt_ap_stacks) as u64;
    let top = stacks + (cpu_index as u64) * AP_STACK_SIZE as u64;
    guest_rt_ap_stack_top.store(top, Ordering::SeqCst);
    AP_INDEX.store(cpu_index, Ordering::SeqCst);
    AP_MAIN.store(main as usize, Ordering::SeqCst);
    let before = AP_STARTED.load(Ordering::SeqCst);
    // INIT (assert, level), then two STARTUPs with the trampoline's page.
    send_ipi(apic_id, 0x0000_4500);
    let sipi = 0x0000_4600 | (AP_TRAMPOLINE_ADDR as u32 >> 12);
    send_ipi(apic_id, sipi);
    for round in 0..2 {
        for _ in 0..spins {
            if AP_STARTED.load(Ordering::SeqCst) != before {
                return true;
            }
            crate::port::pause();
            let _ = crate::apic::lapic_read(0x20);
        }
        if round == 0 {
            send_ipi(apic_id, sipi);
        }
    }
    AP_STARTED.load(Ordering::SeqCst) != before
}

#[no_mangle]
extern "C" fn guest_rt_ap_start() -> ! {
    crate::idt::load();
    crate::apic::lapic_init();
    let index = AP_INDEX.load(Ordering::SeqCst);
    let main = AP_MAIN.load(Ordering::SeqCst);
    AP_STARTED.fetch_add(1, Ordering::SeqCst);
    if main == 0 {
        crate::port::halt_forever();
    }
    // SAFETY: `start_ap` stores a valid `ApMain` before sending the SIPI.
    let main: ApMain = unsafe { core::mem::transmute(main) };
    main(index, lapic_id())
}
