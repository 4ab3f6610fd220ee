//! A stopped block-proc (SIGSTOP: alive, holding its sockets, answering
//! nothing) under the `blk-loop` guest. vcpu-proc's vhost-user requests
//! give up at their deadline and the device is reported lost, so QMP keeps
//! answering — `stop`, `cont`, `system_reset` and `query-status` within
//! their deadlines — and the rebooted guest carries on once the stuck
//! worker is replaced (SIGKILL: the broker restarts it and reconnects the
//! disk). The worker stays stopped only seconds, less than any hung-worker
//! deadline of the broker, so the test does not rely on that detection.
//! Needs /dev/kvm.

mod common;
mod disk_common;

use std::time::{Duration, Instant};

use disk_common::*;
use serde_json::{json, Value};

/// Well inside the broker's 30 s worker deadline: the vhost-user request
/// deadline is 3 s and the vCPUs' pause limit 5 s.
const ANSWER_WITHIN: Duration = Duration::from_secs(12);

fn sigstop(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
}

/// Runs `name`, asserts it succeeded within [`ANSWER_WITHIN`], returns
/// its `return`.
fn answers(q: &mut common::Qmp, name: &str) -> Value {
    let t = Instant::now();
    let r = q.execute(name, Value::Null);
    let took = t.elapsed();
    // Information only.
    eprintln!("{name}: answered in {took:?}");
    assert!(took < ANSWER_WITHIN, "{name} took {took:?}: {r}");
    r.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{name} failed: {r}"))
}

#[test]
fn qmp_answers_while_block_proc_is_stopped_and_the_guest_recovers_when_it_is_replaced() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&[], "blk-loop", "raw", &img, &serial);
    let broker = b.child.as_ref().unwrap().id();
    let mut q = b.client();
    serial.wait_passes(1);

    let pid = block_proc_pid(broker).expect("block-proc runs");
    sigstop(pid);
    assert_eq!(answers(&mut q, "stop"), json!({}));
    assert_eq!(answers(&mut q, "query-status")["status"], "paused");
    assert_eq!(answers(&mut q, "cont"), json!({}));
    // The reset stops the disk's queues: the stopped backend never
    // answers, the request hits its deadline, the disk is reported lost.
    assert_eq!(answers(&mut q, "system_reset"), json!({}));
    assert_eq!(answers(&mut q, "query-status")["status"], "running");
    let lost = q.event("__org.bulkhead_DEVICE_BACKEND_LOST");
    assert_eq!(lost["data"]["id"], "vda");
    assert_eq!(answers(&mut q, "query-status")["status"], "running");

    // Replace the stuck worker: the broker restarts it, the disk comes back.
    let before = serial.text().matches("blk-loop").count();
    sigkill(pid);
    let restored = q.event("__org.bulkhead_DEVICE_BACKEND_RESTORED");
    assert_eq!(restored["data"]["id"], "vda");
    // The rebooted guest makes progress on the new worker: two passes
    // after its second start.
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let text = serial.text();
        assert!(!text.contains("VERDICT: FAIL"), "{text}");
        let rebooted = text
            .split("pass 1 ok")
            .nth(2)
            .is_some_and(|after| after.contains("pass 2 ok"));
        if rebooted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress after the reset ({before} banners):\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(answers(&mut q, "query-status")["status"], "running");
    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
}
