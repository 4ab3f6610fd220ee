//! The QMP greeting comes as soon as the broker can answer, before the
//! workers are up: commands the broker answers alone run at once, commands
//! that need the VM wait for start-up and then give the started VM's
//! answer (or start-up's error). Needs /dev/kvm.

mod common;

use std::os::unix::net::UnixListener;
use std::time::Instant;

use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

/// Connects as soon as the socket exists and negotiates, without waiting
/// for start-up (unlike `Bulkhead::client`).
fn early_client(b: &Bulkhead) -> (Qmp, Value) {
    let (mut q, greeting) = b.connect();
    q.negotiate();
    (q, greeting)
}

#[test]
fn status_asked_right_after_the_greeting_is_the_started_vms() {
    let b = Bulkhead::start(&[]);
    let (mut q, greeting) = early_client(&b);
    assert!(greeting["QMP"]["version"].is_object(), "{greeting}");
    assert_eq!(
        q.ok("query-status"),
        json!({"running": true, "status": "running"})
    );
}

#[test]
fn status_asked_right_after_the_greeting_of_a_paused_start_is_prelaunch() {
    let b = Bulkhead::start(&["-S"]);
    let (mut q, _) = early_client(&b);
    assert_eq!(q.ok("query-status")["status"], "prelaunch");
    assert_eq!(q.ok("cont"), json!({}));
    q.event("RESUME");
    assert_eq!(q.ok("query-status")["status"], "running");
}

#[test]
fn broker_answers_while_a_device_backend_stalls_start_up_then_reports_the_start_error() {
    let dir = common::TempDir::new();
    // A vhost-user backend that accepts connections (the backlog does) but
    // never answers: vcpu-proc's device set-up, and so start-up, waits for
    // it until the broker's handshake deadline.
    let backend = dir.0.join("stalled.sock");
    let _listener = UnixListener::bind(&backend).unwrap();
    let mut b = Bulkhead::start(&[
        "-name",
        "early",
        "-chardev",
        &format!("socket,id=c0,path={}", backend.display()),
        "-device",
        "vhost-user-blk,chardev=c0,id=vdb",
    ]);
    let asked = Instant::now();
    let (mut q, _) = early_client(&b);
    // Answered by the broker alone, while start-up is still stalled.
    assert_eq!(q.ok("query-name"), json!({"name": "early"}));
    let version = q.ok("query-version");
    assert!(
        version["package"]
            .as_str()
            .is_some_and(|p| p.starts_with("bulkhead")),
        "{version}"
    );
    assert!(
        b.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "start-up ended before the stalled backend's deadline ({:?})",
        asked.elapsed()
    );
    // Needs the VM: waits for start-up, which fails on the silent backend.
    let r = q.execute("query-status", Value::Null);
    let desc = r["error"]["desc"].as_str().unwrap_or_default().to_owned();
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert!(desc.starts_with("the VM could not be started"), "{r}");
    let status = b.wait_exit();
    assert_eq!(status.code(), Some(4), "start-up failure exit status");
    assert!(!b.sock.exists(), "QMP socket file removed at exit");
}

#[test]
fn replies_keep_request_order_when_broker_only_commands_follow_worker_commands() {
    // The reader answers broker-only commands itself only while nothing
    // is in progress: pipelined behind commands that go through
    // vcpu-proc, they must still be answered after them.
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let mut batch = String::new();
    for i in 0..40 {
        let cmd = if i % 2 == 0 {
            "query-status"
        } else {
            "query-version"
        };
        batch.push_str(&json!({"execute": cmd, "id": i}).to_string());
    }
    q.send_raw(batch.as_bytes());
    for i in 0..40 {
        let r = q.reply();
        assert_eq!(r["id"], i, "reply out of order: {r}");
        assert!(r.get("return").is_some(), "{r}");
    }
}

#[test]
fn qmp_session_threads_run_with_the_brokers_reduced_capabilities() {
    // The QMP server starts before the main thread drops its capabilities
    // (they are per thread): its threads must drop them themselves.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (nothing to drop otherwise)");
        return;
    }
    let b = Bulkhead::start(&["-m", "32M"]);
    let _q = b.client();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", common::broker_pid(&b))).unwrap();
    let mut seen = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("qmp-") {
            continue;
        }
        seen += 1;
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            // CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN.
            assert_eq!(line, format!("{set}:\t00000000002001e0"), "thread {comm}");
        }
    }
    // The accept thread and one session's reader, dispatcher and writer.
    assert!(seen >= 4, "QMP threads found: {seen}");
}

#[test]
fn introspection_probes_answer_while_start_up_is_stalled_and_hmp_waits_for_it() {
    // libvirt's probes answer from the command line alone (BROKER_ONLY):
    // they must not wait for the workers; HMP runs worker commands, so it
    // waits for start-up like they do.
    let dir = common::TempDir::new();
    let backend = dir.0.join("stalled.sock");
    let _listener = UnixListener::bind(&backend).unwrap();
    let mut b = Bulkhead::start(&[
        "-uuid",
        "12345678-1234-1234-1234-123456789abc",
        "-chardev",
        &format!("socket,id=c0,path={}", backend.display()),
        "-device",
        "vhost-user-blk,chardev=c0,id=vdb",
    ]);
    let (mut q, _) = early_client(&b);
    assert_eq!(
        q.ok("query-uuid"),
        json!({"UUID": "12345678-1234-1234-1234-123456789abc"})
    );
    assert_eq!(q.ok("query-target"), json!({"arch": "x86_64"}));
    assert!(q
        .ok("query-machines")
        .as_array()
        .is_some_and(|m| !m.is_empty()));
    assert!(q.ok("query-cpu-definitions").as_array().is_some());
    assert!(q.ok("qom-list-types").as_array().is_some());
    assert_eq!(
        q.execute("qom-get", json!({"path": "/machine", "property": "type"}))["return"],
        "microvm-machine"
    );
    assert!(
        b.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "start-up ended before the stalled backend's deadline"
    );
    let r = q.execute(
        "human-monitor-command",
        json!({"command-line": "info status"}),
    );
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    let desc = r["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.starts_with("the VM could not be started"), "{r}");
    assert_eq!(b.wait_exit().code(), Some(4));
}

#[test]
fn machine_none_greets_early_and_its_run_state_works_after_the_gate() {
    let b = Bulkhead::start(&["-M", "none", "-S"]);
    let (mut q, _) = early_client(&b);
    assert_eq!(q.ok("query-status")["status"], "prelaunch");
    assert_eq!(q.ok("query-cpus-fast"), json!([]));
    assert_eq!(q.ok("cont"), json!({}));
    q.event("RESUME");
    assert_eq!(q.ok("query-status")["status"], "running");
    assert!(
        !common::children(common::broker_pid(&b))
            .iter()
            .any(|(_, c)| c == "vcpu-proc"),
        "-M none started a vcpu-proc"
    );
}
