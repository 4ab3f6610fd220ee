//! `smp`: proves every CPU the firmware tables list can be started.
//!
//! The BSP reads the CPU list from the ACPI MADT (RSDP found in
//! 0xe0000..0x100000, XSDT → APIC), or from the MP table if there is no ACPI,
//! then wakes each AP with INIT-SIPI-SIPI. APs enter at the real-mode
//! trampoline (0x8000), switch straight to long mode and print
//! `cpu N online (apic id X)`. PASS when all of them arrived; FAIL if
//! neither table exists or an AP does not start.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicUsize, Ordering};

use guest_rt::{acpi, apic, fail, port, println, smp};

guest_rt::guest!("smp", main);

/// Polls (each a LAPIC read, i.e. one VM exit) to wait per SIPI.
const SPINS_PER_SIPI: u32 = 200_000;

static ONLINE: AtomicUsize = AtomicUsize::new(0);
static WRONG_ID: AtomicUsize = AtomicUsize::new(0);
static EXPECTED_ID: [AtomicUsize; guest_rt::entry::MAX_CPUS] =
    [const { AtomicUsize::new(0) }; guest_rt::entry::MAX_CPUS];

fn ap_main(cpu: usize, apic_id: u8) -> ! {
    println!("cpu {} online (apic id {})", cpu, apic_id);
    if EXPECTED_ID[cpu].load(Ordering::SeqCst) != usize::from(apic_id) {
        WRONG_ID.fetch_add(1, Ordering::SeqCst);
    }
    ONLINE.fetch_add(1, Ordering::SeqCst);
    port::halt_forever()
}

fn main() -> ! {
    let machine = acpi::discover();
    let source = match machine.source {
        acpi::Source::Madt => "ACPI MADT",
        acpi::Source::MpTable => "MP table",
        acpi::Source::None => fail!("neither an ACPI MADT nor an MP table lists the cpus"),
    };
    let bsp = apic::lapic_id();
    println!(
        "{} cpus listed in the {}; boot cpu apic id {}",
        machine.cpus, source, bsp
    );
    if machine.truncated {
        println!(
            "more cpus listed than supported ({}); starting the first ones",
            guest_rt::entry::MAX_CPUS
        );
    }
    if !machine.apic_ids[..machine.cpus].contains(&bsp) {
        fail!("the boot cpu (apic id {}) is not in the {}", bsp, source);
    }
    println!("cpu 0 online (apic id {})", bsp);
    let mut index = 0;
    for &id in &machine.apic_ids[..machine.cpus] {
        if id == bsp {
            continue;
        }
        index += 1;
        EXPECTED_ID[index].store(usize::from(id), Ordering::SeqCst);
        if !smp::start_ap(index, id, ap_main, SPINS_PER_SIPI) {
            fail!("cpu {} (apic id {}) did not start", index, id);
        }
    }
    while ONLINE.load(Ordering::SeqCst) < index {
        port::pause();
    }
    if WRONG_ID.load(Ordering::SeqCst) != 0 {
        fail!("an AP reported an unexpected APIC ID");
    }
    println!("all {} cpus online", index + 1);
    guest_rt::exit::pass()
}
