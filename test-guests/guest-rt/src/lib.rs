//! Runtime of the Bulkhead test guests.
//!
//! A test guest is a `#![no_std]`, `#![no_main]` binary that calls
//! [`guest!`] with its name and main function. The runtime boots it (from the
//! 64-bit ELF entry or the PVH entry), sets up serial, the IDT and the local
//! APIC, prints the banner `Bulkhead test guest: <name>`, and turns panics
//! and CPU exceptions into a `VERDICT: FAIL` line plus a debug-exit.
//!
//! Modules:
//! - [`entry`]: boot assembly, GDT, page tables, stacks, AP trampoline
//! - [`port`]: port I/O, TSC, `hlt`
//! - [`serial`]: 16550 driver and `print!`/`println!`
//! - [`exit`]: verdicts, debug exit, ACPI power-off/reset, i8042 reset
//! - [`idt`]: interrupt vectors and handlers
//! - [`apic`]: LAPIC and IOAPIC
//! - [`acpi`]: RSDP/MADT and MP table parsing
//! - [`bootinfo`]: the kernel command line and RAM map the loader passed
//! - [`smp`]: INIT-SIPI-SIPI AP start-up
//! - [`mem`]: `memcpy` and friends
//! - [`virtio`]: virtio-mmio transport and split virtqueue

#![no_std]

pub mod acpi;
pub mod apic;
pub mod bootinfo;
pub mod entry;
pub mod exit;
pub mod idt;
pub mod mem;
pub mod port;
pub mod serial;
pub mod smp;
pub mod virtio;

extern "Rust" {
    fn guest_rt_name() -> &'static str;
    fn guest_rt_main() -> !;
}

/// The guest's name, as given to [`guest!`].
pub fn guest_name() -> &'static str {
    // SAFETY: `guest!` defines this function in every guest binary.
    unsafe { guest_rt_name() }
}

/// Declares the guest: its name (used in verdict lines) and its main function
/// (`fn() -> !`), called once the runtime is initialised.
#[macro_export]
macro_rules! guest {
    ($name:literal, $main:path) => {
        #[no_mangle]
        fn guest_rt_name() -> &'static str {
            $name
        }
        #[no_mangle]
        fn guest_rt_main() -> ! {
            $main()
        }
    };
}

#[no_mangle]
extern "C" fn guest_rt_start() -> ! {
    serial::init();
    // The banner comes first, before the slower set-up, so that the time to
    // the first serial byte measures the boot path alone.
    println!("Bulkhead test guest: {}", guest_name());
    idt::init();
    apic::lapic_init();
    // SAFETY: `guest!` defines `guest_rt_main` in every guest binary.
    unsafe { guest_rt_main() }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    port::cli();
    serial::force_unlock();
    println!("panic: {}", info);
    exit::fail(format_args!("panic"))
}
