//! The migration parameter and capability commands side by side with
//! `qemu-system-x86_64` 10 (`-M microvm -nodefaults -m 128`, bulkhead's
//! default machine and RAM): the same commands in the same order, the
//! replies compared whole (shapes, values, error classes and messages).
//! Where bulkhead answers differently on purpose (a parameter or
//! capability it does not implement is refused, the reference's
//! cache-size commands QEMU 10 removed), the test says so and checks
//! both answers.

mod common;

use common::{qemu, Bulkhead};
use serde_json::{json, Value};

const QEMU_ARGS: [&str; 5] = ["-M", "microvm", "-nodefaults", "-m", "128"];

fn cmd(name: &str, args: Value) -> Value {
    if args.is_null() {
        json!({"execute": name})
    } else {
        json!({"execute": name, "arguments": args})
    }
}

/// (QEMU's replies, bulkhead's replies) to `cmds`.
fn side_by_side(cmds: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let theirs = qemu::replies(&QEMU_ARGS, cmds);
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let ours = qemu::ours(&mut q, cmds);
    (theirs, ours)
}

fn assert_same(cmds: &[Value], theirs: &[Value], ours: &[Value]) {
    for ((c, t), o) in cmds.iter().zip(theirs).zip(ours) {
        assert_eq!(o, t, "{c}: bulkhead (left) and QEMU (right) differ");
    }
}

fn error(desc: &str) -> Value {
    json!({"error": {"class": "GenericError", "desc": desc}})
}

fn set_params(args: Value) -> Value {
    cmd("migrate-set-parameters", args)
}

fn query_params() -> Value {
    cmd("query-migrate-parameters", Value::Null)
}

#[test]
fn honoured_parameters_are_checked_set_and_shown_as_qemu_10() {
    let cmds = [
        query_params(),
        set_params(json!({"downtime-limit": 2000001})),
        set_params(json!({"downtime-limit": -1})),
        set_params(json!({"downtime-limit": "x"})),
        set_params(json!({"downtime-limit": 2000000})),
        set_params(json!({"downtime-limit": 0})),
        set_params(json!({"max-bandwidth": 1.5})),
        set_params(json!({"max-bandwidth": "1"})),
        set_params(json!({"max-bandwidth": -1})),
        set_params(json!({"xbzrle-cache-size": 2048})),
        set_params(json!({"xbzrle-cache-size": 5000})),
        set_params(json!({"xbzrle-cache-size": -1})),
        set_params(json!({"xbzrle-cache-size": 4096})),
        // Larger than guest RAM: QEMU 10 accepts it.
        set_params(json!({"xbzrle-cache-size": 1u64 << 40})),
        // QEMU checks downtime-limit before xbzrle-cache-size, and
        // changes nothing when one member is refused.
        set_params(json!({"xbzrle-cache-size": 3, "downtime-limit": 2000001})),
        set_params(json!({"max-bandwidth": 1000, "xbzrle-cache-size": 3})),
        set_params(json!({"bogus": 1})),
        set_params(json!({})),
        set_params(json!({"tls-creds": 1})),
        set_params(json!({"cpu-throttle-initial": 300})),
        set_params(json!({"cpu-throttle-initial": -1})),
        set_params(json!({"x-checkpoint-delay": 5000000000u64})),
        set_params(json!({"multifd-compression": "bad"})),
        set_params(json!({"block-bitmap-mapping": "x"})),
        // The announcement parameters: QEMU's ranges, after xbzrle.
        set_params(json!({"announce-initial": 100001})),
        set_params(json!({"announce-max": -1})),
        set_params(json!({"announce-rounds": 1001})),
        set_params(json!({"announce-step": 0})),
        set_params(json!({"announce-step": 10001, "xbzrle-cache-size": 5000})),
        set_params(json!({"announce-initial": 100000, "announce-max": 0,
                          "announce-rounds": 0, "announce-step": 10000})),
        query_params(),
    ];
    let (theirs, ours) = side_by_side(&cmds);
    assert_same(&cmds, &theirs, &ours);
    // The replies say what they should (not only that both agree).
    assert_eq!(
        ours[1],
        error(
            "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
        )
    );
    assert_eq!(
        ours[9],
        error("Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size")
    );
    let last = &ours[cmds.len() - 1]["return"];
    assert_eq!(last["downtime-limit"], 0);
    assert_eq!(last["max-bandwidth"], json!(u64::MAX));
    assert_eq!(last["xbzrle-cache-size"], json!(1u64 << 40));
    assert_eq!(last["announce-initial"], 100000);
    assert_eq!(last["announce-rounds"], 0);
    assert_eq!(last["announce-step"], 10000);
    assert_eq!(last.as_object().unwrap().len(), 28);
}

#[test]
fn unimplemented_parameters_are_accepted_only_at_their_value() {
    let cmds = [
        set_params(
            json!({"tls-creds": null, "tls-hostname": "", "mode": "normal",
                          "multifd-channels": 2, "zero-page-detection": "multifd",
                          "direct-io": false}),
        ),
        set_params(json!({"cpu-throttle-initial": 30})),
        set_params(json!({"tls-creds": "tls0", "downtime-limit": 10})),
        query_params(),
    ];
    let (theirs, ours) = side_by_side(&cmds);
    assert_same(&cmds[..1], &theirs[..1], &ours[..1]);
    // QEMU takes them; bulkhead, which does not implement them, refuses
    // and changes nothing (not even downtime-limit beside tls-creds).
    assert_eq!(theirs[1], json!({"return": {}}));
    assert_eq!(
        ours[1],
        error(
            "Parameter 'cpu-throttle-initial' cannot be changed: bulkhead does not implement it \
             (it stays 20)"
        )
    );
    assert_eq!(
        ours[2],
        error("Parameter 'tls-creds' cannot be changed: bulkhead does not implement it (it stays \"\")")
    );
    let mut want = theirs[3]["return"].clone();
    want["cpu-throttle-initial"] = json!(20);
    want["tls-creds"] = json!("");
    want["downtime-limit"] = json!(300);
    assert_eq!(ours[3]["return"], want);
}

#[test]
fn capabilities_xbzrle_and_events_as_qemu_10_others_refused() {
    let set = |caps: Value| cmd("migrate-set-capabilities", json!({ "capabilities": caps }));
    let query = cmd("query-migrate-capabilities", Value::Null);
    let cmds = [
        query.clone(),
        set(
            json!([{"capability": "xbzrle", "state": true}, {"capability": "events", "state": true}]),
        ),
        set(json!([{"capability": "foo", "state": true}])),
        set(json!([{"capability": "xbzrle"}])),
        cmd("migrate-set-capabilities", json!({"capabilities": {}})),
        cmd("migrate-set-capabilities", json!({})),
        set(json!([{"capability": "multifd", "state": false}])),
        set(json!([])),
        cmd("query-migrate-capabilities", json!({"x": 1})),
        query.clone(),
        set(
            json!([{"capability": "xbzrle", "state": false}, {"capability": "postcopy-ram", "state": true}]),
        ),
        query,
    ];
    let (theirs, ours) = side_by_side(&cmds);
    assert_same(&cmds[..10], &theirs[..10], &ours[..10]);
    let on: Vec<&Value> = ours[9]["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == true)
        .map(|c| &c["capability"])
        .collect();
    assert_eq!(on, [&json!("xbzrle"), &json!("events")]);
    // postcopy-ram: QEMU takes it; bulkhead refuses the whole list, so
    // xbzrle stays on.
    assert_eq!(theirs[10], json!({"return": {}}));
    assert_eq!(
        ours[10],
        error(
            "Capability 'postcopy-ram' is not supported by bulkhead (only 'xbzrle' and 'events' \
             can be turned on)"
        )
    );
    assert_eq!(ours[11], ours[9]);
}

#[test]
fn cache_size_commands_round_down_and_refuse_as_the_reference() {
    let set_cache = |v: Value| cmd("migrate-set-cache-size", json!({ "value": v }));
    let query_cache = cmd("query-migrate-cache-size", Value::Null);
    let ours_cmds = [
        query_cache.clone(),
        set_cache(json!(5000)),
        query_cache.clone(),
        query_params(),
        set_cache(json!(100 << 20)),
        query_cache.clone(),
        set_cache(json!(2048)),
        set_cache(json!(256 << 20)),
        set_cache(json!(-1)),
        set_cache(json!("1")),
        cmd("migrate-set-cache-size", json!({})),
        query_cache,
    ];
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let ours = qemu::ours(&mut q, &ours_cmds);
    // QEMU 10 removed the commands; their parameter gives the same sizes.
    let qemu_cmds = [
        cmd("migrate-set-cache-size", json!({"value": 5000})),
        cmd("query-migrate-cache-size", Value::Null),
        set_params(json!({"xbzrle-cache-size": 4096})),
        query_params(),
        set_params(json!({"xbzrle-cache-size": 64 << 20})),
        query_params(),
        set_params(json!({"xbzrle-cache-size": 2048})),
        set_params(json!({"xbzrle-cache-size": 256 << 20})),
    ];
    let theirs = qemu::replies(&QEMU_ARGS, &qemu_cmds);
    assert_eq!(theirs[0]["error"]["class"], "CommandNotFound");
    assert_eq!(theirs[1]["error"]["class"], "CommandNotFound");

    assert_eq!(ours[0], json!({"return": 64 << 20}));
    // 5000 → 4096, the power of two below; the parameter shows it, as
    // QEMU 10's parameters do after setting 4096.
    assert_eq!(ours[1], json!({"return": {}}));
    assert_eq!(ours[2], json!({"return": 4096}));
    assert_eq!(theirs[2], json!({"return": {}}));
    assert_eq!(ours[3], theirs[3]);
    assert_eq!(ours[5], json!({"return": 64 << 20}));
    assert_eq!(theirs[5]["return"]["xbzrle-cache-size"], json!(64 << 20));
    // Too small: refused by both (QEMU 2.8's words for the reference's
    // command, QEMU 10's for its parameter).
    assert_eq!(
        ours[6],
        error("Parameter 'cache size' expects is smaller than page size")
    );
    assert_eq!(
        theirs[6],
        error("Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size")
    );
    // Larger than guest RAM (128 MiB): the reference refuses, QEMU 10's
    // parameter accepts.
    assert_eq!(
        ours[7],
        error("Parameter 'cache size' expects exceeds guest ram size")
    );
    assert_eq!(theirs[7], json!({"return": {}}));
    assert_eq!(ours[8], ours[7]);
    assert_eq!(
        ours[9],
        error("Invalid parameter type for 'value', expected: integer")
    );
    assert_eq!(ours[10], error("Parameter 'value' is missing"));
    assert_eq!(ours[11], json!({"return": 64 << 20}));
}

#[test]
fn x_colo_lost_heartbeat_outside_colo_is_qemus_error() {
    let cmds = [
        cmd("x-colo-lost-heartbeat", Value::Null),
        cmd("x-colo-lost-heartbeat", json!({"a": 1})),
    ];
    let (theirs, ours) = side_by_side(&cmds);
    assert_same(&cmds, &theirs, &ours);
    assert_eq!(ours[0], error("VM is not in COLO mode"));
}
