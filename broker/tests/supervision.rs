//! Worker supervision, end to end: the real `bulkhead` with its real
//! workers; workers are killed with SIGKILL and the broker must report it,
//! apply the worker's policy and keep answering QMP; no worker may outlive
//! the broker, whether it quits, is signalled or is itself SIGKILLed.
//! Needs /dev/kvm (vcpu-proc runs the default test guest).

mod common;

use std::time::{Duration, Instant};

use common::{broker_pid, children, Bulkhead, TIMEOUT};
use serde_json::json;

/// Every worker's pid, once both vcpu-proc and block-proc are up.
fn worker_pids(b: &Bulkhead) -> Vec<u32> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let w = children(broker_pid(b));
        if w.len() >= 2 {
            return w.into_iter().map(|(p, _)| p).collect();
        }
        assert!(Instant::now() < deadline, "workers did not come up: {w:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn worker_pid(b: &Bulkhead, name: &str) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some((pid, _)) = children(broker_pid(b)).into_iter().find(|(_, c)| c == name) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no {name} worker");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + TIMEOUT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid of a process this test started (or its child).
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn start() -> Bulkhead {
    Bulkhead::start(&["-m", "32M", "-sandbox", "off"])
}

#[test]
fn killed_block_worker_is_reported_and_restarted_while_qmp_keeps_answering() {
    let b = start();
    let mut c = b.client();
    let old = worker_pid(&b, "block-proc");
    signal(old, libc::SIGKILL);
    let exited = c.event_where("__org.bulkhead_WORKER_EXITED", |d| d["worker"] == "block");
    assert_eq!(exited["data"]["pid"], json!(old));
    assert_eq!(exited["data"]["signal"], "SIGKILL");
    assert_eq!(exited["data"]["action"], "restart");
    let restarted = c.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    let new = restarted["data"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(new, old);
    assert!(alive(new));
    assert!(c.ok("query-version")["qemu"].is_object());
    assert_eq!(c.ok("query-status")["status"], "running");
}

#[test]
fn block_worker_is_restarted_at_once_after_each_of_repeated_kills() {
    let b = start();
    let mut c = b.client();
    for i in 1..=5u64 {
        let pid = worker_pid(&b, "block-proc");
        signal(pid, libc::SIGKILL);
        let r = c.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
            d["restarts"] == json!(i)
        });
        assert_ne!(r["data"]["pid"], json!(pid));
    }
    assert!(c.ok("query-version").is_object());
}

#[test]
fn killed_vcpu_worker_is_a_guest_crash_and_broker_still_answers_and_quits() {
    let mut b = start();
    let mut c = b.client();
    let vcpu = worker_pid(&b, "vcpu-proc");
    let block = worker_pid(&b, "block-proc");
    signal(vcpu, libc::SIGKILL);
    let exited = c.event_where("__org.bulkhead_WORKER_EXITED", |d| d["worker"] == "vcpu");
    assert_eq!(exited["data"]["action"], "guest-crashed");
    assert_eq!(
        c.ok("query-status"),
        json!({"running": false, "status": "internal-error"})
    );
    let cont = c.execute("cont", json!({}));
    assert_eq!(cont["error"]["class"], "GenericError", "{cont}");
    assert!(c.ok("query-version").is_object());
    assert_eq!(c.ok("quit"), json!({}));
    assert_eq!(b.wait_exit().code(), Some(0));
    wait_dead(block);
    assert!(!b.sock.exists(), "QMP socket left behind");
}

#[test]
fn quit_leaves_no_worker_and_no_socket() {
    let mut b = start();
    let pids = worker_pids(&b);
    let mut c = b.client();
    assert_eq!(c.ok("quit"), json!({}));
    assert_eq!(b.wait_exit().code(), Some(0));
    for p in pids {
        wait_dead(p);
    }
    assert!(!b.sock.exists());
}

#[test]
fn sigterm_stops_workers_and_removes_sockets() {
    let mut b = start();
    let pids = worker_pids(&b);
    signal(broker_pid(&b), libc::SIGTERM);
    assert_eq!(b.wait_exit().code(), Some(0));
    for p in pids {
        wait_dead(p);
    }
    assert!(!b.sock.exists());
}

#[test]
fn workers_exit_by_themselves_when_the_broker_is_sigkilled() {
    let mut b = start();
    let pids = worker_pids(&b);
    signal(broker_pid(&b), libc::SIGKILL);
    assert!(b.wait_exit().code().is_none());
    for p in pids {
        wait_dead(p);
    }
}

#[test]
fn restarted_block_worker_is_not_killed_when_its_spawning_thread_ends() {
    // PR_SET_PDEATHSIG fires when the forking *thread* exits; restarts run
    // on short-lived threads, so the broker must fork from a thread that
    // stays (regression test).
    let b = start();
    let mut c = b.client();
    signal(worker_pid(&b, "block-proc"), libc::SIGKILL);
    let r = c.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    let new = r["data"]["pid"].as_u64().unwrap() as u32;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(new),
        "restarted block-proc died with its spawning thread"
    );
}

#[test]
fn broker_keeps_only_spawning_capabilities_and_still_restarts_sandboxed_workers() {
    let b = Bulkhead::start(&["-m", "32M"]);
    let mut c = b.client();
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker_pid(&b))).unwrap();
    // CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN.
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert_eq!(line, format!("{set}:\t00000000002001e0"), "{status}");
    }
    let old = worker_pid(&b, "block-proc");
    signal(old, libc::SIGKILL);
    let r = c.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    let new = r["data"]["pid"].as_u64().unwrap() as u32;
    // The worker enters its sandbox right after its handshake; poll.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let st = std::fs::read_to_string(format!("/proc/{new}/status")).unwrap();
        if st.contains("Seccomp:\t2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted worker not sandboxed: {st}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(c.ok("query-status")["running"].as_bool().unwrap());
}
