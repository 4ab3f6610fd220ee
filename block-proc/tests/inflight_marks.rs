//! block-proc marks every request it takes in the frontend's inflight
//! region (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) for as long as it runs
//! — what a restarted block-proc resubmits after a crash — whatever path
//! the request took, and always in the region the frontend set last:
//! - a request the queue thread finds at its start, without a kick, and
//!   runs itself. (The path of `vring_stop.rs`'s old flake: four requests
//!   published one at a time while the queue started; the queue thread
//!   took the first alone and ran it to its end before it saw the others,
//!   so the four were never in flight together. Marked all along.)
//! - a batch published at once, taken whole even at that first look;
//! - after every restart of a running queue: dirty logging on and off,
//!   SET_VRING_CALL and SET_MEM_TABLE sent again, a stop and start;
//! - in a region the frontend sets anew while the queue runs (and a crash
//!   then is recovered from it); never in one it only got
//!   (GET_INFLIGHT_FD) without setting it.

mod common;

use common::*;
use vhost_user_harness::blk::S_OK;
use vhost_user_harness::dirty_log::HarnessLog;
use vhost_user_harness::{BlkDevice, Request};

/// Every write takes 500 ms: the marks stay while the test looks.
const SLOW: &str = r#"{"driver":"null-co","node-name":"n","size":1048576,"latency-ns":500000000}"#;

/// `n` writes published at once (not kicked).
fn publish_writes(dev: &mut BlkDevice, n: u64) {
    let data = pattern(512, n);
    let writes: Vec<Request> = (0..n)
        .map(|k| Request::Write {
            sector: k,
            data: &data,
        })
        .collect();
    dev.submit_all(0, &writes).unwrap();
}

/// Waits for `n` completions, all OK, then for the marks to be gone.
fn complete(dev: &mut BlkDevice, n: usize) {
    let mut done = Vec::new();
    while done.len() < n {
        done.extend(dev.wait(0).unwrap());
    }
    assert_eq!(done.len(), n, "{done:?}");
    assert!(done.iter().all(|c| c.status == Some(S_OK)), "{done:?}");
    assert_eq!(dev.inflight_marked().unwrap(), vec![0]);
}

/// Four writes published at once and kicked are marked together while
/// they run, and unmarked when they complete.
fn four_marked_then_done(dev: &mut BlkDevice, after: &str) {
    eprintln!("four writes after {after}");
    publish_writes(dev, 4);
    dev.kick(0).unwrap();
    wait_marked(dev, &[4]);
    complete(dev, 4);
}

#[test]
fn a_request_the_queue_finds_at_its_start_is_marked_while_the_queue_thread_runs_it() {
    let sock = tmp("marks-start.sock");
    let _bp = start(&sock, SLOW, &[]);
    let mut dev = connect(&sock, 1);
    let base = dev.stop_queue(0).unwrap();
    publish_writes(&mut dev, 1);
    dev.start_queue(0, u16::try_from(base).unwrap()).unwrap();
    wait_marked(&dev, &[1]);
    complete(&mut dev, 1);
}

#[test]
fn a_batch_on_the_ring_at_the_queue_start_is_taken_whole() {
    let sock = tmp("marks-batch.sock");
    let _bp = start(&sock, SLOW, &[]);
    let mut dev = connect(&sock, 1);
    let base = dev.stop_queue(0).unwrap();
    publish_writes(&mut dev, 4);
    dev.start_queue(0, u16::try_from(base).unwrap()).unwrap();
    wait_marked(&dev, &[4]);
    complete(&mut dev, 4);
}

#[test]
fn every_restart_of_a_running_queue_keeps_its_requests_marked() {
    let sock = tmp("marks-restart.sock");
    let _bp = start(&sock, SLOW, &[]);
    let mut dev = connect(&sock, 1);
    four_marked_then_done(&mut dev, "the connection");
    let log = HarnessLog::for_memory(dev.mem().size()).unwrap();
    dev.set_dirty_log(Some(&log), true).unwrap();
    four_marked_then_done(&mut dev, "dirty logging on");
    dev.resend_call(0).unwrap();
    four_marked_then_done(&mut dev, "SET_VRING_CALL again");
    dev.resend_memory().unwrap();
    four_marked_then_done(&mut dev, "SET_MEM_TABLE again");
    dev.set_dirty_log(None, false).unwrap();
    four_marked_then_done(&mut dev, "dirty logging off");
    let base = dev.stop_queue(0).unwrap();
    dev.start_queue(0, u16::try_from(base).unwrap()).unwrap();
    four_marked_then_done(&mut dev, "a stop and start");
}

#[test]
fn a_region_set_while_the_queue_runs_gets_the_marks_and_a_crash_is_recovered_from_it() {
    let sock = tmp("marks-renew.sock");
    let mut bp = start(&sock, SLOW, &[]);
    let mut dev = connect(&sock, 1);
    four_marked_then_done(&mut dev, "the connection");
    dev.renew_inflight().unwrap();
    publish_writes(&mut dev, 4);
    dev.kick(0).unwrap();
    wait_marked(&dev, &[4]);
    // Killed with the four in flight: the new block-proc finds them in the
    // renewed region and runs them again.
    bp.kill();
    let _bp2 = start(&sock, SLOW, &[]);
    dev.reconnect().unwrap();
    complete(&mut dev, 4);
}

#[test]
fn a_region_only_got_never_takes_the_marks_also_after_a_restart() {
    let sock = tmp("marks-got.sock");
    let _bp = start(&sock, SLOW, &[]);
    let mut dev = connect(&sock, 1);
    dev.get_inflight_unused().unwrap();
    four_marked_then_done(&mut dev, "GET_INFLIGHT_FD");
    dev.resend_call(0).unwrap();
    four_marked_then_done(&mut dev, "GET_INFLIGHT_FD and a restart");
}
