//! Stopping a queue for a save (`GET_VRING_BASE`, what a frontend sends
//! to capture a live device's vring state): block-proc answers only once
//! every request the queue had taken has completed, so the avail position
//! it gives back leaves nothing half done (as QEMU's vhost-user-blk server
//! drains), and a target restarted at that position repeats and loses
//! nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vhost_user_harness::blk::S_OK;
use vhost_user_harness::Request;

#[test]
fn get_vring_base_answers_once_the_requests_the_queue_took_have_completed() {
    let sock = tmp("stop-drain.sock");
    // Every write takes 300 ms.
    let json = r#"{"driver":"null-co","node-name":"n","size":1048576,"latency-ns":300000000}"#;
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
    // Wait until block-proc took all four (its inflight region marks
    // them): they are executing when the stop arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.inflight_marked().unwrap() != vec![4] {
        assert!(Instant::now() < deadline, "the four writes were not taken");
        std::thread::yield_now();
    }
    let base = dev.stop_queue(0).unwrap();
    assert_eq!(base, 4, "the position after the four writes");
    // At the answer the four are complete: their used elements are in
    // the ring already (no waiting here) and nothing is in flight.
    let done = dev.wait_timeout(0, Duration::ZERO).unwrap();
    assert_eq!(done.len(), 4, "{done:?}");
    assert!(done.iter().all(|c| c.status == Some(S_OK)));
    assert_eq!(dev.inflight_marked().unwrap(), vec![0]);
}
