//! The `dirty` test guest, the memory checker of the migration and
//! restore tests, proven able to fail: run through the real broker (and
//! under QEMU's microvm, the reference) with its RAM in a
//! `memory-backend-file`, it passes when nothing touches its memory, and
//! when a page is changed behind its back through that file — written back
//! with an older generation (what a migration that missed a page leaves)
//! or damaged — it fails naming that page. Needs /dev/kvm and
//! qemu-system-x86_64.

mod common;
mod dirty_common;
mod disk_common;

use std::fs::File;
use std::os::unix::fs::FileExt;

use dirty_common::{area, page_gen, verdict, wait_gen, RamFile, Vm, Vmm, PAGE};
use disk_common::SerialLog;

/// Reads the page at guest-physical `addr` (RAM starts at file offset 0)
/// until it is whole (not caught halfway through a rewrite).
fn read_whole_page(ram: &File, addr: u64) -> (Vec<u8>, u64) {
    for _ in 0..100 {
        let mut page = vec![0u8; PAGE as usize];
        ram.read_exact_at(&mut page, addr).unwrap();
        if let Ok(gen) = page_gen(&page, addr) {
            return (page, gen);
        }
    }
    panic!("page {addr:#x} never read whole");
}

/// Four pages spread over the upper half of the area (away from where
/// the guest's cursor starts a pass).
fn victims(area: (u64, u64)) -> Vec<u64> {
    let pages = (area.1 - area.0) / PAGE;
    (0..4)
        .map(|k| area.0 + (pages / 2 + k * pages / 9) * PAGE)
        .collect()
}

/// The page address a FAIL line names (`page 0xA (index I) ...`).
fn named_page(line: &str) -> u64 {
    let hex = line
        .split("page 0x")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no page in {line:?}"));
    u64::from_str_radix(hex, 16).unwrap()
}

fn passes_untouched(vmm: Vmm) {
    let ram = RamFile::new();
    let mut vm = Vm::start(
        vmm,
        &ram,
        "dirty.rounds=3 dirty.rate=16 dirty.report=200",
        &[],
    );
    let (start, end) = area(&vm.log);
    assert_eq!(verdict(&vm.log), "VERDICT: PASS dirty", "{}", vm.log.text());
    assert_eq!(vm.exit_code(), Some(1), "{}", vm.log.text());
    let text = vm.log.text();
    for g in 1..=3 {
        assert!(text.contains(&format!("dirty: gen {g}: ")), "{text}");
    }
    let pages = (end - start) / PAGE;
    assert!(
        text.contains(&format!("dirty: all {pages} pages verified at gen 3")),
        "{text}"
    );
    // The RAM file holds what the guest says: every page at gen 3.
    let ram = ram.open();
    for addr in (start..end).step_by(PAGE as usize * 97) {
        let (_, gen) = read_whole_page(&ram, addr);
        assert_eq!(gen, 3, "page {addr:#x}");
    }
}

fn catches_stale_page(vmm: Vmm) {
    // 16 MiB at 8 pages/ms: a pass every ~0.5 s.
    let ram = RamFile::new();
    let vm = Vm::start(vmm, &ram, "dirty.mb=16 dirty.rate=8 dirty.rounds=0", &[]);
    let area = area(&vm.log);
    wait_gen(&vm.log, 2);
    let ram = ram.open();
    let old: Vec<(u64, Vec<u8>, u64)> = victims(area)
        .into_iter()
        .map(|addr| {
            let (page, gen) = read_whole_page(&ram, addr);
            (addr, page, gen)
        })
        .collect();
    // Every victim has been rewritten since (a newer generation), then
    // the old copies go back, as if a migration had not carried them.
    let newest = old.iter().map(|v| v.2).max().unwrap();
    wait_gen(&vm.log, newest + 1);
    for (addr, page, _) in &old {
        ram.write_all_at(page, *addr).unwrap();
    }
    let line = verdict(&vm.log);
    assert!(
        line.starts_with("VERDICT: FAIL dirty: page 0x"),
        "{}",
        vm.log.text()
    );
    let named = named_page(&line);
    let (_, _, gen) = old
        .iter()
        .find(|v| v.0 == named)
        .unwrap_or_else(|| panic!("{line:?} names none of the pages written back"));
    assert!(
        line.contains(&format!("stale: generation {gen}, expected ")),
        "{line}"
    );
    finish_failed(vm);
}

fn finish_failed(mut vm: Vm) {
    assert_eq!(vm.exit_code(), Some(3), "{}", vm.log.text());
}

#[test]
fn dirty_guest_passes_when_nothing_touches_its_memory() {
    passes_untouched(Vmm::Bulkhead);
}

#[test]
fn dirty_guest_names_a_page_written_back_with_an_older_generation() {
    catches_stale_page(Vmm::Bulkhead);
}

#[test]
fn idle_dirty_guest_names_a_damaged_word_on_its_next_read_only_pass() {
    // Rate 0: written once, then only read back (every 200 ms).
    let ram = RamFile::new();
    let vm = Vm::start(
        Vmm::Bulkhead,
        &ram,
        "dirty.mb=16 dirty.rate=0 dirty.verify=200 dirty.rounds=0",
        &[],
    );
    let area = area(&vm.log);
    wait_gen(&vm.log, 1);
    // Two read-only passes went through before the damage.
    let passes = |log: &SerialLog| log.text().matches("pages verified in").count();
    while passes(&vm.log) < 2 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ram = ram.open();
    let addr = victims(area)[1];
    let mut word = [0u8; 8];
    ram.read_exact_at(&mut word, addr + 100 * 8).unwrap();
    let good = u64::from_le_bytes(word);
    ram.write_all_at(&(good ^ 0x10).to_le_bytes(), addr + 100 * 8)
        .unwrap();
    let line = verdict(&vm.log);
    assert_eq!(
        line,
        format!(
            "VERDICT: FAIL dirty: page {addr:#x} (index {}) word 100 is {:#018x}, expected {good:#018x}",
            (addr - area.0) / PAGE,
            good ^ 0x10
        ),
        "{}",
        vm.log.text()
    );
    finish_failed(vm);
}

#[test]
fn dirty_guest_passes_under_qemu_microvm() {
    passes_untouched(Vmm::Qemu);
}

#[test]
fn dirty_guest_names_a_stale_page_under_qemu_microvm() {
    catches_stale_page(Vmm::Qemu);
}

#[test]
fn dirty_guest_refuses_an_area_larger_than_its_ram() {
    let ram = RamFile::new();
    let mut vm = Vm::start(Vmm::Bulkhead, &ram, "dirty.mb=64", &[]);
    let line = verdict(&vm.log);
    assert!(
        line.starts_with("VERDICT: FAIL dirty: dirty.mb=64: only 62 MiB of RAM above the image"),
        "{line}"
    );
    assert_eq!(vm.exit_code(), Some(3));
}
