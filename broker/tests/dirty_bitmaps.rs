//! Dirty bitmaps end to end: a `blk-loop` guest writes its 64 sectors
//! through the broker while bitmaps count them; a SIGKILLed block-proc
//! loses none of the counted writes (the bitmap memory is the broker's);
//! a persistent bitmap survives quit, is listed by `qemu-img info`, and
//! qemu-storage-daemon loads it with the same count; argument errors are
//! qemu-storage-daemon's. Needs /dev/kvm, qemu-img and
//! qemu-storage-daemon.

mod common;
mod disk_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::qemu::{blockdev_args, Peer};
use common::{broker_pid, Bulkhead, Qmp};
use disk_common::*;
use serde_json::{json, Value};

/// Bytes the `blk` guests write in a pass: sectors 0..64.
const GUEST_BYTES: u64 = GUEST_SECTORS * 512;

fn bitmaps_of(q: &mut Qmp, node: &str) -> Vec<Value> {
    let r = q.execute("query-named-block-nodes", json!({"flat": true}));
    r["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == node)
        .and_then(|n| n["dirty-bitmaps"].as_array().cloned())
        .unwrap_or_default()
}

fn bitmap(q: &mut Qmp, node: &str, name: &str) -> Value {
    bitmaps_of(q, node)
        .into_iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no bitmap {name} on {node}"))
}

fn ok(q: &mut Qmp, cmd: &str, args: Value) {
    let r = q.execute(cmd, args.clone());
    assert!(r.get("return").is_some(), "{cmd} {args}: {r}");
}

#[test]
fn bitmaps_count_guest_writes_and_keep_them_across_a_block_proc_sigkill() {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&["-S"], "blk-loop", "qcow2", &img, &serial);
    let mut q = b.client();
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "kept", "granularity": 512, "persistent": true}),
    );
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "fine", "granularity": 512}),
    );
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "coarse"}),
    );
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "off", "disabled": true}),
    );
    let frozen = json!({"node": "d0", "name": "frozen"});
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "frozen", "granularity": 4096}),
    );
    let f = bitmap(&mut q, "d0", "fine");
    assert_eq!(f["count"], 0);
    assert_eq!(f["recording"], true);
    assert_eq!(f["persistent"], false);
    assert_eq!(f["busy"], false);
    ok(&mut q, "cont", Value::Null);
    serial.wait_passes(2);

    // Exactly the guest's sectors, in every granularity.
    assert_eq!(bitmap(&mut q, "d0", "fine")["count"], GUEST_BYTES);
    assert_eq!(bitmap(&mut q, "d0", "frozen")["count"], GUEST_BYTES);
    let coarse = bitmap(&mut q, "d0", "coarse");
    assert_eq!(
        coarse["granularity"], 65536,
        "qcow2 default: the cluster size"
    );
    assert_eq!(coarse["count"], 65536);
    assert_eq!(bitmap(&mut q, "d0", "off")["count"], 0);
    // query-block shows them under inserted.
    let r = q.ok("query-block");
    let names: Vec<&str> = r[0]["inserted"]["dirty-bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["frozen", "off", "coarse", "fine", "kept"],
        "newest first, as QEMU"
    );

    // A disabled bitmap keeps what it counted; a cleared one counts anew.
    ok(&mut q, "block-dirty-bitmap-disable", frozen.clone());
    ok(
        &mut q,
        "block-dirty-bitmap-clear",
        json!({"node": "d0", "name": "fine"}),
    );
    let p = serial.passes();
    serial.wait_passes(p + 2);
    assert_eq!(bitmap(&mut q, "d0", "fine")["count"], GUEST_BYTES);

    // SIGKILL block-proc, three times: the frozen bitmap (which no write
    // after a kill can refill) still has every write counted before it,
    // and the recording ones go on counting.
    for round in 0..3 {
        let pid = block_proc_pid(broker_pid(&b)).expect("block-proc runs");
        sigkill(pid);
        let deadline = Instant::now() + GUEST_TIMEOUT;
        while block_proc_pid(broker_pid(&b)).is_none_or(|p| p == pid) {
            assert!(Instant::now() < deadline, "block-proc not restarted");
            std::thread::sleep(Duration::from_millis(20));
        }
        let fz = bitmap(&mut q, "d0", "frozen");
        assert_eq!(
            fz["count"], GUEST_BYTES,
            "round {round}: counted writes lost in the kill: {fz}"
        );
        assert_eq!(fz["recording"], false);
        ok(
            &mut q,
            "block-dirty-bitmap-clear",
            json!({"node": "d0", "name": "fine"}),
        );
        let p = serial.passes();
        serial.wait_passes(p + 2);
        assert_eq!(bitmap(&mut q, "d0", "fine")["count"], GUEST_BYTES);
        assert_eq!(bitmap(&mut q, "d0", "off")["count"], 0);
    }

    // Merge (by name and by {node, name}) after the restart.
    ok(
        &mut q,
        "block-dirty-bitmap-clear",
        json!({"node": "d0", "name": "off"}),
    );
    ok(
        &mut q,
        "block-dirty-bitmap-merge",
        json!({"node": "d0", "target": "off", "bitmaps": ["frozen", {"node": "d0", "name": "fine"}]}),
    );
    // "off" has the default 64 KiB granularity: one granule.
    assert_eq!(bitmap(&mut q, "d0", "off")["count"], 65536);
    ok(
        &mut q,
        "block-dirty-bitmap-remove",
        json!({"node": "d0", "name": "off"}),
    );
    assert_eq!(bitmaps_of(&mut q, "d0").len(), 4);
    assert!(!serial.has("VERDICT: FAIL"));

    // The persistent one, through the kill and the restarted worker's
    // image, is stored at quit and QEMU reads the same count.
    assert_eq!(bitmap(&mut q, "d0", "kept")["count"], GUEST_BYTES);
    ok(&mut q, "quit", Value::Null);
    b.wait_exit();
    assert_qemu_img_check(&img, "qcow2");
    let (mut qsd_proc, mut qq) = qsd(&img, &dir.0.join("qsd.sock"));
    let theirs = bitmap(&mut qq, "d0", "kept");
    assert_eq!(theirs["count"], GUEST_BYTES, "{theirs}");
    assert!(theirs.get("inconsistent").is_none(), "{theirs}");
    qq.execute("quit", Value::Null);
    qsd_proc.wait();
}

/// qemu-storage-daemon serving `img` as node `d0`, its QMP on `sock`.
fn qsd(img: &Path, sock: &Path) -> (Peer, Qmp) {
    let blockdev = json!({"driver": "qcow2", "node-name": "d0",
        "file": {"driver": "file", "filename": img}});
    Peer::qsd(sock, &blockdev_args(&[blockdev]))
}

fn qemu_img_bitmaps(img: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format-specific"]["data"]["bitmaps"].clone()
}

#[test]
fn a_persistent_bitmap_survives_quit_and_qemu_loads_it_with_the_same_count() {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    // A bitmap QEMU's tools made: bulkhead loads it.
    let st = Command::new("qemu-img")
        .args(["bitmap", "--add", "-g", "4096"])
        .arg(&img)
        .arg("from-qemu")
        .status()
        .unwrap();
    assert!(st.success());
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut b = start_with_disk(&["-S"], "blk-loop", "qcow2", &img, &serial);
    let mut q = b.client();
    let loaded = bitmap(&mut q, "d0", "from-qemu");
    assert_eq!(loaded["persistent"], true);
    assert_eq!(loaded["granularity"], 4096);
    assert_eq!(loaded["recording"], true);
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "incr0", "granularity": 1024, "persistent": true}),
    );
    ok(&mut q, "cont", Value::Null);
    serial.wait_passes(1);
    ok(&mut q, "stop", Value::Null);
    let count = bitmap(&mut q, "d0", "incr0")["count"].clone();
    assert_eq!(count, GUEST_BYTES);
    assert_eq!(bitmap(&mut q, "d0", "from-qemu")["count"], GUEST_BYTES);
    ok(&mut q, "quit", Value::Null);
    b.wait_exit();

    let listed = qemu_img_bitmaps(&img);
    let incr = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "incr0")
        .unwrap_or_else(|| panic!("qemu-img info does not list incr0: {listed}"));
    assert_eq!(incr["granularity"], 1024);
    assert_eq!(incr["flags"], json!(["auto"]));
    assert_qemu_img_check(&img, "qcow2");

    let (mut qsd_proc, mut qq) = qsd(&img, &dir.0.join("qsd.sock"));
    let theirs = bitmap(&mut qq, "d0", "incr0");
    assert_eq!(theirs["count"], count, "qemu-storage-daemon loads {theirs}");
    assert_eq!(theirs["recording"], true);
    assert_eq!(bitmap(&mut qq, "d0", "from-qemu")["count"], GUEST_BYTES);
    qq.execute("quit", Value::Null);
    qsd_proc.wait();
    assert_qemu_img_check(&img, "qcow2");
}

/// The argument-error cases, run against both.
fn error_cases() -> Vec<(&'static str, Value)> {
    let long = "x".repeat(1024);
    vec![
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "dup"}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "nope", "name": "x"}),
        ),
        ("block-dirty-bitmap-add", json!({"node": "d0", "name": ""})),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "granularity": 256}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "granularity": 3000}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "granularity": 0}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "granularity": 4294967296u64}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "granularity": -1}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "granularity": "x"}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "g", "persistent": "yes"}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": long.clone(), "persistent": true}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": long}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "f0", "name": "p", "persistent": true}),
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "bogus": 1, "name": "x"}),
        ),
        ("block-dirty-bitmap-add", json!({"node": "d0"})),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "d0", "name": "zz"}),
        ),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "zz", "name": "zz"}),
        ),
        (
            "block-dirty-bitmap-clear",
            json!({"node": "d0", "name": "zz"}),
        ),
        (
            "block-dirty-bitmap-enable",
            json!({"node": "zz", "name": "dup"}),
        ),
        (
            "block-dirty-bitmap-disable",
            json!({"node": "d0", "name": "zz"}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "zz", "bitmaps": ["dup"]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": ["zz"]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": [{"node": "zz", "name": "dup"}]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": [{"name": "dup"}]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": [{"node": "d0", "name": "dup", "x": 1}]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": [1]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": "dup"}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup", "bitmaps": [{"node": "n0", "name": "small"}]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "dup"}),
        ),
    ]
}

fn errors_of(q: &mut Qmp) -> Vec<(String, String)> {
    ok(
        q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "dup"}),
    );
    ok(
        q,
        "block-dirty-bitmap-add",
        json!({"node": "n0", "name": "small", "granularity": 512}),
    );
    error_cases()
        .into_iter()
        .map(|(cmd, args)| {
            let r = q.execute(cmd, args.clone());
            assert!(r.get("error").is_some(), "{cmd} {args} succeeded: {r}");
            Qmp::error_of(&r)
        })
        .collect()
}

#[test]
fn bitmap_argument_errors_match_qemu_storage_daemon() {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    let raw = dir.0.join("f.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let ro = dir.0.join("ro.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&ro)
        .arg("1M")
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&ro)
        .arg("b")
        .status()
        .unwrap();
    assert!(st.success());
    let extra = [
        json!({"driver": "file", "node-name": "f0", "filename": raw}),
        json!({"driver": "null-co", "node-name": "n0", "size": 1049088}),
        json!({"driver": "qcow2", "node-name": "r0", "read-only": true,
            "file": {"driver": "file", "filename": ro}}),
    ];
    let theirs = {
        let sock = dir.0.join("qsd.sock");
        let (mut qsd_proc, mut q) = qsd(&img, &sock);
        for e in &extra {
            ok(&mut q, "blockdev-add", e.clone());
        }
        let errs = errors_of(&mut q);
        q.execute("quit", Value::Null);
        qsd_proc.wait();
        errs
    };
    let blockdev = json!({"driver": "qcow2", "node-name": "d0",
        "file": {"driver": "file", "filename": img}})
    .to_string();
    let b = Bulkhead::start(&["-machine", "none", "-blockdev", &blockdev]);
    let mut q = b.client();
    for e in &extra {
        ok(&mut q, "blockdev-add", e.clone());
    }
    let ours = errors_of(&mut q);
    for ((case, t), o) in error_cases().iter().zip(&theirs).zip(&ours) {
        assert_eq!(o, t, "{case:?}");
    }
}

/// The commands an inconsistent bitmap refuses, and the query of it.
fn inconsistent_view(q: &mut Qmp) -> Vec<Value> {
    let b = json!({"node": "d0", "name": "b"});
    let mut out = vec![bitmap(q, "d0", "b")];
    ok(
        q,
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "c"}),
    );
    for (cmd, args) in [
        ("block-dirty-bitmap-clear", b.clone()),
        ("block-dirty-bitmap-enable", b.clone()),
        ("block-dirty-bitmap-disable", b.clone()),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "c", "bitmaps": ["b"]}),
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "d0", "target": "b", "bitmaps": ["c"]}),
        ),
    ] {
        out.push(q.execute(cmd, args));
    }
    out
}

#[test]
fn a_bitmap_left_in_use_by_a_killed_broker_is_inconsistent_as_qemu_shows_it() {
    let dir = common::TempDir::new();
    let img = qcow2_image(&dir.0);
    let st = Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("b")
        .status()
        .unwrap();
    assert!(st.success());
    let blockdev = json!({"driver": "qcow2", "node-name": "d0",
        "file": {"driver": "file", "filename": img}})
    .to_string();
    let args = ["-machine", "none", "-blockdev", &blockdev];
    let mut b = Bulkhead::start(&args);
    let mut q = b.client();
    let loaded = bitmap(&mut q, "d0", "b");
    assert_eq!(loaded["recording"], true);
    assert!(loaded.get("inconsistent").is_none(), "{loaded}");
    // Stopped first, so the worker cannot see its channel close and store
    // the bitmaps before the parent-death SIGKILL reaches it.
    let worker = block_proc_pid(broker_pid(&b)).expect("block-proc runs");
    signal(worker, nix::sys::signal::Signal::SIGSTOP);
    b.child.as_mut().unwrap().kill().unwrap();
    b.wait_exit();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{worker}")).exists() {
        assert!(Instant::now() < deadline, "block-proc outlived its broker");
        std::thread::sleep(Duration::from_millis(20));
    }

    let theirs = {
        let (mut qsd_proc, mut qq) = qsd(&img, &dir.0.join("qsd.sock"));
        let v = inconsistent_view(&mut qq);
        qq.execute("quit", Value::Null);
        qsd_proc.wait();
        v
    };
    assert_eq!(theirs[0]["inconsistent"], true, "{}", theirs[0]);
    let mut b = Bulkhead::start(&args);
    let mut q = b.client();
    let ours = inconsistent_view(&mut q);
    assert_eq!(ours, theirs);
    // Removing it is allowed, and takes it out of the image.
    ok(
        &mut q,
        "block-dirty-bitmap-remove",
        json!({"node": "d0", "name": "b"}),
    );
    ok(&mut q, "quit", Value::Null);
    b.wait_exit();
    assert!(
        qemu_img_bitmaps(&img).is_null(),
        "{}",
        qemu_img_bitmaps(&img)
    );
    assert_qemu_img_check(&img, "qcow2");
}

#[test]
fn blockdev_del_stores_persistent_bitmaps_and_blockdev_add_loads_them() {
    let b = Bulkhead::start(&["-machine", "none"]);
    let img = qcow2_image(&b.dir.0);
    let node = json!({"driver": "qcow2", "node-name": "n1",
        "file": {"driver": "file", "filename": img}});
    let mut q = b.client();
    ok(&mut q, "blockdev-add", node.clone());
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "n1", "name": "p", "persistent": true, "disabled": true, "granularity": 8192}),
    );
    ok(
        &mut q,
        "block-dirty-bitmap-add",
        json!({"node": "n1", "name": "t"}),
    );
    ok(&mut q, "blockdev-del", json!({"node-name": "n1"}));
    let listed = qemu_img_bitmaps(&img);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["name"], "p");
    assert_eq!(listed[0]["granularity"], 8192);
    assert_eq!(listed[0]["flags"], json!([]), "disabled: no auto flag");
    assert_qemu_img_check(&img, "qcow2");

    ok(&mut q, "blockdev-add", node);
    let all = bitmaps_of(&mut q, "n1");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["name"], "p");
    assert_eq!(all[0]["recording"], false);
    assert_eq!(all[0]["persistent"], true);
    assert_eq!(all[0]["granularity"], 8192);
}
