//! VM life-cycle commands over QMP on the real `bulkhead` (with vcpu-proc
//! running the built-in test guest). Needs /dev/kvm.

mod common;

use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

#[test]
fn stop_and_cont_emit_events_and_change_status() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    assert_eq!(
        q.ok("query-status"),
        json!({"running": true, "status": "running"})
    );
    assert_eq!(q.ok("stop"), json!({}));
    let stop = q.event("STOP");
    assert!(stop["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert!(stop["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    assert_eq!(
        q.ok("query-status"),
        json!({"running": false, "status": "paused"})
    );
    assert_eq!(q.ok("cont"), json!({}));
    q.event("RESUME");
    assert_eq!(q.ok("query-status")["status"], "running");
}

#[test]
fn start_paused_with_s_is_prelaunch_until_cont() {
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    assert_eq!(
        q.ok("query-status"),
        json!({"running": false, "status": "prelaunch"})
    );
    q.ok("cont");
    q.event("RESUME");
    assert_eq!(q.ok("query-status")["running"], true);
}

#[test]
fn quit_replies_emits_shutdown_exits_zero_and_removes_socket() {
    let mut b = Bulkhead::start(&[]);
    let mut q = b.client();
    let mut other = b.client();
    let r = q.request(json!({"execute": "quit", "id": "bye"}));
    assert_eq!(r, json!({"return": {}, "id": "bye"}));
    let ev = q.event("SHUTDOWN");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(other.event("SHUTDOWN")["data"]["reason"], "host-qmp-quit");
    assert!(q.try_recv().is_none(), "connection closes after quit");
    let status = b.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(!b.sock.exists(), "QMP socket file removed at exit");
}

#[test]
fn system_reset_emits_reset_with_host_reason() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    assert_eq!(q.ok("system_reset"), json!({}));
    let ev = q.event("RESET");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
}

#[test]
fn query_cpus_fast_reports_every_vcpu() {
    let b = Bulkhead::start(&["-smp", "2"]);
    let mut q = b.client();
    let cpus = q.ok("query-cpus-fast");
    let cpus = cpus.as_array().unwrap();
    assert_eq!(cpus.len(), 2);
    for (i, c) in cpus.iter().enumerate() {
        assert_eq!(c["cpu-index"], i);
        assert_eq!(c["qom-path"], format!("/machine/unattached/device[{i}]"));
        assert_eq!(c["target"], "x86_64");
        assert!(c["thread-id"].as_i64().unwrap() > 0);
        assert!(
            c["props"]["socket-id"].is_i64()
                && c["props"]["core-id"].is_i64()
                && c["props"]["thread-id"].is_i64()
        );
    }
}

#[test]
fn cpu_command_accepts_existing_indexes_only() {
    let b = Bulkhead::start(&["-smp", "2"]);
    let mut q = b.client();
    assert_eq!(q.execute("cpu", json!({"index": 1}))["return"], json!({}));
    for bad in [2, -1] {
        let r = q.execute("cpu", json!({"index": bad}));
        assert_eq!(
            Qmp::error_of(&r),
            ("GenericError".into(), "Invalid CPU index".into())
        );
    }
}

#[test]
fn events_reach_only_negotiated_sessions() {
    let b = Bulkhead::start(&[]);
    let (mut unnegotiated, _) = b.connect();
    let mut q = b.client();
    q.ok("stop");
    q.event("STOP");
    // The first thing the unnegotiated client sees is its own reply.
    let r = unnegotiated.request(json!({"execute": "qmp_capabilities", "id": 1}));
    assert_eq!(r, json!({"return": {}, "id": 1}));
    assert!(unnegotiated.events.is_empty());
    q.ok("cont");
    assert_eq!(unnegotiated.event("RESUME")["event"], Value::from("RESUME"));
}
