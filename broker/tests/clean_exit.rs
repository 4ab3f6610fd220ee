//! The broker reaps every worker before it exits: once its exit status is
//! available, no former worker pid exists, not even as a zombie. This test
//! process makes itself a child subreaper, so a worker the broker left
//! unreaped would be re-parented here and stay visible as a zombie (on a
//! normal system init would reap it a moment later, hiding the bug).
//! Needs /dev/kvm.

mod common;

use std::time::{Duration, Instant};

use common::{broker_pid, children, Bulkhead, TIMEOUT};
use serde_json::json;

fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid of a process this test started (or its child).
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0);
}

/// True while `pid` exists (a zombie too), as `kill -0` sees it.
fn exists(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The worker pids once both workers are up.
fn workers(b: &Bulkhead) -> Vec<u32> {
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

/// Starts a broker, ends it with `end`, and checks that every worker pid
/// it ever had is gone when its exit status is collected.
fn assert_no_worker_outlives(extra: &[&str], end: impl FnOnce(&Bulkhead)) {
    become_subreaper();
    let mut args = vec!["-m", "32M"];
    args.extend_from_slice(extra);
    let mut b = Bulkhead::start(&args);
    let mut pids = workers(&b);
    // A former worker too: block-proc killed and restarted once.
    let mut q = b.client();
    let block = children(broker_pid(&b))
        .into_iter()
        .find(|(_, c)| c == "block-proc")
        .map(|(p, _)| p)
        .unwrap();
    signal(block, libc::SIGKILL);
    let r = q.event_where("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    pids.push(r["data"]["pid"].as_u64().unwrap() as u32);
    drop(q);
    end(&b);
    let status = b.wait_exit();
    let left: Vec<u32> = pids.iter().copied().filter(|p| exists(*p)).collect();
    assert!(
        left.is_empty(),
        "workers {left:?} of {pids:?} still exist after the broker exited ({status})"
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn after_quit_no_former_worker_pid_exists() {
    assert_no_worker_outlives(&[], |b| {
        assert_eq!(b.client().ok("quit"), json!({}));
    });
}

#[test]
fn after_sigterm_no_former_worker_pid_exists() {
    assert_no_worker_outlives(&[], |b| {
        signal(broker_pid(b), libc::SIGTERM);
    });
}

#[test]
fn after_sigint_no_former_worker_pid_exists_even_unsandboxed() {
    assert_no_worker_outlives(&["-sandbox", "off"], |b| {
        signal(broker_pid(b), libc::SIGINT);
    });
}
