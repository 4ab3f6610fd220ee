//! Fuzzes `blockdev-add` argument handling: the JSON form of
//! `ipc_proto::block::BlockdevOptions` (`serde_json::from_slice`) and the
//! broker's schema validation and parsing
//! (`broker::commands::block::parse_options`).
//!
//! Invariants: no panic; parsed options survive a JSON round trip (for
//! direct deserialization) and a bincode round trip (the form sent to
//! block-proc) unchanged.

#![no_main]

use broker::commands::block::parse_options;
use ipc_proto::block::BlockdevOptions;
use ipc_proto::codec::{decode, encode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn wire_round_trip(o: &BlockdevOptions) {
    let bytes = encode(o).expect("options encode");
    let back: BlockdevOptions = decode(&bytes).expect("encoded options decode");
    assert_eq!(&back, o, "bincode round trip changed the options");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = serde_json::from_slice::<BlockdevOptions>(data) {
        let json = serde_json::to_vec(&o).expect("options serialize");
        let back: BlockdevOptions =
            serde_json::from_slice(&json).expect("serialized options parse");
        assert_eq!(back, o, "JSON round trip changed the options");
        wire_round_trip(&o);
    }
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(data) {
        if let Ok(o) = parse_options(map) {
            wire_round_trip(&o);
        }
    }
});
