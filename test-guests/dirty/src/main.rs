//! `dirty`: the guest of the migration and restore tests. It keeps
//! rewriting a large area of its RAM with self-describing pages
//! ([`page`]: address, generation, pattern, checksum) at a known rate and
//! checks every page each time it comes back to it, so a page that a
//! migration or a restore failed to carry (stale generation), carried to
//! the wrong place or damaged is reported.
//!
//! Parameters (kernel command line, `-append`; defaults in brackets):
//! - `dirty.mb=N`: size of the area in MiB [all RAM above the image, below
//!   4 GiB]; the area starts at the first MiB boundary above the image;
//! - `dirty.rate=N`: pages rewritten per ms [32]; 0 = idle: the area is
//!   written once, then only read back every `dirty.verify` ms;
//! - `dirty.rounds=N`: passes over the area before the final check and
//!   the verdict [3]; 0 = run until the VM is stopped;
//! - `dirty.report=N`: ms between `dirty: at` progress lines [1000];
//!   0 = none;
//! - `dirty.verify=N`: ms between read-only passes when idle [1000].
//!
//! Pass 1 writes generation 1 as fast as it can (so the whole area holds
//! data early). Pass g > 1 walks the area at `rate` pages per ms (LAPIC
//! timer, 10 ms ticks), checks that each page still holds generation g - 1 and
//! writes generation g. Pages before the cursor hold the current
//! generation, the others the previous one, so every page can be checked
//! at any moment; all state lives in RAM, so it travels with the VM.
//!
//! The page loops run in ring 3 ([`user`]: kernel code is emulated
//! instruction by instruction on the nested KVM of the development
//! machines, user code runs natively), one batch per timer tick.
//!
//! Lines (CR LF):
//! - `dirty: N pages (M MiB) at 0xA..0xB, rate R pages/ms, rounds K`
//! - `dirty: gen 1: N pages written in T ms`
//! - `dirty: gen G: N pages verified and rewritten in T ms` (rate > 0)
//! - `dirty: gen G: N pages verified in T ms` (idle, each read-only pass)
//! - `dirty: at T ms: writing gen G, page P of N` (every `dirty.report`
//!   ms), `dirty: at T ms: idle at gen G` when idle
//! - `dirty: all N pages verified at gen G`, then `VERDICT: PASS dirty`
//! - `VERDICT: FAIL dirty: page 0xA (index I) <what>` for the first bad page
//!   (`stale: generation 3, expected 4`, `word 17 is .., expected ..`,
//!   `checksum ..`, `holds address ..`).

#![no_std]
#![no_main]

mod batch;
mod page;
mod user;

use core::ptr::addr_of;
use core::sync::atomic::{AtomicU64, Ordering};

use batch::Job;
use guest_rt::{apic, bootinfo, fail, idt, port, println};
use page::PAGE_SIZE;

guest_rt::guest!("dirty", main);

const TICK_VECTOR: u8 = 0x30;
/// Timer period; every tick costs ~1000 emulated kernel instructions.
const TICK_MS: u64 = 10;
/// 10 ms at KVM's 1 GHz APIC bus with divide-by-16.
const TICK_COUNT: u32 = 625_000;
/// Most pages owed after a stall (the VM stopped, a slow host), in ms of
/// the rate: the guest does not catch up in one burst.
const MAX_BURST_MS: u64 = 2 * TICK_MS;
/// Pages per ring-3 batch of the first pass and of the read-only passes
/// (16 MiB), so progress lines come between them.
const UNPACED_BATCH: u64 = 4096;
const MIB: u64 = 1 << 20;
/// End of the identity map built by guest-rt.
const MAPPED_END: u64 = 4 << 30;

static TICKS: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __image_end: u8;
}

fn on_tick(_vector: u8) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds since the timer started (in steps of `TICK_MS`).
fn now_ms() -> u64 {
    TICKS.load(Ordering::Relaxed) * TICK_MS
}

/// Halts until the next interrupt, with interrupts on while the guest runs.
fn wait() {
    port::wait_for_interrupt();
    port::sti();
}

fn number(key: &str, default: u64) -> u64 {
    match bootinfo::param(key) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => fail!("{}={}: not a number", key, v),
        },
    }
}

/// The command-line parameters (see the crate documentation).
struct Params {
    mb: Option<u64>,
    rate: u64,
    rounds: u64,
    report_ms: u64,
    verify_ms: u64,
}

impl Params {
    fn parse() -> Self {
        let mb = bootinfo::param("dirty.mb").map(|_| number("dirty.mb", 0));
        Params {
            mb,
            rate: number("dirty.rate", 32),
            rounds: number("dirty.rounds", 3),
            report_ms: number("dirty.report", 1000),
            verify_ms: number("dirty.verify", 1000).max(1),
        }
    }
}

/// The pages the guest dirties: `pages` pages from `start`.
struct Area {
    start: u64,
    pages: u64,
}

impl Area {
    /// The area of `mb` MiB (or all RAM) above the image, from the
    /// loader's memory map.
    fn find(mb: Option<u64>) -> Self {
        let image_end = addr_of!(__image_end) as u64;
        let start = image_end.next_multiple_of(MIB);
        let Some((base, len)) =
            bootinfo::ram_regions().find(|&(s, l)| s <= image_end && image_end < s + l)
        else {
            fail!(
                "the memory map has no RAM region holding the image (end {:#x})",
                image_end
            )
        };
        let end = (base + len).min(MAPPED_END) & !(PAGE_SIZE - 1);
        let avail = end.saturating_sub(start) / PAGE_SIZE;
        let pages = match mb {
            None => avail,
            Some(0) => fail!("dirty.mb=0: the area must hold at least 1 MiB"),
            Some(mb) if mb.saturating_mul(MIB / PAGE_SIZE) > avail => fail!(
                "dirty.mb={}: only {} MiB of RAM above the image ({:#x}..{:#x})",
                mb,
                avail * PAGE_SIZE / MIB,
                start,
                end
            ),
            Some(mb) => mb * (MIB / PAGE_SIZE),
        };
        if pages == 0 {
            fail!("no RAM above the image (end {:#x})", image_end);
        }
        Area { start, pages }
    }

    fn addr(&self, index: u64) -> u64 {
        self.start + index * PAGE_SIZE
    }
}

/// Where the walk over the area stands: pages `[0, cursor)` hold `gen`,
/// pages `[cursor, pages)` hold `gen - 1` (0: never written).
struct Walk {
    area: Area,
    gen: u64,
    cursor: u64,
    round_start_ms: u64,
}

impl Walk {
    /// Runs `job` on pages `[first, first + count)`; fails the test on the
    /// first bad page.
    fn run(&self, first: u64, count: u64, check: u64, write: u64) {
        let mut job = Job {
            area_start: self.area.start,
            first,
            count,
            check,
            write,
            bad: None,
        };
        if let Some((index, bad)) = job.execute() {
            fail!(
                "page {:#x} (index {}) {}",
                self.area.addr(index),
                index,
                bad
            );
        }
    }

    /// Checks (after the first pass) and rewrites up to `n` pages from the
    /// cursor, not past the end of the area; true when that ended a pass.
    fn advance(&mut self, n: u64) -> bool {
        let n = n.min(self.area.pages - self.cursor);
        self.run(self.cursor, n, self.gen - 1, self.gen);
        self.cursor += n;
        if self.cursor < self.area.pages {
            return false;
        }
        let took = now_ms() - self.round_start_ms;
        if self.gen == 1 {
            println!(
                "dirty: gen 1: {} pages written in {} ms",
                self.area.pages, took
            );
        } else {
            println!(
                "dirty: gen {}: {} pages verified and rewritten in {} ms",
                self.gen, self.area.pages, took
            );
        }
        self.gen += 1;
        self.cursor = 0;
        self.round_start_ms = now_ms();
        true
    }

    /// Checks every page against what it must hold now: `gen` before the
    /// cursor, `gen - 1` from it (nothing if never written).
    fn verify_all(&self, report: &mut Reporter) {
        let mut i = 0;
        while i < self.area.pages {
            let (gen, end) = if i < self.cursor {
                (self.gen, self.cursor)
            } else {
                (self.gen - 1, self.area.pages)
            };
            let n = UNPACED_BATCH.min(end - i);
            if gen > 0 {
                self.run(i, n, gen, 0);
            }
            i += n;
            report.poll(self);
        }
    }
}

/// Prints `dirty: at` lines every `every` ms (0: never).
struct Reporter {
    every: u64,
    next: u64,
    idle: bool,
}

impl Reporter {
    fn poll(&mut self, walk: &Walk) {
        let t = now_ms();
        if self.every == 0 || t < self.next {
            return;
        }
        self.next = t.saturating_add(self.every);
        if self.idle {
            println!("dirty: at {} ms: idle at gen {}", t, walk.gen - 1);
        } else {
            println!(
                "dirty: at {} ms: writing gen {}, page {} of {}",
                t, walk.gen, walk.cursor, walk.area.pages
            );
        }
    }
}

fn finish(walk: &Walk, report: &mut Reporter) -> ! {
    walk.verify_all(report);
    println!(
        "dirty: all {} pages verified at gen {}",
        walk.area.pages,
        walk.gen - 1
    );
    apic::timer_stop();
    guest_rt::exit::pass()
}

fn main() -> ! {
    let p = Params::parse();
    let area = Area::find(p.mb);
    println!(
        "dirty: {} pages ({} MiB) at {:#x}..{:#x}, rate {} pages/ms, rounds {}",
        area.pages,
        area.pages * PAGE_SIZE / MIB,
        area.start,
        area.addr(area.pages),
        p.rate,
        p.rounds
    );
    user::init();
    idt::set_handler(TICK_VECTOR, on_tick);
    apic::timer_periodic(TICK_VECTOR, TICK_COUNT);
    port::sti();
    let mut walk = Walk {
        area,
        gen: 1,
        cursor: 0,
        round_start_ms: now_ms(),
    };
    let mut report = Reporter {
        every: p.report_ms,
        next: now_ms().saturating_add(p.report_ms),
        idle: false,
    };
    // Pass 1, as fast as possible.
    while !walk.advance(UNPACED_BATCH) {
        report.poll(&walk);
    }
    let mut passes = 1;
    if passes == p.rounds {
        finish(&walk, &mut report);
    }
    if p.rate == 0 {
        report.idle = true;
        idle(&mut walk, &mut report, &p)
    }
    let mut credit = 0u64;
    let mut last = now_ms();
    loop {
        let t = now_ms();
        if t != last {
            credit = credit
                .saturating_add((t - last).saturating_mul(p.rate))
                .min(p.rate.saturating_mul(MAX_BURST_MS));
            last = t;
        }
        report.poll(&walk);
        if credit == 0 {
            wait();
            continue;
        }
        let n = credit.min(walk.area.pages - walk.cursor);
        credit -= n;
        if walk.advance(n) {
            passes += 1;
            if passes == p.rounds {
                finish(&walk, &mut report);
            }
        }
    }
}

/// Rate 0: a read-only pass every `verify_ms`, nothing written.
fn idle(walk: &mut Walk, report: &mut Reporter, p: &Params) -> ! {
    let mut passes = 1;
    let mut next = now_ms().saturating_add(p.verify_ms);
    loop {
        report.poll(walk);
        if now_ms() >= next {
            let start = now_ms();
            walk.verify_all(report);
            println!(
                "dirty: gen {}: {} pages verified in {} ms",
                walk.gen - 1,
                walk.area.pages,
                now_ms() - start
            );
            passes += 1;
            if passes == p.rounds {
                finish(walk, report);
            }
            next = now_ms().saturating_add(p.verify_ms);
        }
        wait();
    }
}
