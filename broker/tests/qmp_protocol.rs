//! QMP protocol behaviour of the real `bulkhead` binary, checked over its
//! socket against what QEMU does. Needs /dev/kvm (the broker starts a VM).

mod common;

use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

#[test]
fn greeting_announces_qemu_version_bulkhead_package_and_oob() {
    let b = Bulkhead::start(&[]);
    let (_q, g) = b.connect();
    let v = &g["QMP"]["version"];
    assert_eq!(v["qemu"]["major"], 10);
    assert!(v["qemu"]["minor"].is_u64() && v["qemu"]["micro"].is_u64());
    assert_eq!(
        v["package"],
        format!("bulkhead {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(g["QMP"]["capabilities"], json!(["oob"]));
}

#[test]
fn commands_before_negotiation_fail_with_command_not_found() {
    let b = Bulkhead::start(&[]);
    let (mut q, _) = b.connect();
    for name in ["query-version", "query-status", "no-such-command"] {
        let r = q.request(json!({"execute": name, "id": 1}));
        assert_eq!(r["id"], 1);
        assert_eq!(
            Qmp::error_of(&r),
            (
                "CommandNotFound".into(),
                "Expecting capabilities negotiation with 'qmp_capabilities'".into()
            )
        );
    }
    q.negotiate();
    assert!(q.ok("query-version")["qemu"].is_object());
}

#[test]
fn second_qmp_capabilities_is_rejected() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let r = q.execute("qmp_capabilities", Value::Null);
    assert_eq!(
        Qmp::error_of(&r),
        (
            "CommandNotFound".into(),
            "Capabilities negotiation is already complete, command ignored".into()
        )
    );
}

#[test]
fn qmp_capabilities_validates_the_capability_list() {
    let b = Bulkhead::start(&[]);
    let (mut q, _) = b.connect();
    let r = q.execute("qmp_capabilities", json!({"enable": ["foo"]}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "Parameter 'null' does not accept value 'foo'"
    );
    let r = q.execute("qmp_capabilities", json!({"enable": "oob"}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "Invalid parameter type for 'enable', expected: array"
    );
    let r = q.execute("qmp_capabilities", json!({"enable": ["oob"]}));
    assert_eq!(r["return"], json!({}));
}

#[test]
fn negotiation_state_is_per_session() {
    let b = Bulkhead::start(&[]);
    let mut a = b.client();
    let (mut fresh, _) = b.connect();
    let r = fresh.execute("query-version", Value::Null);
    assert_eq!(Qmp::error_of(&r).0, "CommandNotFound");
    assert!(a.ok("query-version").is_object());
}

#[test]
fn id_is_echoed_verbatim_for_any_json_value() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let ids = [
        json!({"a": [1, {"b": null}], "c": "d"}),
        json!([1, "two", 3.5, false]),
        json!(42),
        json!(-7),
        json!(1.25),
        json!("text with \"quotes\" and ünïcode"),
        json!(null),
        json!(true),
    ];
    for id in ids {
        let ok = q.request(json!({"execute": "query-version", "id": id.clone()}));
        assert_eq!(ok["id"], id);
        let err = q.request(json!({"execute": "nope", "id": id.clone()}));
        assert_eq!(err["id"], id);
    }
}

#[test]
fn reply_without_id_has_no_id() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let r = q.request(json!({"execute": "query-version"}));
    assert!(r.get("id").is_none());
}

#[test]
fn unknown_command_returns_command_not_found() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let r = q.execute("frobnicate", Value::Null);
    assert_eq!(
        Qmp::error_of(&r),
        (
            "CommandNotFound".into(),
            "The command frobnicate has not been found".into()
        )
    );
}

#[test]
fn argument_errors_use_qemu_wording() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let cases = [
        (
            json!({"execute": "query-version", "arguments": {"a": 1}}),
            "Parameter 'a' is unexpected",
        ),
        (json!({"execute": "cpu"}), "Parameter 'index' is missing"),
        (
            json!({"execute": "cpu", "arguments": {}}),
            "Parameter 'index' is missing",
        ),
        (
            json!({"execute": "cpu", "arguments": {"index": "0"}}),
            "Invalid parameter type for 'index', expected: integer",
        ),
        (
            json!({"execute": "cpu", "arguments": {"index": 0.5}}),
            "Invalid parameter type for 'index', expected: integer",
        ),
        (
            json!({"execute": "cpu", "arguments": {"index": 0, "x": 1}}),
            "Parameter 'x' is unexpected",
        ),
        (
            json!({"execute": "cpu", "arguments": []}),
            "QMP input member 'arguments' must be an object",
        ),
        (
            json!({"execute": "cpu", "arguments": null}),
            "QMP input member 'arguments' must be an object",
        ),
        (
            json!({"execute": "qmp_capabilities", "arguments": {"enable": [1]}}),
            "Invalid parameter type for 'enable[0]', expected: string",
        ),
    ];
    for (req, desc) in cases {
        let r = q.request(req.clone());
        assert_eq!(
            Qmp::error_of(&r),
            ("GenericError".into(), desc.into()),
            "request {req}"
        );
    }
}

#[test]
fn malformed_requests_use_qemu_wording() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let cases: [(&str, &str); 6] = [
        ("[1]", "QMP input must be a JSON object"),
        ("\"x\"", "QMP input must be a JSON object"),
        (r#"{"arguments": {}}"#, "QMP input lacks member 'execute'"),
        (
            r#"{"execute": 1}"#,
            "QMP input member 'execute' must be a string",
        ),
        (
            r#"{"execute": "query-version", "foo": 1}"#,
            "QMP input member 'foo' is unexpected",
        ),
        (
            r#"{"exec-oob": "query-version"}"#,
            "QMP input member 'exec-oob' is unexpected",
        ),
    ];
    for (raw, desc) in cases {
        q.send_raw(raw.as_bytes());
        let r = q.reply();
        assert_eq!(
            Qmp::error_of(&r),
            ("GenericError".into(), desc.into()),
            "request {raw}"
        );
    }
    let r = q.request(json!({"execute": "query-version", "control": {}, "id": 5}));
    assert_eq!(r["id"], 5);
    assert_eq!(
        Qmp::error_of(&r).1,
        "QMP input member 'control' is unexpected"
    );
}

#[test]
fn json_syntax_error_is_answered_without_id_and_session_continues() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    q.send_raw(br#"{"execute": "query-version", "id": 1 ,}"#);
    let r = q.reply();
    assert!(r.get("id").is_none());
    assert_eq!(
        Qmp::error_of(&r),
        (
            "GenericError".into(),
            "JSON parse error, expecting value".into()
        )
    );
    q.send_raw(b"@");
    assert_eq!(Qmp::error_of(&q.reply()).1, "JSON parse error, stray '@'");
    let ok = q.request(json!({"execute": "query-version", "id": 2}));
    assert_eq!(ok["id"], 2);
    assert!(ok["return"].is_object());
}

#[test]
fn single_quoted_strings_are_accepted_like_qemu() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    q.send_raw(b"{'execute': 'query-version', 'id': 'sq'}");
    assert_eq!(q.reply()["id"], "sq");
}

#[test]
fn oversized_message_is_refused_and_session_continues() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let big = format!(
        r#"{{"execute": "query-version", "id": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    q.send_raw(big.as_bytes());
    let r = q.reply();
    assert_eq!(
        Qmp::error_of(&r),
        (
            "GenericError".into(),
            "JSON token size limit exceeded".into()
        )
    );
    let ok = q.request(json!({"execute": "query-version", "id": "after"}));
    assert_eq!(ok["id"], "after");
}

#[test]
fn too_deep_nesting_is_refused_and_session_continues() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let deep = format!(
        r#"{{"execute": "query-version", "id": {}{}}}"#,
        "[".repeat(2000),
        "]".repeat(2000)
    );
    q.send_raw(deep.as_bytes());
    assert_eq!(
        Qmp::error_of(&q.reply()).1,
        "JSON nesting depth limit exceeded"
    );
    assert_eq!(
        q.request(json!({"execute": "query-version", "id": 3}))["id"],
        3
    );
}

#[test]
fn pipelined_commands_in_one_write_are_answered_in_order() {
    let b = Bulkhead::start(&[]);
    let (mut q, _) = b.connect();
    let mut batch = String::from(r#"{"execute": "qmp_capabilities", "id": "caps"}"#);
    for i in 0..100 {
        let cmd = ["query-version", "query-status", "nope", "query-name"][i % 4];
        batch.push_str(&format!(r#"{{"execute": "{cmd}", "id": {i}}}"#));
    }
    q.send_raw(batch.as_bytes());
    assert_eq!(q.reply()["id"], "caps");
    for i in 0..100 {
        assert_eq!(q.reply()["id"], i);
    }
}

#[test]
fn message_split_across_writes_is_reassembled() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let msg = br#"{"execute": "query-version", "id": {"split": "}{"}}"#;
    for chunk in msg.chunks(3) {
        q.send_raw(chunk);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(q.reply()["id"], json!({"split": "}{"}));
}

#[test]
fn exec_oob_requires_oob_capability_and_an_oob_command() {
    let b = Bulkhead::start(&[]);
    let mut plain = b.client();
    let r = plain.request(json!({"exec-oob": "__org.bulkhead_ping", "id": 1}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "QMP input member 'exec-oob' is unexpected"
    );

    let (mut q, _) = b.connect();
    assert_eq!(
        q.execute("qmp_capabilities", json!({"enable": ["oob"]}))["return"],
        json!({})
    );
    let r = q.request(json!({"exec-oob": "query-version", "id": 2}));
    assert_eq!(
        Qmp::error_of(&r),
        (
            "GenericError".into(),
            "The command query-version does not support OOB".into()
        )
    );
    let r = q.request(json!({"exec-oob": "nope", "id": 3}));
    assert_eq!(Qmp::error_of(&r).0, "CommandNotFound");
    let r = q.request(json!({"exec-oob": "query-version", "execute": "query-version", "id": 4}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "QMP input member 'execute' clashes with 'exec-oob'"
    );
    let r = q.request(json!({"exec-oob": "__org.bulkhead_ping", "id": 5}));
    assert_eq!(r, json!({"return": {}, "id": 5}));
}

#[test]
fn exec_oob_is_answered_even_behind_queued_in_band_commands() {
    let b = Bulkhead::start(&[]);
    let (mut q, _) = b.connect();
    assert_eq!(
        q.execute("qmp_capabilities", json!({"enable": ["oob"]}))["return"],
        json!({})
    );
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&format!(r#"{{"execute": "query-status", "id": {i}}}"#));
    }
    batch.push_str(r#"{"exec-oob": "__org.bulkhead_ping", "id": "oob"}"#);
    q.send_raw(batch.as_bytes());
    let mut ids: Vec<Value> = (0..51).map(|_| q.reply()["id"].clone()).collect();
    assert!(ids.contains(&json!("oob")));
    ids.retain(|i| i != "oob");
    assert_eq!(
        ids,
        (0..50).map(|i| json!(i)).collect::<Vec<_>>(),
        "in-band replies stay in order"
    );
}

#[test]
fn query_commands_lists_exactly_the_registry() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let mut listed: Vec<String> = q
        .ok("query-commands")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let mut declared: Vec<String> = broker::commands::registry()
        .commands()
        .iter()
        .map(|c| c.name.to_owned())
        .collect();
    listed.sort();
    declared.sort();
    assert_eq!(listed, declared);
    for must in [
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-qmp-schema",
        "query-status",
        "stop",
        "cont",
        "quit",
    ] {
        assert!(listed.iter().any(|n| n == must), "{must} missing");
    }
}

#[test]
fn query_qmp_schema_defines_every_referenced_type() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let schema = q.ok("query-qmp-schema");
    let entries = schema.as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let mut refs: Vec<&str> = Vec::new();
    for e in entries {
        match e["meta-type"].as_str().unwrap() {
            "command" => {
                refs.push(e["arg-type"].as_str().unwrap());
                refs.push(e["ret-type"].as_str().unwrap());
            }
            "event" => refs.push(e["arg-type"].as_str().unwrap()),
            "array" => refs.push(e["element-type"].as_str().unwrap()),
            "object" => refs.extend(
                e["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["type"].as_str().unwrap()),
            ),
            "enum" => assert!(!e["members"].as_array().unwrap().is_empty()),
            "builtin" => assert!(e["json-type"].is_string()),
            other => panic!("unexpected meta-type {other}"),
        }
    }
    for r in refs {
        assert!(names.contains(&r), "type {r} is referenced but not defined");
    }
    let commands: Vec<&Value> = entries
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .collect();
    assert_eq!(
        commands.len(),
        broker::commands::registry().commands().len()
    );
    let ping = commands
        .iter()
        .find(|e| e["name"] == "__org.bulkhead_ping")
        .unwrap();
    assert_eq!(ping["allow-oob"], true);
    for ev in ["STOP", "RESUME", "RESET", "SHUTDOWN", "POWERDOWN"] {
        assert!(
            entries
                .iter()
                .any(|e| e["meta-type"] == "event" && e["name"] == ev),
            "event {ev} missing"
        );
    }
}

#[test]
fn query_name_reports_the_name_only_when_set() {
    let unnamed = Bulkhead::start(&[]);
    assert_eq!(unnamed.client().ok("query-name"), json!({}));
    let named = Bulkhead::start(&["-name", "vm-one"]);
    assert_eq!(named.client().ok("query-name"), json!({"name": "vm-one"}));
}

#[test]
fn concurrent_clients_each_negotiate_run_commands_and_receive_events() {
    let b = Bulkhead::start(&[]);
    let sock = b.sock.clone();
    let ready = std::sync::Arc::new(std::sync::Barrier::new(33));
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let sock = sock.clone();
            let ready = ready.clone();
            std::thread::spawn(move || {
                let (mut q, g) = Qmp::connect(&sock);
                assert!(g.get("QMP").is_some());
                q.negotiate();
                for k in 0..10 {
                    let r = q.request(json!({"execute": "query-version", "id": [i, k]}));
                    assert_eq!(r["id"], json!([i, k]));
                }
                ready.wait();
                q.event("STOP");
                q.event("RESUME");
            })
        })
        .collect();
    ready.wait();
    let mut ctl = b.client();
    ctl.ok("stop");
    ctl.ok("cont");
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn idle_client_that_never_reads_does_not_stall_others() {
    let b = Bulkhead::start(&[]);
    let mut idle = b.client();
    let mut active = b.client();
    for _ in 0..20 {
        active.ok("stop");
        active.ok("cont");
    }
    // The idle client still gets everything once it reads.
    idle.event("STOP");
    idle.event("RESUME");
}

#[test]
fn stuck_client_is_disconnected_when_its_queue_overflows_and_others_go_on() {
    let b = Bulkhead::start(&[]);
    let mut stuck = b.client();
    let mut active = b.client();
    // Far more events than the session queue plus the socket buffer hold.
    let pairs = broker::qmp::events::SESSION_QUEUE_DEPTH * 2;
    let mut batch = String::new();
    for _ in 0..pairs {
        batch.push_str(r#"{"execute": "stop"}{"execute": "cont"}"#);
    }
    // Write from another thread while this one reads: the active client
    // must keep reading, or it would be a stuck client too.
    let mut w = active.stream.try_clone().unwrap();
    let writer =
        std::thread::spawn(move || std::io::Write::write_all(&mut w, batch.as_bytes()).unwrap());
    for _ in 0..pairs * 2 {
        assert_eq!(active.reply()["return"], json!({}));
    }
    writer.join().unwrap();
    active.events.clear();
    assert!(active.ok("query-version").is_object());
    // The stuck client gets what was already buffered, then end of stream.
    let mut received = 0usize;
    while stuck.try_recv().is_some() {
        received += 1;
    }
    assert!(
        received < pairs * 2,
        "stuck client was disconnected before it got every event"
    );
}
