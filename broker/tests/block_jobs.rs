//! Block jobs end to end: the `blk-loop` guest writes, flushes, reads back
//! and verifies its disk in a loop through every job — `block-stream` of a
//! 3-image qcow2 chain made with `qemu-img create -b`, `blockdev-mirror`
//! (sync full and top, qcow2 and raw targets) with the pivot on
//! `block-job-complete`, cancel paths, pause/resume and speed limits —
//! and the results are checked with `qemu-img` (info, compare, check).
//! Needs /dev/kvm, qemu-img and qemu-io.

mod common;
mod disk_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::qemu::{blockdev_args, Peer};
use disk_common::*;
use serde_json::{json, Value};

/// Size of the chain's images.
const CHAIN_BYTES: u64 = 32 << 20;

/// base ← mid ← top, each with data of its own (`qemu-io` patterns), and
/// the flattened original (`qemu-img convert`).
fn chain(dir: &Path) -> (PathBuf, PathBuf) {
    let (base, mid, top) = qcow2_chain(dir, CHAIN_BYTES);
    qemu_io_write(&base, 0x11, "0 24M");
    qemu_io_write(&mid, 0x22, "4M 8M");
    qemu_io_write(&top, 0x33, "10M 1M");
    qemu_io_write(&mid, 0x44, "20M 3M");
    let flat = dir.join("flat.raw");
    flatten(&top, &flat);
    (top, flat)
}

/// Copies the guest's sectors of `img` (as the guest sees them) into the
/// raw `flat`, so `flat` is the original chain plus the guest's writes.
fn overlay_guest_sectors(img: &Path, format: &str, flat: &Path) {
    use std::os::unix::fs::FileExt;
    let view = raw_view(img, format);
    let mut b = vec![0u8; (GUEST_SECTORS * 512) as usize];
    std::fs::File::open(&view)
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(flat).unwrap();
    f.write_all_at(&b, 0).unwrap();
}

fn info(img: &Path) -> Value {
    serde_json::from_str(&run("qemu-img", &["info", "-U", "--output=json", p(img)])).unwrap()
}

fn ok(q: &mut common::Qmp, cmd: &str, args: Value) -> Value {
    let r = q.execute(cmd, args.clone());
    r.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{cmd} {args}: {r}"))
}

fn job(q: &mut common::Qmp, id: &str) -> Option<Value> {
    ok(q, "query-block-jobs", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["device"] == id)
        .cloned()
}

/// The node device `vda` runs on (`query-block`).
fn device_node(q: &mut common::Qmp) -> String {
    let b = ok(q, "query-block", Value::Null);
    b[0]["inserted"]["node-name"].as_str().unwrap().to_owned()
}

fn start(img: &Path, format: &str, serial: &SerialLog) -> (common::Bulkhead, common::Qmp) {
    let b = start_with_disk(&[], "blk-loop", format, img, serial);
    let q = b.client();
    serial.wait_passes(1);
    (b, q)
}

fn quit(mut b: common::Bulkhead, mut q: common::Qmp) {
    assert_eq!(q.execute("quit", Value::Null), json!({"return": {}}));
    wait_exit_within(b.child.as_mut().unwrap(), GUEST_TIMEOUT);
}

#[test]
fn stream_of_a_three_image_chain_flattens_it_while_the_guest_verifies_its_disk() {
    let dir = common::TempDir::new();
    let (top, flat) = chain(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let (b, mut q) = start(&top, "qcow2", &serial);
    // Slow enough that the guest does passes during the job.
    ok(
        &mut q,
        "block-stream",
        json!({"device": "d0", "speed": 16 << 20}),
    );
    let st = q.event_where("JOB_STATUS_CHANGE", |d| d["status"] == "running");
    assert_eq!(st["data"]["id"], "d0", "job-id defaults to the device");
    let passes = serial.passes();
    let done = q.event("BLOCK_JOB_COMPLETED");
    assert_eq!(done["data"]["type"], "stream");
    assert_eq!(done["data"]["offset"], done["data"]["len"]);
    assert!(done["data"].get("error").is_none(), "{done}");
    q.event_where("JOB_STATUS_CHANGE", |d| d["status"] == "null");
    assert!(job(&mut q, "d0").is_none(), "auto-dismissed");
    assert_progress_and_image(&mut q, &serial, &top, "qcow2");
    assert!(serial.passes() > passes);
    quit(b, q);
    let i = info(&top);
    assert!(
        i.get("backing-filename").is_none(),
        "still has a backing file: {i}"
    );
    assert_qemu_img_check(&top, "qcow2");
    overlay_guest_sectors(&top, "qcow2", &flat);
    assert_qemu_img_compare(&flat, &top);
}

#[test]
fn stream_to_a_base_keeps_the_base_and_drops_the_middle_image() {
    let dir = common::TempDir::new();
    let (top, flat) = chain(&dir.0);
    let base = dir.0.join("base.qcow2");
    let serial = SerialLog(dir.0.join("serial.log"));
    let (b, mut q) = start(&top, "qcow2", &serial);
    let e = q.execute("block-stream", json!({"device": "d0", "base": "nope"}));
    assert_eq!(
        common::Qmp::error_of(&e).1,
        "Can't find 'nope' in the backing chain"
    );
    ok(
        &mut q,
        "block-stream",
        json!({"device": "d0", "job-id": "s", "base": p(&base)}),
    );
    q.event("BLOCK_JOB_COMPLETED");
    assert_progress_and_image(&mut q, &serial, &top, "qcow2");
    quit(b, q);
    let i = info(&top);
    assert_eq!(i["backing-filename"], p(&base), "{i}");
    assert_eq!(i["backing-filename-format"], "qcow2");
    assert_qemu_img_check(&top, "qcow2");
    overlay_guest_sectors(&top, "qcow2", &flat);
    assert_qemu_img_compare(&flat, &top);
}

/// Mirrors `vda` (qcow2 `d0`) into a new `format` target with `sync`,
/// completes at READY with the VM stopped, and checks the pivot.
fn mirror_and_complete(format: &str, sync: &str) {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    let target = dir.0.join(format!("target.{format}"));
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            format,
            p(&target),
            &IMAGE_BYTES.to_string(),
        ],
    );
    let serial = SerialLog(dir.0.join("serial.log"));
    let (b, mut q) = start(&img, "qcow2", &serial);
    ok(
        &mut q,
        "blockdev-add",
        json!({"driver": format, "node-name": "t0",
        "file": {"driver": "file", "filename": p(&target)}}),
    );
    ok(
        &mut q,
        "blockdev-mirror",
        json!({"device": "d0", "target": "t0", "sync": sync,
        "job-id": "m"}),
    );
    let ready = q.event("BLOCK_JOB_READY");
    assert_eq!(ready["data"]["type"], "mirror");
    let j = job(&mut q, "m").unwrap();
    assert_eq!(j["ready"], true);
    assert_eq!(j["status"], "ready");
    // The guest keeps writing while the mirror is ready.
    let passes = serial.passes();
    serial.wait_passes(passes + 2);
    q.ok("stop");
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut q, "block-job-complete", json!({"device": "m"}));
    let done = q.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    // At the pivot, source and target hold the same disk.
    assert_qemu_img_compare(&img, &target);
    assert_eq!(device_node(&mut q), "t0", "the device runs on the target");
    q.ok("cont");
    // The guest goes on verifying, now on the target.
    assert_progress_and_image(&mut q, &serial, &target, format);
    // The old source is free again.
    let r = q.execute("blockdev-del", json!({"node-name": "d0"}));
    assert!(r.get("return").is_some(), "{r}");
    quit(b, q);
    if format == "qcow2" {
        assert_qemu_img_check(&target, "qcow2");
    }
}

#[test]
fn mirror_full_to_a_new_qcow2_pivots_the_device_at_complete() {
    mirror_and_complete("qcow2", "full");
}

#[test]
fn mirror_top_to_a_raw_target_pivots_the_device_at_complete() {
    mirror_and_complete("raw", "top");
}

#[test]
fn cancel_before_ready_leaves_the_device_on_its_source_and_after_ready_gives_a_consistent_copy() {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1M 3M", p(&img)],
    );
    let target = dir.0.join("target.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            p(&target),
            &IMAGE_BYTES.to_string(),
        ],
    );
    let serial = SerialLog(dir.0.join("serial.log"));
    let (b, mut q) = start(&img, "qcow2", &serial);
    ok(
        &mut q,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "t0",
        "file": {"driver": "file", "filename": p(&target)}}),
    );
    // 64 KiB/s: never ready within the test.
    ok(
        &mut q,
        "blockdev-mirror",
        json!({"device": "d0", "target": "t0", "sync": "full",
        "job-id": "slow", "speed": 65536}),
    );
    std::thread::sleep(Duration::from_millis(500));
    ok(&mut q, "block-job-cancel", json!({"device": "slow"}));
    let c = q.event("BLOCK_JOB_CANCELLED");
    assert_eq!(c["data"]["device"], "slow");
    assert!(c["data"]["offset"].as_u64().unwrap() < IMAGE_BYTES);
    assert_eq!(device_node(&mut q), "d0");
    // Cancel after READY: a consistent copy, the device stays.
    ok(
        &mut q,
        "blockdev-mirror",
        json!({"device": "d0", "target": "t0", "sync": "full",
        "job-id": "fast"}),
    );
    q.event("BLOCK_JOB_READY");
    q.ok("stop");
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut q, "block-job-cancel", json!({"device": "fast"}));
    let done = q.event("BLOCK_JOB_COMPLETED");
    assert_eq!(done["data"]["device"], "fast");
    assert_qemu_img_compare(&img, &target);
    assert_eq!(device_node(&mut q), "d0");
    q.ok("cont");
    // A forced cancel of a ready mirror ends cancelled.
    ok(
        &mut q,
        "blockdev-mirror",
        json!({"device": "d0", "target": "t0", "sync": "full",
        "job-id": "forced"}),
    );
    q.event("BLOCK_JOB_READY");
    ok(
        &mut q,
        "block-job-cancel",
        json!({"device": "forced", "force": true}),
    );
    q.event_where("BLOCK_JOB_CANCELLED", |d| d["device"] == "forced");
    assert_progress_and_image(&mut q, &serial, &img, "qcow2");
    quit(b, q);
}

#[test]
fn pause_holds_a_stream_resume_continues_it_and_speed_shows_in_progress() {
    let dir = common::TempDir::new();
    let (top, _flat) = chain(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let (b, mut q) = start(&top, "qcow2", &serial);
    ok(
        &mut q,
        "block-stream",
        json!({"device": "d0", "job-id": "s", "speed": 2 << 20,
        "auto-finalize": false, "auto-dismiss": false}),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let j = job(&mut q, "s").unwrap();
    assert_eq!(j["speed"], 2 << 20);
    assert_eq!(j["len"], CHAIN_BYTES);
    // At 2 MiB/s, far from done after a second.
    assert!(j["offset"].as_u64().unwrap() < 8 << 20, "{j}");
    ok(&mut q, "block-job-pause", json!({"device": "s"}));
    q.event_where("JOB_STATUS_CHANGE", |d| d["status"] == "paused");
    let e = q.execute("block-job-pause", json!({"device": "s"}));
    assert_eq!(common::Qmp::error_of(&e).1, "Job is already paused");
    std::thread::sleep(Duration::from_millis(400));
    let held = job(&mut q, "s").unwrap()["offset"].clone();
    std::thread::sleep(Duration::from_millis(800));
    let j = job(&mut q, "s").unwrap();
    assert_eq!(j["offset"], held, "a paused job made progress");
    assert_eq!(j["paused"], true);
    assert_eq!(j["status"], "paused");
    ok(&mut q, "block-job-resume", json!({"device": "s"}));
    let e = q.execute("block-job-resume", json!({"device": "s"}));
    assert_eq!(
        common::Qmp::error_of(&e).1,
        "Can't resume a job that was not paused"
    );
    ok(
        &mut q,
        "block-job-set-speed",
        json!({"device": "s", "speed": 0}),
    );
    // auto-finalize off: pending until job-finalize; then concluded until
    // dismissed.
    q.event("BLOCK_JOB_PENDING");
    let e = q.execute("job-dismiss", json!({"id": "s"}));
    assert_eq!(
        common::Qmp::error_of(&e).1,
        "Job 's' in state 'pending' cannot accept command verb 'dismiss'"
    );
    assert!(
        info(&top).get("backing-filename").is_some(),
        "finalized too early"
    );
    ok(&mut q, "job-finalize", json!({"id": "s"}));
    q.event("BLOCK_JOB_COMPLETED");
    q.event_where("JOB_STATUS_CHANGE", |d| d["status"] == "concluded");
    assert_eq!(job(&mut q, "s").unwrap()["status"], "concluded");
    ok(&mut q, "job-dismiss", json!({"id": "s"}));
    assert!(job(&mut q, "s").is_none());
    assert!(info(&top).get("backing-filename").is_none());
    assert_progress_and_image(&mut q, &serial, &top, "qcow2");
    quit(b, q);
}

/// A [`chain`] and an empty qcow2 target of its size in `dir`, as the
/// blockdevs of nodes `top` and `tgt`.
fn chain_and_target(dir: &Path) -> [Value; 2] {
    let (top, _) = chain(dir);
    let tgt = dir.join("tgt.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            p(&tgt),
            &CHAIN_BYTES.to_string(),
        ],
    );
    let node = |name: &str, img: &Path| {
        json!({"driver": "qcow2", "node-name": name,
               "file": {"driver": "file", "filename": p(img)}})
    };
    [node("top", &top), node("tgt", &tgt)]
}

#[test]
fn job_argument_errors_match_qemu_storage_daemon() {
    let dir = common::TempDir::new();
    let nodes = chain_and_target(&dir.0);
    let (_qsd, mut qsd) = Peer::qsd(&dir.0.join("qsd.sock"), &blockdev_args(&nodes));
    // bulkhead on its own copies (qsd holds the images' locks).
    let ours_dir = dir.0.join("ours");
    std::fs::create_dir(&ours_dir).unwrap();
    let ours = chain_and_target(&ours_dir);
    let b = common::Bulkhead::start(&[
        "-M",
        "none",
        "-blockdev",
        &ours[0].to_string(),
        "-blockdev",
        &ours[1].to_string(),
    ]);
    let mut q = b.client();
    let cases = [
        ("block-stream", json!({})),
        ("block-stream", json!({"device": "nope", "job-id": "j"})),
        (
            "block-stream",
            json!({"device": "top", "job-id": "j", "base": "nope"}),
        ),
        (
            "block-stream",
            json!({"device": "top", "job-id": "j", "base-node": "nope"}),
        ),
        (
            "block-stream",
            json!({"device": "top", "job-id": "j", "base-node": "tgt"}),
        ),
        (
            "block-stream",
            json!({"device": "top", "base": "x", "base-node": "y"}),
        ),
        ("block-stream", json!({"device": "top", "job-id": "1bad"})),
        (
            "block-stream",
            json!({"device": "top", "job-id": "j", "on-error": "bogus"}),
        ),
        (
            "block-stream",
            json!({"device": "top", "job-id": "j", "bogus": 1}),
        ),
        ("blockdev-mirror", json!({"device": "top", "target": "tgt"})),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "tgt", "sync": "incremental", "job-id": "j"}),
        ),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "tgt", "sync": "full", "granularity": 1000, "job-id": "j"}),
        ),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "tgt", "sync": "full", "granularity": 256, "job-id": "j"}),
        ),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "nope", "sync": "full", "job-id": "j"}),
        ),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "top", "sync": "full", "job-id": "j"}),
        ),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "tgt", "sync": "full", "replaces": "nope", "job-id": "j"}),
        ),
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "tgt", "sync": "full", "buf-size": -1, "job-id": "j"}),
        ),
        ("block-job-pause", json!({"device": "nope"})),
        ("block-job-resume", json!({"device": "nope"})),
        ("block-job-cancel", json!({"device": "nope"})),
        ("block-job-complete", json!({"device": "nope"})),
        ("block-job-set-speed", json!({"device": "nope", "speed": 1})),
        ("block-job-dismiss", json!({"id": "nope"})),
        ("block-job-finalize", json!({"id": "nope"})),
        ("job-pause", json!({"id": "nope"})),
        ("job-cancel", json!({"id": "nope"})),
        ("job-complete", json!({"id": "nope"})),
        ("job-finalize", json!({"id": "nope"})),
        ("job-dismiss", json!({"id": "nope"})),
    ];
    for (cmd, args) in cases {
        let ours = common::Qmp::error_of(&q.execute(cmd, args.clone()));
        let theirs = common::Qmp::error_of(&qsd.execute(cmd, args.clone()));
        assert_eq!(
            ours.0, theirs.0,
            "{cmd} {args}: class ({ours:?} vs {theirs:?})"
        );
        assert_eq!(ours.1, theirs.1, "{cmd} {args}: message");
    }
    // Verbs a running job refuses, and the busy node.
    for t in [&mut q, &mut qsd] {
        ok(
            t,
            "block-stream",
            json!({"device": "top", "job-id": "s", "speed": 1024}),
        );
    }
    for (cmd, args) in [
        ("block-job-complete", json!({"device": "s"})),
        ("job-finalize", json!({"id": "s"})),
        ("job-dismiss", json!({"id": "s"})),
        ("blockdev-del", json!({"node-name": "top"})),
        ("block-stream", json!({"device": "top", "job-id": "s"})),
        ("block-job-set-speed", json!({"device": "s", "speed": -1})),
    ] {
        let ours = common::Qmp::error_of(&q.execute(cmd, args.clone()));
        let theirs = common::Qmp::error_of(&qsd.execute(cmd, args.clone()));
        assert_eq!(
            ours.0, theirs.0,
            "{cmd} {args}: class ({ours:?} vs {theirs:?})"
        );
        assert_eq!(ours.1, theirs.1, "{cmd} {args}: message");
    }
    drop(b);
}
