//! XBZRLE on a live migration between two real VMs (the harness of
//! `migration/tests.rs`): pages rewritten pass after pass go as deltas,
//! cost fewer bytes than without the capability, arrive byte for byte,
//! and `xbzrle-cache-size` changed mid-migration reaches the sender.

use ipc_proto::migration::XbzrleStats;

use super::*;

/// The pages the test rewrites: 32 MiB into RAM, away from the guest.
const HOT_FIRST: u64 = 8192;
const HOT_PAGES: u64 = 256;
/// The pass at whose start the rewriting stops.
const LAST: u64 = 7;
/// The pass at whose start the cache is resized (XBZRLE run).
const RESIZE_AT: u64 = 4;
/// Pass 1's rate limit (bytes/s): the guest's ~3 MiB of data take ~200 ms.
const FIRST_PASS_BANDWIDTH: u64 = 16 << 20;

/// Rewrites 8 bytes of every hot page (round `n` picks where) and marks
/// them in the vhost-user log, as a backend writing guest RAM would.
fn rewrite(src: &Side, log: &VhostLog, n: u64) {
    for p in HOT_FIRST..HOT_FIRST + HOT_PAGES {
        let at = p * 4096 + 64 + (n % 8) * 8;
        src.ram
            .write_all_at(&(n * 1000 + p).to_le_bytes(), at)
            .unwrap();
        log.mark(p);
    }
}

struct Run {
    transferred: u64,
    normal: u64,
    xbzrle: Option<XbzrleStats>,
}

/// Migrates the stopped `timer` guest while the hot pages are rewritten
/// at the start of each pass up to [`LAST`]. Pass 1 is held to
/// [`FIRST_PASS_BANDWIDTH`] so that it lasts ~200 ms: unlimited, it
/// moved the guest's 3 MiB in 20 ms, before the test's first rewrite,
/// found nothing dirty and converged at once. From pass 2 on, a tiny
/// `max-bandwidth` makes each run of 64 pages (the shortest the limit
/// cuts runs to) last a rate-limit window (100 ms), so a rewrite lands before the pass's dirty-log sync unless
/// the host keeps the test thread off the CPU for most of a pass; then
/// the migration converges early and this returns None.
fn migrate_hot_pages(xbzrle: bool) -> Option<Run> {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("timer");
    lock(&src.c).handle(Input::Stop).unwrap();
    for p in HOT_FIRST..HOT_FIRST + HOT_PAGES {
        src.ram.write_all_at(&[0xa5; 4096], p * 4096).unwrap();
    }
    let (a, b) = UnixStream::pair().unwrap();
    dst.incoming(b);
    let (log, backend) = log_fd();
    let mut p = params(0, FIRST_PASS_BANDWIDTH);
    p.xbzrle = xbzrle;
    p.xbzrle_cache_size = 1 << 20;
    src.start(a, log, p);
    loop {
        match src.wait_event(|e| {
            matches!(
                e,
                MigrationEvent::Pass { .. }
                    | MigrationEvent::ReadyForSwitchover
                    | MigrationEvent::Status { .. }
            )
        }) {
            MigrationEvent::Pass { count } => {
                if count == 2 {
                    p.max_bandwidth = 1000;
                }
                if xbzrle && count == RESIZE_AT {
                    p.xbzrle_cache_size = 2 << 20;
                }
                src.serve(MigrationRequest::SetParams(p), Vec::new())
                    .unwrap();
                if count < LAST {
                    rewrite(&src, &backend, count);
                }
            }
            MigrationEvent::ReadyForSwitchover => {
                src.serve(MigrationRequest::Switchover, Vec::new())
                    .expect("switchover");
            }
            MigrationEvent::Status { status, error } if progress::is_final(status) => {
                assert_eq!((status, error), (MigrationStatus::Completed, None));
                break;
            }
            MigrationEvent::Status { .. } => {}
        }
    }
    assert_eq!(dst.wait_status(MigrationStatus::Completed), None);
    let (s, d) = (src.ram(), dst.ram());
    let differ = s.chunks(4096).zip(d.chunks(4096)).position(|(x, y)| x != y);
    assert_eq!(differ, None, "first differing page (xbzrle {xbzrle})");
    let stats = src.stats();
    if stats.ram.dirty_sync_count < LAST {
        eprintln!("converged early (test thread descheduled?): {stats:?}");
        return None;
    }
    Some(Run {
        transferred: stats.ram.transferred,
        normal: stats.ram.normal,
        xbzrle: stats.xbzrle,
    })
}

/// [`migrate_hot_pages`], run again (up to three times) when the host's
/// scheduling let it converge before [`LAST`].
fn hot_run(xbzrle: bool) -> Run {
    (0..3)
        .find_map(|_| migrate_hot_pages(xbzrle))
        .unwrap_or_else(|| panic!("three runs converged before pass {LAST} (xbzrle {xbzrle})"))
}

#[test]
fn pages_rewritten_pass_after_pass_go_as_deltas_and_cost_fewer_bytes() {
    let off = hot_run(false);
    let on = hot_run(true);
    assert_eq!(off.xbzrle, None);
    let x = on.xbzrle.expect("xbzrle-cache stats with the capability");
    eprintln!(
        "without XBZRLE: {} bytes, {} whole pages; with: {} bytes, {} whole pages, {x:?}",
        off.transferred, off.normal, on.transferred, on.normal
    );
    // Pass 2 and the pass after the resize miss; the others are deltas.
    assert!(x.cache_miss >= 2 * HOT_PAGES, "{x:?}");
    assert!(x.pages >= 3 * HOT_PAGES, "{x:?}");
    assert!(
        x.bytes > 0 && x.bytes < x.pages * 64,
        "deltas of 8 bytes: {x:?}"
    );
    assert!(x.encoding_rate > 10.0, "{x:?}");
    assert_eq!(x.overflow, 0);
    // The cache size set mid-migration reached the sender.
    assert_eq!(x.cache_size, 2 << 20);
    // Every pass from 2 to LAST re-sent the hot pages: whole without
    // XBZRLE, as deltas (but for two passes of misses) with it.
    assert!(
        off.normal >= on.normal + 3 * HOT_PAGES,
        "whole pages: {} without, {} with",
        off.normal,
        on.normal
    );
    assert!(
        on.transferred + 3 * HOT_PAGES * 4096 < off.transferred,
        "bytes sent: {} with XBZRLE, {} without",
        on.transferred,
        off.transferred
    );
}

/// An XBZRLE record: kind 3, page address, delta length, delta.
fn delta_record(v: &mut Vec<u8>, gpa: u64, delta: &[u8]) {
    v.push(3);
    v.extend(gpa.to_le_bytes());
    v.extend((delta.len() as u32).to_le_bytes());
    v.extend(delta);
}

#[test]
fn a_target_applies_good_deltas_and_fails_on_a_bad_one_leaving_its_page_alone() {
    let ours = dirty::layout(&lock(&side("timer", false).c).vm().mem);
    let good = HOT_FIRST * 4096;
    let bad = good + 4096;
    let (dst, e) = feed(handmade(&ours, |v| {
        // Byte 0 becomes 0xaa, then bytes 10..13 of the next page would
        // be written by a delta whose second zero run is empty.
        delta_record(v, good, &[0x00, 0x01, 0xaa]);
        delta_record(v, bad, &[0x0a, 0x03, 1, 2, 3, 0x00, 0x01, 9]);
    }));
    assert_eq!(
        e.as_deref(),
        Some("bad XBZRLE delta for page 0x2001000: XBZRLE: empty run at byte 5")
    );
    let ram = dst.ram();
    assert_eq!(ram[good as usize], 0xaa);
    assert_eq!(&ram[bad as usize..bad as usize + 4096], &[0u8; 4096][..]);
}
