//! The codec against hand-derived QEMU byte vectors, a literal
//! transcription of QEMU's encoder loop, round trips and hostile deltas.

use super::*;

const PAGE: usize = 4096;

/// A small xorshift generator: deterministic test data without a crate.
pub(in crate::migration::xbzrle) struct Rng(pub(in crate::migration::xbzrle) u64);

impl Rng {
    pub(in crate::migration::xbzrle) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(in crate::migration::xbzrle) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(in crate::migration::xbzrle) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn enc(old: &[u8], new: &[u8]) -> (Delta, Vec<u8>) {
    let mut out = Vec::new();
    let d = encode(old, new, old.len(), &mut out);
    (d, out)
}

/// QEMU's `xbzrle_encode_buffer` control flow, byte at a time, with its
/// `d + 2 > dlen` / `d + nzrun_len > dlen` checks where QEMU makes them:
/// the reference the optimised encoder is compared with.
fn reference(old: &[u8], new: &[u8], dlen: usize) -> Option<Vec<u8>> {
    let slen = new.len();
    let (mut i, mut dst) = (0, Vec::new());
    while i < slen {
        if dst.len() + 2 > dlen {
            return None;
        }
        let mut zrun = 0;
        while i < slen && old[i] == new[i] {
            zrun += 1;
            i += 1;
        }
        if zrun == slen {
            return Some(Vec::new());
        }
        if i == slen {
            return Some(dst);
        }
        put_length(&mut dst, zrun);
        let start = i;
        if dst.len() + 2 > dlen {
            return None;
        }
        while i < slen && old[i] != new[i] {
            i += 1;
        }
        put_length(&mut dst, i - start);
        if dst.len() + (i - start) > dlen {
            return None;
        }
        dst.extend_from_slice(&new[start..i]);
    }
    Some(dst)
}

#[test]
fn qemu_vector_first_byte_changed() {
    let old = vec![0u8; PAGE];
    let mut new = old.clone();
    new[0] = 0xaa;
    // zrun 0, nzrun 1 + the byte; the trailing zero run is left out.
    assert_eq!(enc(&old, &new), (Delta::Encoded(3), vec![0x00, 0x01, 0xaa]));
}

#[test]
fn qemu_vector_one_run_inside_the_page() {
    let old = vec![7u8; PAGE];
    let mut new = old.clone();
    new[10..13].copy_from_slice(&[1, 2, 3]);
    assert_eq!(
        enc(&old, &new),
        (Delta::Encoded(5), vec![0x0a, 0x03, 1, 2, 3])
    );
}

#[test]
fn qemu_vector_two_runs_with_two_byte_lengths() {
    let old = vec![0u8; PAGE];
    let mut new = old.clone();
    new[200] = 0xff;
    new[4095] = 0x11;
    // zrun 200 = ULEB c8 01; nzrun 1 ff; zrun 3894 = ULEB b6 1e; nzrun 1 11.
    let want = vec![0xc8, 0x01, 0x01, 0xff, 0xb6, 0x1e, 0x01, 0x11];
    assert_eq!(enc(&old, &new), (Delta::Encoded(want.len()), want));
}

#[test]
fn equal_pages_are_unchanged() {
    let old = vec![3u8; PAGE];
    assert_eq!(enc(&old, &old).0, Delta::Unchanged);
}

#[test]
fn a_delta_of_exactly_a_page_is_sent_one_byte_more_overflows() {
    let old = vec![0u8; PAGE];
    let mut new = old.clone();
    // zrun 3 (1 byte) + nzrun 4093 (2 bytes) + 4093 bytes = 4096.
    new[3..].fill(1);
    let (d, out) = enc(&old, &new);
    assert_eq!(d, Delta::Encoded(PAGE));
    assert_eq!(&out[..3], &[0x03, 0xfd, 0x1f]);
    new[2] = 1;
    assert_eq!(enc(&old, &new).0, Delta::Overflow);
    // QEMU gives up when fewer than 2 bytes are left at the top of its
    // loop, even if only a trailing zero run (never written) remains.
    let mut new = old.clone();
    new[..4093].fill(1);
    assert_eq!(enc(&old, &new).0, Delta::Overflow);
    // A whole new page overflows.
    assert_eq!(enc(&old, &vec![9u8; PAGE]).0, Delta::Overflow);
}

#[test]
fn alternating_changes_overflow() {
    let old = vec![0u8; PAGE];
    let new: Vec<u8> = (0..PAGE).map(|i| (i % 2) as u8).collect();
    assert_eq!(enc(&old, &new).0, Delta::Overflow);
}

#[test]
fn pages_of_different_lengths_overflow_instead_of_panicking() {
    assert_eq!(enc(&[0u8; 8], &[1u8; 16]).0, Delta::Overflow);
}

fn mutate(rng: &mut Rng, old: &[u8], kind: usize) -> Vec<u8> {
    let mut new = old.to_vec();
    match kind {
        // Sparse: a few single bytes.
        0 => {
            for _ in 0..rng.below(8) + 1 {
                let i = rng.below(PAGE);
                new[i] = new[i].wrapping_add(1);
            }
        }
        // A few runs of random length.
        1 => {
            for _ in 0..rng.below(6) + 1 {
                let start = rng.below(PAGE);
                let len = rng.below(PAGE - start).min(300) + 1;
                for b in &mut new[start..start + len] {
                    *b ^= rng.byte() | 1;
                }
            }
        }
        // Dense: every byte random.
        2 => new.iter_mut().for_each(|b| *b = rng.byte()),
        // Byte-wise noise at random density (often overflowing).
        _ => {
            let density = rng.below(64) + 1;
            for b in new.iter_mut() {
                if rng.below(density) == 0 {
                    *b = rng.byte();
                }
            }
        }
    }
    new
}

#[test]
fn random_sparse_and_dense_changes_round_trip_and_match_qemu_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut encoded, mut overflowed) = (0, 0);
    for n in 0..2000 {
        let old: Vec<u8> = (0..PAGE).map(|_| rng.byte() & 0x0f).collect();
        let new = mutate(&mut rng, &old, n % 4);
        let (d, out) = enc(&old, &new);
        let want = reference(&old, &new, PAGE);
        match d {
            Delta::Unchanged => assert_eq!(want, Some(Vec::new())),
            Delta::Encoded(len) => {
                assert_eq!(len, out.len());
                assert_eq!(Some(out.clone()), want, "case {n}");
                let mut page = old.clone();
                decode(&out, &mut page).unwrap();
                assert_eq!(page, new, "case {n}");
                encoded += 1;
            }
            Delta::Overflow => {
                assert_eq!(want, None, "case {n}");
                overflowed += 1;
            }
        }
    }
    assert!(encoded > 500 && overflowed > 300, "{encoded} {overflowed}");
}

#[test]
fn every_cut_inside_a_run_is_refused_and_leaves_the_page_alone() {
    let old = vec![0u8; PAGE];
    let mut new = old.clone();
    new[200] = 0xff;
    new[300..310].fill(5);
    new[4095] = 0x11;
    let (_, delta) = enc(&old, &new);
    // Where a (zrun, nzrun) pair ends, a prefix is a shorter valid delta.
    let mut boundaries = Vec::new();
    walk(&delta, PAGE, |_, _| {}).unwrap();
    let mut i = 0;
    while i < delta.len() {
        let (_, a) = get_length(&delta[i..]).unwrap();
        let (n, b) = get_length(&delta[i + a..]).unwrap();
        i += a + b + n;
        boundaries.push(i);
    }
    for cut in 0..delta.len() {
        let mut page = vec![0x5au8; PAGE];
        let r = decode(&delta[..cut], &mut page);
        if boundaries.contains(&cut) {
            r.unwrap();
            assert_ne!(page[4095], 0x11, "a prefix cannot carry the last run");
        } else {
            assert!(r.is_err(), "prefix of {cut} bytes accepted");
            assert_eq!(page, vec![0x5au8; PAGE], "page written by a refused delta");
        }
    }
}

#[test]
fn corrupt_deltas_are_refused_with_what_is_wrong() {
    let bad: &[(&[u8], XbzrleError)] = &[
        (&[], XbzrleError::EmptyDelta),
        (&[0x00], XbzrleError::Truncated { at: 0 }),
        (&[0x0a, 0x03, 1, 2], XbzrleError::Truncated { at: 2 }),
        (&[0x0a, 0x01], XbzrleError::Truncated { at: 1 }),
        (&[0x00, 0x00, 0x05], XbzrleError::EmptyRun { at: 1 }),
        (
            &[0x0a, 0x01, 0x05, 0x00, 0x01, 0x06],
            XbzrleError::EmptyRun { at: 3 },
        ),
        (&[0xff, 0xff, 0x01, 0x01], XbzrleError::BadLength { at: 0 }),
        (&[0x00, 0x81, 0x80, 0x01], XbzrleError::BadLength { at: 1 }),
        // A zero run of 4224 bytes: past the page.
        (
            &[0x80, 0x21, 0x01, 0x00],
            XbzrleError::OutsidePage { at: 2, end: 4224 },
        ),
        // Zero run 4095, then two bytes: one past the page.
        (
            &[0xff, 0x1f, 0x02, 0xaa, 0xbb],
            XbzrleError::OutsidePage { at: 3, end: 4097 },
        ),
    ];
    for (delta, want) in bad {
        let mut page = vec![1u8; PAGE];
        assert_eq!(decode(delta, &mut page).as_ref(), Err(want), "{delta:02x?}");
        assert_eq!(page, vec![1u8; PAGE]);
    }
    let long = vec![0x01u8; PAGE + 1];
    assert_eq!(
        decode(&long, &mut vec![0u8; PAGE]),
        Err(XbzrleError::DeltaTooLong {
            len: PAGE + 1,
            page: PAGE
        })
    );
}

#[test]
fn random_garbage_never_panics_nor_writes_when_refused() {
    let mut rng = Rng(42);
    for _ in 0..20000 {
        let len = rng.below(64) + 1;
        let delta: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let mut page = vec![0xeeu8; PAGE];
        if decode(&delta, &mut page).is_err() {
            assert_eq!(page, vec![0xeeu8; PAGE]);
        }
    }
}
