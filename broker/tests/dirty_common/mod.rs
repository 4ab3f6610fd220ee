//! Helpers for tests running the `dirty` guest (test-guests/dirty): its
//! serial lines (the area, completed generations, the verdict) and its
//! page format, so a test can read or change its RAM from outside (through
//! a `memory-backend-file`) and know what the guest must say.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use crate::disk_common::{SerialLog, GUEST_TIMEOUT};

/// Bytes per page of the guest's area.
pub const PAGE: u64 = 4096;
/// Word 2 of every page the guest wrote.
pub const MAGIC: u64 = 0x4452_5459_5047_3031;

/// The guest's area `[start, end)` from its first line
/// (`dirty: N pages (M MiB) at 0xA..0xB, ...`), waiting for it.
pub fn area(log: &SerialLog) -> (u64, u64) {
    log.wait_for(" pages/ms, rounds ");
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("dirty: ") && l.contains(" at 0x"))
        .expect("the area line");
    let range = line
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("0xA..0xB");
    let (a, b) = range.split_once("..").expect("0xA..0xB");
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    (hex(a), hex(b))
}

/// The complete lines of the log so far (the guest prints slowly: the
/// last line may still be coming).
pub fn lines(log: &SerialLog) -> Vec<String> {
    log.text()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// The highest generation the guest completed (`dirty: gen G: ...`
/// lines; 0 before the first).
pub fn last_gen(log: &SerialLog) -> u64 {
    lines(log)
        .iter()
        .filter_map(|l| {
            l.strip_prefix("dirty: gen ")?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the guest completed generation `gen` (fails on a FAIL
/// verdict).
pub fn wait_gen(log: &SerialLog, gen: u64) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while last_gen(log) < gen {
        let t = log.text();
        assert!(!t.contains("VERDICT: FAIL"), "guest failed:\n{t}");
        assert!(Instant::now() < deadline, "no gen {gen}:\n{t}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the verdict line and returns it.
pub fn verdict(log: &SerialLog) -> String {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if let Some(l) = lines(log).into_iter().find(|l| l.starts_with("VERDICT: ")) {
            return l;
        }
        assert!(Instant::now() < deadline, "no verdict:\n{}", log.text());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn word(page: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap())
}

/// The generation a whole, consistent page at guest-physical `addr`
/// holds, or what is wrong with it (the guest's own checks: address,
/// magic, checksum).
pub fn page_gen(page: &[u8], addr: u64) -> Result<u64, String> {
    assert_eq!(page.len() as u64, PAGE);
    if word(page, 0) != addr {
        return Err(format!("holds address {:#x}", word(page, 0)));
    }
    if word(page, 2) != MAGIC {
        return Err(format!("word 2 is {:#x}", word(page, 2)));
    }
    let sum = (0..511).fold(0u64, |s, i| s.rotate_left(5) ^ word(page, i));
    if word(page, 511) != sum {
        return Err(format!(
            "checksum {:#x}, expected {sum:#x}",
            word(page, 511)
        ));
    }
    Ok(word(page, 1))
}
