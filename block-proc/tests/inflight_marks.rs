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
use vhost_user_harness::process::Backend;
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

/// block-proc serving the slow null node on socket `name`, and the
/// harness connected to it (one queue).
fn slow_device(name: &str) -> (Tmp, Backend, BlkDevice) {
    let sock = tmp(name);
    let bp = start(&sock, SLOW, &[]);
    let dev = connect(&sock, 1);
    (sock, bp, dev)
}

/// `n` writes put on the ring of the stopped queue, which then starts:
/// the queue thread finds them at its first look, without a kick, and
/// takes them together.
fn taken_at_the_queue_start(name: &str, n: u64) {
    let (_sock, _bp, mut dev) = slow_device(name);
    let base = dev.stop_queue(0).unwrap();
    publish_writes(&mut dev, n);
    dev.start_queue(0, u16::try_from(base).unwrap()).unwrap();
    wait_marked(&dev, &[usize::try_from(n).unwrap()]);
    complete(&mut dev, usize::try_from(n).unwrap());
}

#[test]
fn a_request_the_queue_finds_at_its_start_is_marked_while_the_queue_thread_runs_it() {
    taken_at_the_queue_start("marks-start.sock", 1);
}

#[test]
fn a_batch_on_the_ring_at_the_queue_start_is_taken_whole() {
    taken_at_the_queue_start("marks-batch.sock", 4);
}

#[test]
fn every_restart_of_a_running_queue_keeps_its_requests_marked() {
    let (_sock, _bp, mut dev) = slow_device("marks-restart.sock");
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
    let (sock, mut bp, mut dev) = slow_device("marks-renew.sock");
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
    let (_sock, _bp, mut dev) = slow_device("marks-got.sock");
    dev.get_inflight_unused().unwrap();
    four_marked_then_done(&mut dev, "GET_INFLIGHT_FD");
    dev.resend_call(0).unwrap();
    four_marked_then_done(&mut dev, "GET_INFLIGHT_FD and a restart");
}
