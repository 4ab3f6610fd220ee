//! The sender's XBZRLE state: what goes out for a page pass after pass,
//! the statistics, and that a target applying what was sent always ends
//! with the sender's RAM.

use super::codec::tests::Rng;
use super::*;

const RAM_PAGES: usize = 64;

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE]
}

#[test]
fn the_first_pass_sends_pages_whole_and_caches_nothing() {
    let mut x = XbzrleEncoder::new(1 << 20, 1 << 20).unwrap();
    let mut out = Vec::new();
    x.begin_pass(1);
    assert_eq!(
        x.encode(0, &page(1), &mut out),
        Encoded::Whole(WholeReason::FirstPass)
    );
    assert_eq!(out, page(1));
    assert_eq!(
        x.stats(),
        XbzrleStats {
            cache_size: 1 << 20,
            ..XbzrleStats::default()
        }
    );
    // Second pass: a miss (now cached); third: a delta.
    x.begin_pass(2);
    assert_eq!(
        x.encode(0, &page(1), &mut out),
        Encoded::Whole(WholeReason::CacheMiss)
    );
    assert_eq!(x.stats().cache_miss, 1);
    x.begin_pass(3);
    let mut p = page(1);
    p[100] = 2;
    assert_eq!(x.encode(0, &p, &mut out), Encoded::Delta);
    assert_eq!(out, vec![100, 1, 2]);
    let s = x.stats();
    assert_eq!((s.pages, s.bytes, s.cache_miss, s.overflow), (1, 3, 1, 0));
    // The same bytes again: nothing to send, still a page looked up.
    assert_eq!(x.encode(0, &p, &mut out), Encoded::Unchanged);
    assert_eq!(x.stats().pages, 2);
}

#[test]
fn a_page_rewritten_whole_overflows_and_is_counted() {
    let mut x = XbzrleEncoder::new(1 << 20, 1 << 20).unwrap();
    let mut out = Vec::new();
    x.begin_pass(1);
    x.begin_pass(2);
    x.encode(0x3000, &page(1), &mut out);
    x.begin_pass(3);
    assert_eq!(
        x.encode(0x3000, &page(2), &mut out),
        Encoded::Whole(WholeReason::Overflow)
    );
    assert_eq!(out, page(2));
    let s = x.stats();
    assert_eq!((s.overflow, s.bytes, s.pages), (1, PAGE_SIZE as u64, 1));
    // The cache took the new bytes: a small change is a small delta.
    let mut p = page(2);
    p[0] = 3;
    assert_eq!(x.encode(0x3000, &p, &mut out), Encoded::Delta);
    assert_eq!(out, vec![0, 1, 3]);
}

#[test]
fn the_last_stage_does_not_update_the_cache() {
    let mut x = XbzrleEncoder::new(1 << 20, 1 << 20).unwrap();
    let mut out = Vec::new();
    x.begin_pass(1);
    x.begin_pass(2);
    x.encode(0, &page(1), &mut out);
    x.last_stage();
    x.begin_pass(3);
    assert_eq!(
        x.encode(0x1000, &page(1), &mut out),
        Encoded::Whole(WholeReason::CacheMiss)
    );
    assert_eq!(
        x.encode(0x1000, &page(1), &mut out),
        Encoded::Whole(WholeReason::CacheMiss)
    );
    let mut p = page(1);
    p[5] = 9;
    assert_eq!(x.encode(0, &p, &mut out), Encoded::Delta);
    // Not cached: the delta is still against the old bytes.
    assert_eq!(x.encode(0, &p, &mut out), Encoded::Delta);
}

#[test]
fn rates_cover_the_pass_that_ended() {
    let mut x = XbzrleEncoder::new(1 << 20, 1 << 20).unwrap();
    let mut out = Vec::new();
    x.begin_pass(1);
    x.begin_pass(2);
    for a in 0..4u64 {
        x.encode(a * 4096, &page(1), &mut out);
    }
    x.begin_pass(3);
    assert_eq!(x.stats().cache_miss_rate, 1.0);
    let mut p = page(1);
    p[0] = 2;
    // Two hits (3-byte deltas), two misses.
    x.encode(0, &p, &mut out);
    x.encode(4096, &p, &mut out);
    x.encode(40 * 4096, &p, &mut out);
    x.encode(41 * 4096, &p, &mut out);
    x.begin_pass(4);
    let s = x.stats();
    assert_eq!(s.cache_miss_rate, 0.5);
    assert_eq!(s.encoding_rate, (2 * PAGE_SIZE) as f64 / 6.0);
}

#[test]
fn resizing_starts_an_empty_cache_and_reports_the_new_size() {
    let mut x = XbzrleEncoder::new(1 << 20, 1 << 20).unwrap();
    let mut out = Vec::new();
    x.begin_pass(1);
    x.begin_pass(2);
    x.encode(0, &page(1), &mut out);
    x.resize(1 << 16).unwrap();
    assert_eq!(x.stats().cache_size, 1 << 16);
    x.begin_pass(3);
    assert_eq!(
        x.encode(0, &page(1), &mut out),
        Encoded::Whole(WholeReason::CacheMiss)
    );
    assert_eq!(
        x.resize(100),
        Err(XbzrleError::CacheTooSmall {
            size: 100,
            page: PAGE_SIZE
        })
    );
}

/// A sender and a target going through passes over a guest that keeps
/// rewriting parts of its pages, with zero pages, slot conflicts (a cache
/// of 8 slots for 64 pages), a resize and the last stage: the target
/// always ends with the sender's RAM.
#[test]
fn a_target_applying_what_was_sent_always_holds_the_guest_ram() {
    for cache_pages in [1usize, 8, 64] {
        let mut rng = Rng(0x1234_5678 + cache_pages as u64);
        let mut ram: Vec<Vec<u8>> = (0..RAM_PAGES).map(|i| page(i as u8)).collect();
        let mut target: Vec<Vec<u8>> = vec![page(0xcc); RAM_PAGES];
        let mut x = XbzrleEncoder::new(
            (cache_pages * PAGE_SIZE) as u64,
            (RAM_PAGES * PAGE_SIZE) as u64,
        )
        .unwrap();
        let mut out = Vec::new();
        let (mut deltas, mut unchanged) = (0, 0);
        let mut dirty: Vec<usize> = (0..RAM_PAGES).collect();
        for pass in 1..=12u64 {
            if pass == 11 {
                x.last_stage();
            }
            if pass == 6 {
                x.resize((cache_pages * 2 * PAGE_SIZE) as u64).unwrap();
            }
            x.begin_pass(pass);
            for &i in &dirty {
                let addr = (i * PAGE_SIZE) as u64;
                if ram[i].iter().all(|&b| b == 0) {
                    x.zero_page(addr);
                    target[i].fill(0);
                    continue;
                }
                match x.encode(addr, &ram[i], &mut out) {
                    Encoded::Unchanged => unchanged += 1,
                    Encoded::Delta => {
                        apply(&out, &mut target[i]).unwrap();
                        deltas += 1;
                    }
                    Encoded::Whole(_) => target[i].copy_from_slice(&out),
                }
                assert!(target[i] == ram[i], "pass {pass} page {i} differs");
            }
            if pass == 12 {
                break;
            }
            // The guest dirties a hot set and a few others; some pages
            // are cleared, some written back to what they were.
            dirty.clear();
            for (i, p) in ram.iter_mut().enumerate() {
                let hot = i % 4 == 0;
                if !hot && rng.below(8) != 0 {
                    continue;
                }
                match rng.below(10) {
                    0 => p.fill(0),
                    1 => {}
                    _ => {
                        let at = rng.below(PAGE_SIZE - 16);
                        for b in &mut p[at..at + 16] {
                            *b = rng.byte();
                        }
                    }
                }
                dirty.push(i);
            }
        }
        let wrong: Vec<usize> = (0..RAM_PAGES).filter(|&i| target[i] != ram[i]).collect();
        assert!(
            wrong.is_empty(),
            "{cache_pages} slots: pages {wrong:?} differ"
        );
        let least = if cache_pages == 1 { 1 } else { 20 };
        assert!(deltas >= least, "{cache_pages} slots: {deltas} deltas");
        assert!(unchanged > 0, "{cache_pages} slots: no unchanged page");
    }
}
