//! Restarts under trouble, end to end: a replay that keeps failing has one
//! owner and one worker at a time; a hung worker (SIGSTOP) is found by the
//! liveness ping and killed (block-proc restarted under a running
//! `blk-loop` guest, vcpu-proc reported as a guest crash), while every QMP
//! answer arrives within the worker timeout; a worker stopped for less
//! than the timeout is left alone. Needs /dev/kvm.

mod common;
mod disk_common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{broker_pid, children, Bulkhead, TempDir};
use disk_common::*;
use nix::sys::signal::Signal;
use serde_json::json;

const EXITED: &str = "__org.bulkhead_WORKER_EXITED";
const RESTARTED: &str = "__org.bulkhead_WORKER_RESTARTED";

fn block_procs(b: &Bulkhead) -> Vec<u32> {
    children(broker_pid(b))
        .into_iter()
        .filter(|(_, c)| c == "block-proc")
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn replay_that_keeps_failing_converges_to_one_worker_and_one_restart_loop() {
    let dir = TempDir::new();
    let img = qcow2_image(&dir.0);
    let blockdev = json!({"driver": "qcow2", "node-name": "d0",
        "file": {"driver": "file", "filename": img}})
    .to_string();
    let b = Bulkhead::start(&["-m", "32M", "-sandbox", "off", "-blockdev", &blockdev]);
    let mut q = b.client();
    // The broker keeps the image open; zeroing the qcow2 header makes every
    // replay of node d0 fail in the restarted worker.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut header = [0u8; 512];
    f.read_exact_at(&mut header, 0).unwrap();
    f.write_all_at(&[0u8; 512], 0).unwrap();
    let first = block_procs(&b);
    assert_eq!(first.len(), 1, "{first:?}");
    sigkill(first[0] as i32);
    // Failed restarts back off (20 ms doubling); watch a few of them.
    let until = Instant::now() + Duration::from_secs(3);
    let mut most = 0;
    while Instant::now() < until {
        most = most.max(block_procs(&b).len());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(most <= 1, "{most} block workers at once");
    f.write_all_at(&header, 0).unwrap();
    let r = q.event_where(RESTARTED, |d| d["worker"] == "block");
    let pid = r["data"]["pid"].as_u64().unwrap() as u32;
    // Only the killed worker's exit is reported: candidates that failed
    // their replay were never the current worker.
    let exits: Vec<_> = q.events.iter().filter(|e| e["event"] == EXITED).collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["data"]["pid"], json!(first[0]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(block_procs(&b), vec![pid]);
    let nodes = q.ok("query-named-block-nodes");
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node-name"] == "d0"),
        "{nodes}"
    );
    assert!(q.events.iter().all(|e| e["event"] != RESTARTED));
}

/// The worker timeout the hang tests run with.
const DEADLINE: Duration = Duration::from_secs(2);
/// Scheduling slack on the (slow, nested) test machines.
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn hung_block_worker_is_killed_and_restarted_and_every_qmp_answer_meets_the_deadline() {
    let dir = TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let secs = DEADLINE.as_secs().to_string();
    let b = start_with_disk(
        &["-__org.bulkhead-worker-timeout", &secs],
        "blk-loop",
        "raw",
        &img,
        &serial,
    );
    let mut q = b.client();
    serial.wait_passes(1);
    let pollers = QueryPollers::start(&b.sock, 2);
    let hung = block_proc_pid(broker_pid(&b)).expect("block-proc runs");
    let stopped = Instant::now();
    signal(hung, Signal::SIGSTOP);
    // Sessions that do not need block-proc are not held up by those that
    // wait for it.
    let mut other = b.client();
    for _ in 0..5 {
        let t = Instant::now();
        assert!(other.ok("query-version")["qemu"].is_object());
        assert!(other.ok("query-commands").as_array().is_some());
        assert!(t.elapsed() < SLACK, "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let exited = q.event_where(EXITED, |d| d["worker"] == "block");
    let detected = stopped.elapsed();
    assert_eq!(exited["data"]["pid"], json!(hung));
    assert_eq!(exited["data"]["reason"], "hung", "{exited}");
    assert_eq!(exited["data"]["signal"], "SIGKILL");
    assert_eq!(exited["data"]["action"], "restart");
    let restarted = q.event_where(RESTARTED, |d| d["worker"] == "block");
    assert_ne!(restarted["data"]["pid"], json!(hung));
    q.event_where("__org.bulkhead_DEVICE_BACKEND_RESTORED", |d| {
        d["id"] == "vda"
    });
    // Let the pollers see the restored worker for a while.
    std::thread::sleep(Duration::from_millis(500));
    let reports = pollers.stop();
    eprintln!("hang detected after {detected:?}");
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "poller {i}: {} replies, {} errors, slowest {:?}",
            r.replies,
            r.errors.len(),
            r.slowest
        );
        assert!(
            r.slowest <= DEADLINE + SLACK,
            "poller {i} waited {:?}",
            r.slowest
        );
        assert!(r.backwards.is_empty(), "poller {i}: {:?}", r.backwards);
        // Errors are allowed while the worker is hung; they say why.
        for (cmd, e) in &r.errors {
            let (class, desc) = common::Qmp::error_of(e);
            assert_eq!(class, "GenericError", "{cmd}: {e}");
            assert!(
                desc.contains("did not answer") || desc.contains("restarting"),
                "{cmd}: {desc}"
            );
        }
    }
    // QMP still answers at once, and the guest's data is intact.
    assert_eq!(q.ok("query-status")["status"], "running");
    assert_progress_and_image(&mut q, &serial, &img, "raw");
}

#[test]
fn block_worker_stopped_for_less_than_the_deadline_is_not_restarted() {
    let dir = TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = start_with_disk(
        &["-__org.bulkhead-worker-timeout", "3"],
        "blk-loop",
        "raw",
        &img,
        &serial,
    );
    let mut q = b.client();
    serial.wait_passes(1);
    let pid = block_proc_pid(broker_pid(&b)).expect("block-proc runs");
    signal(pid, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    signal(pid, Signal::SIGCONT);
    // Longer than the timeout after the stop began.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(q.ok("query-status")["status"], "running");
    assert!(
        q.events.iter().all(|e| e["event"] != EXITED),
        "{:?}",
        q.events
    );
    assert_eq!(block_proc_pid(broker_pid(&b)), Some(pid));
    assert_progress_and_image(&mut q, &serial, &img, "raw");
}

#[test]
fn hung_vcpu_worker_is_killed_and_reported_as_a_guest_crash() {
    let b = Bulkhead::start(&[
        "-m",
        "32M",
        "-sandbox",
        "off",
        "-__org.bulkhead-worker-timeout",
        "1",
    ]);
    let mut q = b.client();
    let vcpu = children(broker_pid(&b))
        .into_iter()
        .find(|(_, c)| c == "vcpu-proc")
        .map(|(p, _)| p)
        .expect("vcpu-proc runs");
    signal(vcpu as i32, Signal::SIGSTOP);
    // A command for the hung worker fails within the deadline.
    let start = Instant::now();
    let r = q.execute("query-status", json!(null));
    assert!(
        start.elapsed() <= Duration::from_secs(1) + SLACK,
        "{:?}",
        start.elapsed()
    );
    if r.get("error").is_some() {
        let (class, _) = common::Qmp::error_of(&r);
        assert_eq!(class, "GenericError");
    }
    let exited = q.event_where(EXITED, |d| d["worker"] == "vcpu");
    assert_eq!(exited["data"]["pid"], json!(vcpu));
    assert_eq!(exited["data"]["reason"], "hung");
    assert_eq!(exited["data"]["action"], "guest-crashed");
    let crashed = q.event("__org.bulkhead_GUEST_CRASHED");
    assert!(
        crashed["data"]["detail"].as_str().unwrap().contains("hung"),
        "{crashed}"
    );
    assert_eq!(q.ok("query-status")["status"], "internal-error");
}

#[test]
fn blockdev_add_and_del_sent_right_after_a_kill_wait_for_the_restart_and_apply() {
    let b = Bulkhead::start(&["-m", "32M", "-sandbox", "off"]);
    let mut q = b.client();
    for i in 0..10u64 {
        let pid = block_procs(&b)[0];
        sigkill(pid as i32);
        let name = format!("n{i}");
        let r = q.execute(
            "blockdev-add",
            json!({"driver": "null-co", "node-name": name}),
        );
        assert_eq!(r, json!({"return": {}}), "add {i}");
        q.event_where(RESTARTED, |d| d["restarts"] == json!(i + 1));
    }
    let nodes = q.ok("query-named-block-nodes");
    for i in 0..10 {
        let name = format!("n{i}");
        assert!(
            nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["node-name"] == name),
            "{name} missing: {nodes}"
        );
    }
    let pid = block_procs(&b)[0];
    sigkill(pid as i32);
    let r = q.execute("blockdev-del", json!({"node-name": "n3"}));
    assert_eq!(r, json!({"return": {}}));
    let nodes = q.ok("query-named-block-nodes");
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["node-name"] != "n3"),
        "{nodes}"
    );
}
