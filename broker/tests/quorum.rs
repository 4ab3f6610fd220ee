//! Quorum on the real `bulkhead`: three raw files under a `quorum` node
//! that `blk-loop` writes and verifies. One child corrupted from the host
//! is outvoted (the guest keeps reading correct data) and named by
//! `QUORUM_REPORT_BAD`; `x-blockdev-change` swaps it for a fresh node and
//! the change survives a SIGKILL of block-proc; two corrupted children
//! give `QUORUM_FAILURE` and an I/O error to the guest, with block-proc
//! alive. Option and `x-blockdev-change` errors are compared with
//! `qemu-system-x86_64`. Needs /dev/kvm and QEMU.

mod common;
mod disk_common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Qmp;
use disk_common::*;
use serde_json::{json, Value};

/// Raw child `name` over file `dir/name.img`.
fn raw_child(dir: &Path, name: &str) -> Value {
    json!({"driver": "raw", "node-name": name,
        "file": {"driver": "file", "filename": dir.join(format!("{name}.img"))}})
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(format!("{name}.img"));
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Overwrites the guest's sectors of `img` with `byte` until stopped.
struct Corrupter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Corrupter {
    fn start(img: &Path, byte: u8) -> Corrupter {
        let stop = Arc::new(AtomicBool::new(false));
        let f = OpenOptions::new().write(true).open(img).unwrap();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let junk = vec![byte; (GUEST_SECTORS * 512) as usize];
            while !s.load(Ordering::Relaxed) {
                f.write_all_at(&junk, 0).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Corrupter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Corrupter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ok(q: &mut Qmp, cmd: &str, args: Value) {
    let r = q.execute(cmd, args.clone());
    assert_eq!(r["return"], json!({}), "{cmd} {args}: {r}");
}

fn desc(q: &mut Qmp, cmd: &str, args: Value) -> String {
    Qmp::error_of(&q.execute(cmd, args)).1
}

#[test]
fn a_corrupted_child_is_outvoted_replaced_and_two_corrupted_fail_the_read_without_a_crash() {
    common::require_kvm();
    let dir = common::TempDir::new();
    let d = &dir.0;
    for n in ["a", "b", "c", "d"] {
        image(d, n, IMAGE_BYTES);
    }
    // The quorum in QEMU's dotted form (numbered keys make the list).
    let quorum =
        "driver=quorum,node-name=q0,vote-threshold=2,children.0=a,children.1=b,children.2=c";
    let (ba, bb, bc) = (
        raw_child(d, "a").to_string(),
        raw_child(d, "b").to_string(),
        raw_child(d, "c").to_string(),
    );
    let (qs, kernel) = (quorum, guest("blk-loop"));
    let serial = SerialLog(d.join("serial.log"));
    let serial_arg = format!("file:{}", serial.0.display());
    let b = common::Bulkhead::start(&[
        "-kernel",
        &kernel,
        "-m",
        "64M",
        "-serial",
        &serial_arg,
        "-blockdev",
        &ba,
        "-blockdev",
        &bb,
        "-blockdev",
        &bc,
        "-blockdev",
        qs,
        "-device",
        "virtio-blk-device,drive=q0,id=vda",
    ]);
    let mut q = b.client();
    serial.wait_passes(1);

    // One child corrupted: outvoted and named; the guest's verified reads
    // stay correct.
    {
        let _b = Corrupter::start(&d.join("b.img"), 0xb3);
        let window = Instant::now();
        let e = q.event("QUORUM_REPORT_BAD");
        assert_eq!(e["data"]["node-name"], "b", "{e}");
        assert_eq!(e["data"]["type"], "read", "{e}");
        assert!(
            e["data"].get("error").is_none(),
            "outvoted, not failed: {e}"
        );
        let done = serial.passes();
        serial.wait_passes(done + 3);
        // Every read of b is outvoted, but QEMU's rate limit (one per
        // node and second, the newest held) keeps the events few.
        let _ = q.execute("query-status", json!({}));
        let held = q
            .events
            .iter()
            .filter(|e| e["event"] == "QUORUM_REPORT_BAD")
            .count() as u64;
        assert!(
            held <= window.elapsed().as_secs() + 2,
            "{held} events in {:?}",
            window.elapsed()
        );
    }
    assert!(
        !q.events.iter().any(|e| e["event"] == "QUORUM_FAILURE"),
        "{:?}",
        q.events
    );

    // Swap the bad child (children.1) for a fresh node (children.3, as
    // QEMU numbers it).
    let change = |q: &mut Qmp, args: Value| q.execute("x-blockdev-change", args);
    let r = change(&mut q, json!({"parent": "q0", "child": "children.1"}));
    assert_eq!(r["return"], json!({}), "{r}");
    ok(&mut q, "blockdev-add", raw_child(d, "d"));
    let r = change(&mut q, json!({"parent": "q0", "node": "d"}));
    assert_eq!(r["return"], json!({}), "{r}");
    let r = change(&mut q, json!({"parent": "q0", "node": "c"}));
    assert_eq!(Qmp::error_of(&r).1, "The node c already has a parent");
    let done = serial.passes();
    serial.wait_passes(done + 2);

    // The change is desired state: a restarted block-proc has [a, c, d]
    // named children.0, children.2, children.3, not children.0-2 as a
    // fresh quorum of three would be.
    let pid = block_proc_pid(common::broker_pid(&b)).expect("block-proc");
    sigkill(pid);
    wait_block_restart(&b, &mut q, pid);
    let done = serial.passes();
    serial.wait_passes(done + 2);
    let r = change(&mut q, json!({"parent": "q0", "child": "children.1"}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "Node 'q0' does not have child 'children.1'"
    );
    assert_eq!(
        desc(&mut q, "blockdev-del", json!({"node-name": "d"})),
        "Block device d is in use"
    );
    ok(&mut q, "blockdev-del", json!({"node-name": "b"}));

    // Two corrupted children, differently: no quorum, an I/O error to the
    // guest, block-proc still serving.
    q.events.clear();
    let _a = Corrupter::start(&d.join("a.img"), 0xa5);
    let _c = Corrupter::start(&d.join("c.img"), 0x5a);
    let e = q.event("QUORUM_FAILURE");
    assert_eq!(e["data"]["reference"], "q0", "{e}");
    assert!(e["data"]["sectors-count"].as_u64().unwrap() > 0, "{e}");
    // The whole verdict line (the guest may still be writing it).
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let text = loop {
        let t = serial.text();
        if t.split_once("VERDICT: FAIL")
            .is_some_and(|(_, rest)| rest.contains('\n'))
        {
            break t;
        }
        assert!(Instant::now() < deadline, "no failure verdict:\n{t}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // A read (kind 0) answered VIRTIO_BLK_S_IOERR (1), not wrong data.
    assert!(
        text.contains("Status { kind: 0") && text.contains("status: 1 }"),
        "{text}"
    );
    // The guest's own failure ends the VM (debug exit 1 -> status 3);
    // block-proc never died on the way.
    let mut b = b;
    let status = b.wait_exit();
    assert_eq!(status.code(), Some(3), "{status}");
    while let Some(v) = q.try_recv() {
        q.events.push_back(v);
    }
    assert!(
        !q.events
            .iter()
            .any(|e| e["event"] == "__org.bulkhead_WORKER_EXITED"),
        "{:?}",
        q.events
    );
}

/// The same `blockdev-add` and `x-blockdev-change` calls, good and bad,
/// answered by bulkhead and by `qemu-system-x86_64 -M none`.
#[test]
fn quorum_options_and_x_blockdev_change_answer_as_qemu() {
    let dir = common::TempDir::new();
    let d = &dir.0;
    for n in ["a", "b", "c", "d", "e", "g"] {
        image(d, n, 1 << 20);
    }
    image(d, "big", 2 << 20);
    let add = |v: Value| json!({"execute": "blockdev-add", "arguments": v});
    let quorum = |extra: Value| {
        let mut q = json!({"driver": "quorum", "node-name": "q0"});
        for (k, v) in extra.as_object().unwrap() {
            q[k] = v.clone();
        }
        add(q)
    };
    let change = |v: Value| json!({"execute": "x-blockdev-change", "arguments": v});
    let abc = json!(["a", "b", "c"]);
    let mut cmds: Vec<Value> = ["a", "b", "c", "d", "e", "big"]
        .iter()
        .map(|n| add(raw_child(d, n)))
        .collect();
    cmds.extend([
        quorum(json!({"children": abc, "vote-threshold": 4})),
        quorum(json!({"children": abc, "vote-threshold": 0})),
        quorum(json!({"children": abc, "vote-threshold": -1})),
        quorum(json!({"children": abc})),
        quorum(json!({"vote-threshold": 1})),
        quorum(json!({"children": [], "vote-threshold": 1})),
        quorum(json!({"children": "a", "vote-threshold": 1})),
        quorum(json!({"children": [5], "vote-threshold": 1})),
        quorum(json!({"children": [{"driver": "file"}], "vote-threshold": 1})),
        quorum(
            json!({"children": ["a", {"driver": "file", "filename": "/x", "bogus": 1}],
            "vote-threshold": 1}),
        ),
        quorum(json!({"children": abc, "vote-threshold": "x"})),
        quorum(json!({"children": abc, "vote-threshold": 2, "blkverify": "x"})),
        quorum(json!({"children": abc, "vote-threshold": 2, "read-pattern": "bogus"})),
        quorum(json!({"children": abc, "vote-threshold": 2, "read-pattern": 5})),
        quorum(json!({"children": abc, "vote-threshold": 2, "bogus": 1})),
        quorum(json!({"children": abc, "vote-threshold": 2, "blkverify": true})),
        quorum(json!({"children": ["a", "b"], "vote-threshold": 1, "blkverify": true})),
        quorum(
            json!({"children": ["a", "b"], "vote-threshold": 2, "blkverify": true,
            "rewrite-corrupted": true}),
        ),
        quorum(json!({"children": ["a", "b", "zz"], "vote-threshold": 2})),
        quorum(json!({"children": ["a", "big"], "vote-threshold": 1})),
        quorum(json!({"children": abc, "vote-threshold": 2, "rewrite-corrupted": true})),
        add(json!({"driver": "raw", "node-name": "top", "file": "q0"})),
        change(json!({"parent": "q0"})),
        change(json!({"parent": "q0", "child": "children.0", "node": "d"})),
        change(json!({"parent": "nope", "child": "children.0"})),
        change(json!({"child": "children.0"})),
        change(json!({"parent": "q0", "child": "children.0", "x": 1})),
        change(json!({"parent": "q0", "node": 5})),
        change(json!({"parent": "q0", "child": "children.7"})),
        change(json!({"parent": "q0", "child": "file"})),
        change(json!({"parent": "q0", "node": "nope"})),
        change(json!({"parent": "q0", "node": "b"})),
        change(json!({"parent": "a", "node": "d"})),
        change(json!({"parent": "a", "child": "file"})),
        change(json!({"parent": "a", "child": "children.0"})),
        change(json!({"parent": "q0", "node": "q0"})),
        change(json!({"parent": "q0", "node": "top"})),
        change(json!({"parent": "q0", "child": "children.1"})),
        change(json!({"parent": "q0", "child": "children.1"})),
        change(json!({"parent": "q0", "child": "children.0"})),
        change(json!({"parent": "q0", "node": "d"})),
        change(json!({"parent": "q0", "node": "e"})),
        change(json!({"parent": "q0", "child": "children.3"})),
        change(json!({"parent": "q0", "child": "children.4"})),
        change(json!({"parent": "q0", "node": "e"})),
        change(json!({"parent": "q0", "child": "children.4"})),
        json!({"execute": "blockdev-del", "arguments": {"node-name": "d"}}),
        json!({"execute": "blockdev-del", "arguments": {"node-name": "e"}}),
        json!({"execute": "blockdev-del", "arguments": {"node-name": "b"}}),
        // A missing file among inline children.
        add(
            json!({"driver": "quorum", "node-name": "q1", "vote-threshold": 2,
            "children": [raw_child(d, "g"), raw_child(d, "f")]}),
        ),
        // Inline children; the named one removed is freed, as in QEMU.
        add(
            json!({"driver": "quorum", "node-name": "q1", "vote-threshold": 1,
            "read-pattern": "fifo", "children": [raw_child(d, "g"), {"driver": "raw",
            "node-name": "f", "file": {"driver": "file", "filename": d.join("e.img")}}]}),
        ),
        change(json!({"parent": "q1", "child": "children.1"})),
        json!({"execute": "blockdev-del", "arguments": {"node-name": "f"}}),
        change(json!({"parent": "q1", "child": "children.0"})),
        add(
            json!({"driver": "quorum", "node-name": "q2", "read-only": true,
            "vote-threshold": 1, "rewrite-corrupted": true,
            "children": [{"driver": "raw", "file": {"driver": "file",
            "filename": d.join("d.img")}}]}),
        ),
        json!({"execute": "block_resize", "arguments": {"node-name": "q0", "size": 2097152}}),
        json!({"execute": "query-named-block-nodes"}),
    ]);
    let theirs = common::qemu::replies(&["-M", "none", "-S"], &cmds);
    let b = common::Bulkhead::start(&[]);
    let mut q = b.client();
    let ours = common::qemu::ours(&mut q, &cmds);
    let n = cmds.len() - 1;
    for ((c, o), t) in cmds[..n].iter().zip(&ours).zip(&theirs) {
        assert_eq!(o, t, "{c}");
    }
    // The quorum nodes as query-named-block-nodes shows them (after the
    // changes: q0 over a and c, q1 over g).
    let entry = |r: &Value, name: &str| {
        r["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node-name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {r}"))
    };
    for name in ["q0", "q1"] {
        assert_eq!(entry(&ours[n], name), entry(&theirs[n], name), "{name}");
    }
}

/// Where bulkhead refuses what QEMU 10 accepts and then ignores or
/// breaks on, it says why.
#[test]
fn combinations_qemu_would_ignore_are_refused_with_a_reason() {
    let dir = common::TempDir::new();
    let d = &dir.0;
    for n in ["a", "b", "big"] {
        image(d, n, if n == "big" { 2 << 20 } else { 1 << 20 });
    }
    let b = common::Bulkhead::start(&[]);
    let mut q = b.client();
    for n in ["a", "b", "big"] {
        ok(&mut q, "blockdev-add", raw_child(d, n));
    }
    let quorum = |extra: Value| {
        let mut v = json!({"driver": "quorum", "node-name": "q0", "children": ["a", "b"],
            "vote-threshold": 1, "read-pattern": "fifo"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let e = desc(
        &mut q,
        "blockdev-add",
        quorum(json!({"rewrite-corrupted": true})),
    );
    assert!(
        e.starts_with("rewrite-corrupted=on cannot be used with read-pattern=fifo"),
        "{e}"
    );
    let e = desc(&mut q, "blockdev-add", quorum(json!({"blkverify": true})));
    assert!(
        e.starts_with("blkverify=on cannot be used with read-pattern=fifo"),
        "{e}"
    );
    ok(&mut q, "blockdev-add", quorum(json!({})));
    // QEMU takes a child of another size, then fails every length query.
    let e = desc(
        &mut q,
        "x-blockdev-change",
        json!({"parent": "q0", "node": "big"}),
    );
    assert_eq!(
        e,
        "Cannot add 'big' to quorum 'q0': its size (2097152) differs from the quorum's (1048576)"
    );
    let r = q.execute("query-named-block-nodes", json!({}));
    let q0 = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "q0")
        .unwrap()
        .clone();
    assert_eq!(q0["drv"], "quorum", "{q0}");
    assert_eq!(q0["image"]["virtual-size"], 1 << 20, "{q0}");
}

/// `blockdev-mirror` with `replaces` = a quorum child (QEMU's way to
/// rebuild one): a corrupted child is mirrored from the quorum's voted
/// data into a new node that takes its place and its name; the guest
/// keeps verifying; the swap is desired state across a block-proc SIGKILL.
/// The `replaces` refusals are compared with `qemu-system-x86_64`.
#[test]
fn mirror_replaces_a_corrupted_quorum_child_with_a_rebuilt_one() {
    common::require_kvm();
    let dir = common::TempDir::new();
    let d = &dir.0;
    for n in ["a", "b", "c", "d", "t"] {
        image(d, n, IMAGE_BYTES);
    }
    let add = |v: Value| json!({"execute": "blockdev-add", "arguments": v});
    let mirror = |r: &str| {
        json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m", "device": "q0",
            "target": "t", "sync": "full", "replaces": r}})
    };
    let mut cmds: Vec<Value> = ["a", "b", "c", "d", "t"]
        .iter()
        .map(|n| add(raw_child(d, n)))
        .collect();
    cmds.extend([
        add(
            json!({"driver": "quorum", "node-name": "q0", "vote-threshold": 2,
            "children": ["a", "b", "c"]}),
        ),
        add(
            json!({"driver": "quorum", "node-name": "q1", "vote-threshold": 1,
            "children": ["b", "d"]}),
        ),
        mirror("nope"),
        mirror("d"),
        mirror("b"),
    ]);
    let theirs = common::qemu::replies(&["-M", "none", "-S"], &cmds);
    {
        let b = common::Bulkhead::start(&[]);
        let mut q = b.client();
        let ours = common::qemu::ours(&mut q, &cmds);
        for ((c, o), t) in cmds.iter().zip(&ours).zip(&theirs) {
            assert_eq!(o, t, "{c}");
        }
    }

    let (ba, bb, bc) = (
        raw_child(d, "a").to_string(),
        raw_child(d, "b").to_string(),
        raw_child(d, "c").to_string(),
    );
    let quorum =
        "driver=quorum,node-name=q0,vote-threshold=2,children.0=a,children.1=b,children.2=c";
    let kernel = guest("blk-loop");
    let serial = SerialLog(d.join("serial.log"));
    let serial_arg = format!("file:{}", serial.0.display());
    let b = common::Bulkhead::start(&[
        "-kernel",
        &kernel,
        "-m",
        "64M",
        "-serial",
        &serial_arg,
        "-blockdev",
        &ba,
        "-blockdev",
        &bb,
        "-blockdev",
        &bc,
        "-blockdev",
        quorum,
        "-device",
        "virtio-blk-device,drive=q0,id=vda",
    ]);
    let mut q = b.client();
    serial.wait_passes(1);
    {
        let _c = Corrupter::start(&d.join("c.img"), 0xc3);
        let e = q.event("QUORUM_REPORT_BAD");
        assert_eq!(e["data"]["node-name"], "c", "{e}");
        ok(&mut q, "blockdev-add", raw_child(d, "t"));
        let r = q.request(mirror("c"));
        assert_eq!(r["return"], json!({}), "{r}");
        q.event_where("BLOCK_JOB_READY", |d| d["device"] == "m");
        ok(&mut q, "block-job-complete", json!({"device": "m"}));
        q.event_where("BLOCK_JOB_COMPLETED", |d| d["device"] == "m");
    }
    // t holds c's place: c is free, t is used, and t agrees with a and b.
    ok(&mut q, "blockdev-del", json!({"node-name": "c"}));
    assert_eq!(
        desc(&mut q, "blockdev-del", json!({"node-name": "t"})),
        "Block device t is in use"
    );
    // A report of c from before the swap may still be held by the 1 s
    // rate limit: let it out, then expect none.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = q.execute("query-status", json!({}));
    q.events.clear();
    let done = serial.passes();
    serial.wait_passes(done + 2);
    let _ = q.execute("query-status", json!({}));
    assert!(
        !q.events.iter().any(|e| e["event"] == "QUORUM_REPORT_BAD"),
        "{:?}",
        q.events
    );

    // A restarted block-proc has t as children.2.
    let pid = block_proc_pid(common::broker_pid(&b)).expect("block-proc");
    sigkill(pid);
    wait_block_restart(&b, &mut q, pid);
    let done = serial.passes();
    serial.wait_passes(done + 2);
    let r = q.execute(
        "x-blockdev-change",
        json!({"parent": "q0", "child": "children.2"}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    ok(&mut q, "blockdev-del", json!({"node-name": "t"}));
    let done = serial.passes();
    serial.wait_passes(done + 1);
}
