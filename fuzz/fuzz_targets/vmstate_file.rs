//! Fuzzes the VM-state container decoder (`ipc_proto::vmstate::decode`),
//! the reader of `xen-load-devices-state` files and migration streams.
//!
//! Invariants: no panic; a file that decodes and whose sections are at
//! their current versions is canonical: its sections encoded again give
//! the same bytes (an older section version is read, but written at the
//! current one).

#![no_main]

use ipc_proto::vmstate::{decode, encode, OwnedSection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sections) = decode(data) {
        if sections.iter().any(|s| s.version != s.id.version()) {
            return;
        }
        let owned: Vec<OwnedSection> = sections
            .iter()
            .map(|s| OwnedSection {
                id: s.id,
                payload: s.payload.to_vec(),
            })
            .collect();
        let again = encode(&owned).expect("decoded sections encode");
        assert_eq!(again, data, "a decoded file re-encodes differently");
    }
});
