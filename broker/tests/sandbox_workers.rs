//! The worker sandbox, end to end: the real `bulkhead` (sandbox on, the
//! default) with its real workers. Each worker of a running VM is read
//! from `/proc` (seccomp filter, no_new_privs, no capabilities, non-root
//! uid, namespaces of its own, an empty root), then made to try escapes
//! through the test-only `x-bulkhead-test-escape` command (feature
//! `test-hooks`, never in release builds): each must fail, and a worker
//! killed by seccomp must be named in the exit event with its syscall and
//! handled by the usual policy (block-proc restarted, vcpu-proc a guest
//! crash). Needs root and /dev/kvm.

mod common;

use std::time::{Duration, Instant};

use common::{broker_pid, children, Bulkhead, Qmp, TIMEOUT};
use serde_json::{json, Value};

/// The value of `field` in `/proc/PID/status`, if the process exists.
fn status_field(pid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// The pid of the broker's child named `name` once it has entered its
/// sandbox (its seccomp filter is installed last).
fn sandboxed_worker(b: &Bulkhead, name: &str) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = children(broker_pid(b)).into_iter().find(|(_, c)| c == name);
        if let Some((pid, _)) = found {
            if status_field(pid, "Seccomp").as_deref() == Some("2") {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no sandboxed {name} (found {found:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ns(pid: u32, which: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}")).unwrap()
}

fn assert_sandboxed(broker: u32, pid: u32, name: &str) {
    assert_eq!(status_field(pid, "Seccomp").unwrap(), "2", "{name}");
    assert_eq!(status_field(pid, "NoNewPrivs").unwrap(), "1", "{name}");
    for caps in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(pid, caps).unwrap(),
            "0000000000000000",
            "{name} {caps}"
        );
    }
    for ids in ["Uid", "Gid"] {
        let v = status_field(pid, ids).unwrap();
        let all: Vec<u32> = v.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(all.len(), 4, "{name} {ids}: {v}");
        assert!(
            all.iter().all(|&id| id != 0),
            "{name} runs as root: {ids} {v}"
        );
    }
    for which in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(
            ns(pid, which),
            ns(broker, which),
            "{name} shares the broker's {which} namespace"
        );
    }
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(root.is_empty(), "{name}'s root is not empty: {root:?}");
}

#[test]
fn every_worker_of_a_running_vm_is_sandboxed() {
    let b = Bulkhead::start(&["-m", "32M"]);
    let mut c = b.client();
    assert_eq!(c.ok("query-status")["status"], "running");
    let broker = broker_pid(&b);
    for name in ["vcpu-proc", "block-proc"] {
        let pid = sandboxed_worker(&b, name);
        assert_sandboxed(broker, pid, name);
    }
}

#[test]
fn sandbox_off_gives_unsandboxed_workers() {
    let b = Bulkhead::start(&["-m", "32M", "-sandbox", "off"]);
    let mut c = b.client();
    // The VM runs, so vcpu-proc is past its handshake (where it would
    // have entered the sandbox); block-proc answers a query.
    assert_eq!(c.ok("query-status")["status"], "running");
    c.ok("query-named-block-nodes");
    for (pid, name) in children(broker_pid(&b)) {
        assert_eq!(status_field(pid, "Seccomp").unwrap(), "0", "{name}");
        assert_eq!(
            status_field(pid, "Uid").unwrap().split_whitespace().next(),
            Some("0")
        );
        assert_eq!(ns(pid, "mnt"), ns(broker_pid(&b), "mnt"), "{name}");
    }
}

/// Every escape and the syscall seccomp traps it at (glibc's `open` is
/// `openat`).
const ESCAPES: &[(&str, &str)] = &[
    ("open-host-file", "openat"),
    ("execve", "execve"),
    ("inet-socket", "socket"),
    ("ptrace", "ptrace"),
    ("forbidden-syscall", "mount"),
];

/// Runs `attempt` in `worker`; returns the exit event if the worker was
/// killed, `None` if the sandbox refused it with an errno. Fails if the
/// escape worked.
fn try_escape(c: &mut Qmp, worker: &str, attempt: &str, pid: u32) -> Option<Value> {
    let r = c.execute(
        "x-bulkhead-test-escape",
        json!({"worker": worker, "attempt": attempt}),
    );
    if let Some(ret) = r.get("return") {
        assert_eq!(ret["outcome"], "blocked", "{worker} {attempt}: {r}");
        assert!(ret["errno"].as_i64().unwrap() > 0, "{r}");
        return None;
    }
    Qmp::error_of(&r);
    Some(c.event_where("__org.bulkhead_WORKER_EXITED", |d| {
        d["worker"] == worker && d["pid"] == json!(pid)
    }))
}

#[test]
fn block_worker_escapes_fail_and_a_killed_worker_is_named_and_restarted() {
    let b = Bulkhead::start(&["-m", "32M"]);
    let mut c = b.client();
    let broker = broker_pid(&b);
    let mut restarts = 0u64;
    for &(attempt, syscall) in ESCAPES {
        let pid = sandboxed_worker(&b, "block-proc");
        assert_sandboxed(broker, pid, "block-proc");
        let Some(exited) = try_escape(&mut c, "block", attempt, pid) else {
            continue;
        };
        let d = &exited["data"];
        assert_eq!(d["signal"], "SIGSYS", "{attempt}: {exited}");
        assert_eq!(d["syscall"], syscall, "{attempt}: {exited}");
        assert_eq!(d["action"], "restart", "{attempt}: {exited}");
        restarts += 1;
        let r = c.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
            d["worker"] == "block" && d["restarts"] == json!(restarts)
        });
        assert_ne!(r["data"]["pid"], json!(pid));
        assert!(c.ok("query-version")["qemu"].is_object());
        assert_eq!(c.ok("query-status")["status"], "running");
    }
    // The restarted worker is sandboxed again and serves.
    let pid = sandboxed_worker(&b, "block-proc");
    assert_sandboxed(broker, pid, "block-proc");
    c.ok("query-named-block-nodes");
}

/// One escape in vcpu-proc: it fails; if seccomp killed the worker, the
/// event names the syscall and the guest has crashed while QMP answers.
fn vcpu_escape_fails(attempt: &str, syscall: &str) {
    let b = Bulkhead::start(&["-m", "32M"]);
    let mut c = b.client();
    let pid = sandboxed_worker(&b, "vcpu-proc");
    let Some(exited) = try_escape(&mut c, "vcpu", attempt, pid) else {
        assert_eq!(c.ok("query-status")["status"], "running");
        return;
    };
    let d = &exited["data"];
    assert_eq!(d["signal"], "SIGSYS", "{attempt}: {exited}");
    assert_eq!(d["syscall"], syscall, "{attempt}: {exited}");
    assert_eq!(d["action"], "guest-crashed", "{attempt}: {exited}");
    assert_eq!(c.ok("query-status")["status"], "internal-error");
    assert!(c.ok("query-version")["qemu"].is_object());
}

#[test]
fn vcpu_worker_cannot_open_a_host_file() {
    vcpu_escape_fails(ESCAPES[0].0, ESCAPES[0].1);
}

#[test]
fn vcpu_worker_cannot_execve() {
    vcpu_escape_fails(ESCAPES[1].0, ESCAPES[1].1);
}

#[test]
fn vcpu_worker_cannot_open_an_inet_socket() {
    vcpu_escape_fails(ESCAPES[2].0, ESCAPES[2].1);
}

#[test]
fn vcpu_worker_cannot_ptrace_the_broker() {
    vcpu_escape_fails(ESCAPES[3].0, ESCAPES[3].1);
}

#[test]
fn vcpu_worker_forbidden_syscall_is_killed_and_named() {
    vcpu_escape_fails(ESCAPES[4].0, ESCAPES[4].1);
}

/// Release builds (`cargo build --release`: no dev-dependencies, no
/// features asked for) must not turn any test hook on: the feature graph
/// of a normal build names none.
#[test]
fn a_normal_build_enables_no_test_hook() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--workspace",
            "--offline",
            "-e",
            "normal,build,features",
            "-f",
            "{p} {f}",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cannot run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.contains("ipc-proto"),
        "unexpected cargo tree output: {tree}"
    );
    assert!(
        !tree.contains("test-hooks"),
        "a test hook is on in a normal build:\n{tree}"
    );
}
