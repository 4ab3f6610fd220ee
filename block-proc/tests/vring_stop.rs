//! Stopping a queue for a save (`GET_VRING_BASE`, what a frontend sends
//! to capture a live device's vring state): block-proc answers only once
//! every request the queue had taken has completed, so the avail position
//! it gives back leaves nothing half done (as QEMU's vhost-user-blk server
//! drains), and a target restarted at that position repeats and loses
//! nothing.

mod common;

use std::time::Duration;

use common::*;
use vhost_user_harness::blk::S_OK;
use vhost_user_harness::Request;

#[test]
fn get_vring_base_answers_once_the_requests_the_queue_took_have_completed() {
    let sock = tmp("stop-drain.sock");
    // Every write takes 1.5 s: a wide window in which all four are in
    // flight at once, also on a loaded machine (300 ms was missed once in
    // CI: the first write completed before the poll saw all four).
    let json = r#"{"driver":"null-co","node-name":"n","size":1048576,"latency-ns":1500000000}"#;
    let _bp = start(&sock, json, &[]);
    let mut dev = connect(&sock, 1);
    for k in 0..4u64 {
        dev.submit(
            0,
            Request::Write {
                sector: k,
                data: &pattern(512, k),
            },
        )
        .unwrap();
    }
    dev.kick(0).unwrap();
    // Let block-proc take all four: they are executing (1.5 s each) when
    // the stop arrives. (Waiting for the four inflight marks instead was
    // flaky: in some runs the harness never saw them marked although the
    // requests ran and completed — noted for investigation.)
    std::thread::sleep(Duration::from_millis(400));
    let base = dev.stop_queue(0).unwrap();
    assert_eq!(base, 4, "the position after the four writes");
    // At the answer the four are complete: their used elements are in
    // the ring already (no waiting here) and nothing is in flight.
    let done = dev.wait_timeout(0, Duration::ZERO).unwrap();
    assert_eq!(done.len(), 4, "{done:?}");
    assert!(done.iter().all(|c| c.status == Some(S_OK)));
    assert_eq!(dev.inflight_marked().unwrap(), vec![0]);
}
