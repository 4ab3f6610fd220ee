//! Fuzzes the XBZRLE decoder (`vcpu_proc::migration::xbzrle::apply`), the
//! reader of the deltas a migration stream carries, and the encoder on
//! the pages it produces.
//!
//! Invariants: no panic; a refused delta leaves the page as it was; for
//! a page a delta produced, the encoder's delta (old → new) decodes to
//! the same page; a page read from the input round-trips through the
//! encoder against a zero page.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vcpu_proc::migration::xbzrle::codec::{encode, Delta};
use vcpu_proc::migration::xbzrle::{apply, PAGE_SIZE};

fn round_trip(old: &[u8], new: &[u8]) {
    let mut out = Vec::new();
    match encode(old, new, PAGE_SIZE, &mut out) {
        Delta::Unchanged => assert_eq!(old, new, "different pages called unchanged"),
        Delta::Encoded(n) => {
            assert_eq!(n, out.len());
            assert!(n <= PAGE_SIZE, "a delta longer than the page");
            let mut page = old.to_vec();
            apply(&out, &mut page).expect("the encoder's delta decodes");
            assert_eq!(page, new, "the encoder's delta decodes to another page");
        }
        Delta::Overflow => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let old = vec![0x5au8; PAGE_SIZE];
    let mut page = old.clone();
    match apply(data, &mut page) {
        Err(_) => assert_eq!(page, old, "a refused delta wrote the page"),
        Ok(()) => round_trip(&old, &page),
    }
    let mut new = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE);
    new[..n].copy_from_slice(&data[..n]);
    round_trip(&vec![0u8; PAGE_SIZE], &new);
});
