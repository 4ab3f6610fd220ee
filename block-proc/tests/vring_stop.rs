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
    // Every write takes 1 s: the marks stay while the test looks, also
    // when a loaded machine lets this thread run only now and then.
    let json = r#"{"driver":"null-co","node-name":"n","size":1048576,"latency-ns":1000000000}"#;
    let _bp = start(&sock, json, &[]);
    let mut dev = connect(&sock, 1);
    // Published at once: the queue thread, which may still be making its
    // first look at the ring after the connection, takes all four or none
    // (one at a time, it could take the first alone and run it to the end
    // before it saw the others: see `inflight_marks.rs`).
    let data: Vec<Vec<u8>> = (0..4).map(|k| pattern(512, k)).collect();
    let writes: Vec<Request> = (0..4u64)
        .map(|k| Request::Write {
            sector: k,
            data: &data[k as usize],
        })
        .collect();
    dev.submit_all(0, &writes).unwrap();
    dev.kick(0).unwrap();
    // block-proc took all four (its inflight region marks them): they are
    // executing when the stop arrives.
    wait_marked(&dev, &[4]);
    let base = dev.stop_queue(0).unwrap();
    assert_eq!(base, 4, "the position after the four writes");
    // At the answer the four are complete: their used elements are in
    // the ring already (no waiting here) and nothing is in flight.
    let done = dev.wait_timeout(0, Duration::ZERO).unwrap();
    assert_eq!(done.len(), 4, "{done:?}");
    assert!(done.iter().all(|c| c.status == Some(S_OK)));
    assert_eq!(dev.inflight_marked().unwrap(), vec![0]);
}
