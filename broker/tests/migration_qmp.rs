//! The live-migration commands without a migration engine behind them:
//! argument and state errors, `query-migrate` before and after a failed
//! connection, `-incoming` listening, each reply compared with
//! `qemu-system-x86_64` 10 given the same commands.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu::Peer;
use common::{Bulkhead, Qmp, TempDir, TIMEOUT};
use serde_json::{json, Value};

/// `reply` without the client's `id`.
fn plain(mut reply: Value) -> Value {
    if let Some(o) = reply.as_object_mut() {
        o.remove("id");
    }
    reply
}

fn run(q: &mut Qmp, cmds: &[Value]) -> Vec<Value> {
    cmds.iter().map(|c| plain(q.request(c.clone()))).collect()
}

/// The replies to `cmds` of bulkhead and of QEMU, both started with
/// `args`: (ours, theirs).
fn ours_and_qemus(dir: &Path, args: &[&str], cmds: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let (_qemu, mut theirs) = Peer::microvm(&dir.join("qemu.sock"), args);
    let theirs = run(&mut theirs, cmds);
    let b = Bulkhead::start(args);
    let mut q = b.client();
    (run(&mut q, cmds), theirs)
}

fn cmd(name: &str, args: Value) -> Value {
    if args.is_null() {
        json!({"execute": name})
    } else {
        json!({"execute": name, "arguments": args})
    }
}

/// Polls `query-migrate` until its status is not `setup`.
fn settled(q: &mut Qmp) -> Value {
    let start = Instant::now();
    loop {
        let r = plain(q.execute("query-migrate", Value::Null));
        if r["return"]["status"] != "setup" {
            return r;
        }
        assert!(start.elapsed() < TIMEOUT, "migration stays in setup: {r}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn migrate_argument_and_state_errors_match_qemu() {
    let dir = TempDir::new();
    let cmds = [
        cmd("query-migrate", Value::Null),
        cmd("migrate", json!({})),
        cmd("migrate", json!({"uri": "foo:bar"})),
        cmd("migrate", json!({"uri": "unix:"})),
        cmd("migrate", json!({"uri": "tcp:nohost"})),
        cmd("migrate", json!({"uri": "tcp:127.0.0.1:"})),
        cmd("migrate", json!({"uri": "fd:nosuch"})),
        cmd("migrate", json!({"uri": "unix:/x", "blk": true})),
        cmd("migrate", json!({"uri": "unix:/x", "inc": false})),
        cmd("migrate", json!({"uri": "unix:/x", "resume": true})),
        cmd("migrate", json!({"uri": 5})),
        cmd("migrate-incoming", json!({"uri": "unix:/x"})),
        cmd("migrate-incoming", json!({})),
        cmd("migrate_cancel", Value::Null),
        cmd("query-migrate", Value::Null),
    ];
    let (ours, theirs) = ours_and_qemus(&dir.0, &["-S"], &cmds);
    for ((c, o), t) in cmds.iter().zip(&ours).zip(&theirs) {
        assert_eq!(o, t, "{c}");
    }
    assert_eq!(ours[0], json!({"return": {}}));
}

#[test]
fn transports_bulkhead_lacks_are_unknown_protocols() {
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    for uri in ["exec:true", "file:/tmp/x", "rdma:1.2.3.4:5", "vsock:1:2"] {
        let r = q.execute("migrate", json!({"uri": uri}));
        assert_eq!(
            Qmp::error_of(&r),
            (
                "GenericError".to_owned(),
                format!("unknown migration protocol: {uri}")
            )
        );
    }
    assert_eq!(
        q.execute("query-migrate", Value::Null),
        json!({"return": {}})
    );
}

#[test]
fn a_refused_connection_is_a_failed_migration_as_in_qemu() {
    let dir = TempDir::new();
    let events = cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    let nowhere = dir.0.join("nobody-listens");
    let migrate = cmd(
        "migrate",
        json!({"uri": format!("unix:{}", nowhere.display())}),
    );
    let (_qemu, mut qemu) = Peer::microvm(&dir.0.join("qemu.sock"), &["-S"]);
    run(&mut qemu, std::slice::from_ref(&events));
    let theirs_reply = plain(qemu.request(migrate.clone()));
    let theirs = settled(&mut qemu);

    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    run(&mut q, std::slice::from_ref(&events));
    let ours_reply = plain(q.request(migrate.clone()));
    let ours = settled(&mut q);
    assert_eq!(ours_reply, theirs_reply);
    assert_eq!(ours, theirs);
    assert_eq!(ours["return"]["status"], "failed");
    // A failed migration is not one in progress: a new one may start.
    let again = q.execute("migrate", json!({"uri": "tcp:127.0.0.1:1"}));
    assert_eq!(again, json!({"return": {}}));
    let r = settled(&mut q);
    assert_eq!(
        r["return"]["error-desc"],
        "Failed to connect to '127.0.0.1:1': Connection refused"
    );
}

#[test]
fn migration_events_follow_the_status_with_the_events_capability() {
    let dir = TempDir::new();
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    let nowhere = dir.0.join("nobody-listens");
    q.execute(
        "migrate",
        json!({"uri": format!("unix:{}", nowhere.display())}),
    );
    for status in ["setup", "failed"] {
        let e = q.event("MIGRATION");
        assert_eq!(e["data"]["status"], status);
    }
}

#[test]
fn migration_events_need_the_events_capability() {
    let dir = TempDir::new();
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    let nowhere = dir.0.join("nobody-listens");
    q.execute(
        "migrate",
        json!({"uri": format!("unix:{}", nowhere.display())}),
    );
    settled(&mut q);
    q.execute("query-status", Value::Null);
    assert!(
        !q.events.iter().any(|e| e["event"] == "MIGRATION"),
        "{:?}",
        q.events
    );
}

#[test]
fn incoming_defer_errors_match_qemu() {
    let dir = TempDir::new();
    let bad_dir = dir.0.join("no-such-dir").join("in.sock");
    let cmds = [
        cmd("query-migrate", Value::Null),
        cmd("migrate", json!({"uri": "unix:/x"})),
        cmd("migrate-incoming", json!({"uri": "foo:x"})),
        cmd("migrate-incoming", json!({"uri": "tcp:nohost"})),
        cmd("migrate-incoming", json!({"uri": "unix:"})),
        cmd("query-migrate", Value::Null),
        cmd(
            "migrate-incoming",
            json!({"uri": format!("unix:{}", bad_dir.display())}),
        ),
        // QEMU moved to setup before the bind failed: no second try.
        cmd("query-migrate", Value::Null),
        cmd("migrate-incoming", json!({"uri": "unix:/x"})),
    ];
    let (ours, theirs) = ours_and_qemus(&dir.0, &["-incoming", "defer"], &cmds);
    for ((c, o), t) in cmds.iter().zip(&ours).zip(&theirs) {
        assert_eq!(o, t, "{c}");
    }
}

#[test]
fn incoming_fd_that_is_missing_matches_qemu() {
    let dir = TempDir::new();
    let cmds = [
        cmd("migrate-incoming", json!({"uri": "fd:nosuch"})),
        cmd("query-migrate", Value::Null),
        cmd("migrate-incoming", json!({"uri": "unix:/x"})),
    ];
    let (ours, theirs) = ours_and_qemus(&dir.0, &["-incoming", "defer"], &cmds);
    assert_eq!(ours, theirs);
}

#[test]
fn incoming_uri_listens_at_start_up_as_qemu() {
    let dir = TempDir::new();
    let theirs_path = dir.0.join("qemu-in.sock");
    let (_qemu, mut qemu) = Peer::microvm(
        &dir.0.join("qemu.sock"),
        &["-incoming", &format!("unix:{}", theirs_path.display())],
    );
    let theirs = plain(qemu.execute("query-migrate", Value::Null));
    let again = cmd("migrate-incoming", json!({"uri": "unix:/x"}));
    let theirs_again = plain(qemu.request(again.clone()));

    let ours_path = dir.0.join("ours-in.sock");
    let b = Bulkhead::start(&["-incoming", &format!("unix:{}", ours_path.display())]);
    let mut q = b.client();
    let ours = plain(q.execute("query-migrate", Value::Null));
    assert_eq!(
        ours,
        json!({"return": {"status": "setup",
            "socket-address": [{"type": "unix", "path": ours_path.display().to_string()}]}})
    );
    assert_eq!(theirs["return"]["status"], "setup");
    assert_eq!(theirs["return"]["socket-address"][0]["type"], "unix");
    assert_eq!(plain(q.request(again)), theirs_again);
    // Listening already: the socket exists before any client asks.
    assert!(ours_path.exists());
}

#[test]
fn incoming_tcp_port_zero_reports_the_bound_port() {
    let b = Bulkhead::start(&["-incoming", "tcp:127.0.0.1:0"]);
    let mut q = b.client();
    let r = q.execute("query-migrate", Value::Null);
    let a = &r["return"]["socket-address"][0];
    assert_eq!(a["type"], "inet");
    assert_eq!(a["host"], "127.0.0.1");
    assert_eq!(a["ipv4"], true);
    let port: u16 = a["port"].as_str().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    // It really listens there.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
}

/// Runs `bulkhead ARGS` expecting a start-up failure; returns its exit
/// status and the last stderr line.
fn failing_start(args: &[&str]) -> (Option<i32>, String) {
    common::build_workers();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    cmd.args(["-serial", "null", "-display", "none"]);
    exit_and_last_error(cmd.args(args))
}

/// [`failing_start`] for `qemu-system-x86_64 -M microvm`.
fn qemu_failing_start(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm", "-display", "none", "-nodefaults"]);
    exit_and_last_error(cmd.args(args))
}

/// Runs `cmd` to its end: its exit status and its last stderr line.
fn exit_and_last_error(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default().to_owned();
    (out.status.code(), last)
}

#[test]
fn bad_incoming_uris_end_start_up_with_qemus_message() {
    let dir = TempDir::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_uri = format!("tcp:127.0.0.1:{}", busy.local_addr().unwrap().port());
    let bad_unix = format!("unix:{}/no/such/dir", dir.0.display());
    for uri in [
        "foo:x",
        "tcp:nohost",
        bad_unix.as_str(),
        busy_uri.as_str(),
        "fd:nosuch",
    ] {
        let (code, ours) = failing_start(&["-incoming", uri]);
        let (qcode, theirs) = qemu_failing_start(&["-incoming", uri]);
        assert_eq!(code, Some(1), "{uri}: {ours}");
        assert_eq!(qcode, Some(1), "{uri}: {theirs}");
        let strip = |s: &str, prog: &str| s.strip_prefix(prog).unwrap_or(s).to_owned();
        assert_eq!(
            strip(&ours, "bulkhead: "),
            strip(&theirs, "qemu-system-x86_64: "),
            "{uri}"
        );
    }
}
