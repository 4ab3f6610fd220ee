//! qcow2 internal snapshots (`blockdev-snapshot-internal-sync`,
//! `blockdev-snapshot-delete-internal-sync`) on the real `bulkhead`: taken
//! while the `blk-loop` guest writes, listed by `query-block` and
//! `qemu-img snapshot -l`, restored by `qemu-img snapshot -a` to exactly
//! the content of their time while the guest's later writes copy the
//! shared clusters, deleted with `qemu-img check` clean; SIGKILLs of
//! block-proc during create and delete never leave a corrupt image; every
//! answer compared with QEMU 10's. Needs /dev/kvm, qemu-img and
//! qemu-system-x86_64.

mod common;
mod disk_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Bulkhead, Qmp};
use disk_common::*;
use serde_json::{json, Value};

fn img_tool(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A copy of `img` with snapshot `name` applied, as raw (`leaks`: the
/// image may hold leaked clusters, as kills leave them).
fn restored(img: &Path, name: &str, tag: &str, leaks: bool) -> PathBuf {
    let copy = img.with_extension(format!("{tag}.qcow2"));
    std::fs::copy(img, &copy).unwrap();
    let (rc, out) = img_tool(&["snapshot", "-a", name, p(&copy)]);
    assert_eq!(rc, 0, "qemu-img snapshot -a {name}: {out}");
    let (rc, out) = img_tool(&["check", p(&copy)]);
    assert!(
        rc == 0 || (leaks && rc == 3),
        "check after -a {name}: {out}"
    );
    raw_view(&copy, "qcow2")
}

/// The pass (1..=`max`) each guest sector of `raw` holds (None: none).
fn passes_of(raw: &Path, max: u64) -> Vec<Option<u64>> {
    (0..GUEST_SECTORS)
        .map(|s| (1..=max).find(|&p| sector_holds(raw, s, p)))
        .collect()
}

/// `raw` is a state the sequential `blk-loop` writes pass through:
/// sectors `[0, k)` hold pass `p + 1`, `[k, 64)` pass `p`.
fn assert_point_in_time(raw: &Path, max: u64) {
    let got = passes_of(raw, max);
    assert!(
        got.iter().all(Option::is_some),
        "sectors of no pass: {got:?}"
    );
    let first = got[0];
    let k = got.iter().position(|p| *p != first).unwrap_or(got.len());
    let older = first.map(|p| p - 1);
    assert!(
        got[k..].iter().all(|p| *p == older),
        "not a moment of the guest's writes: {got:?}"
    );
}

fn snapshot_names(q: &mut Qmp) -> Vec<String> {
    let v = q.ok("query-block");
    let d = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["qdev"] == "vda" || d["device"] == "vda" || d["inserted"]["node-name"] == "d0")
        .unwrap_or_else(|| panic!("no vda in {v}"))
        .clone();
    d["inserted"]["image"]["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn snapshot_taken_while_the_guest_writes_restores_its_moment_and_deletes_clean() {
    let LoopGuest {
        mut q,
        b: _b,
        serial,
        img,
        dir: _dir,
    } = start_blk_loop("qcow2", 2);

    // While the guest writes: a moment of its sequential passes.
    let before = serial.passes();
    let r = q.execute(
        "blockdev-snapshot-internal-sync",
        json!({"device": "d0", "name": "running"}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    serial.wait_passes(before + 2);

    // Paused: the exact content, to compare byte for byte later.
    q.ok("stop");
    let at_pause = raw_view(&img, "qcow2");
    let paused = std::fs::read(&at_pause).unwrap();
    let r = q.execute(
        "blockdev-snapshot-internal-sync",
        json!({"device": "d0", "name": "paused"}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(snapshot_names(&mut q), ["running", "paused"]);
    q.ok("cont");
    // The guest overwrites every sector twice more: each write must copy
    // the clusters the snapshots share.
    let now = serial.passes();
    serial.wait_passes(now + 3);
    q.ok("stop");

    let (_, list) = img_tool(&["snapshot", "-U", "-l", p(&img)]);
    assert!(
        list.contains("running") && list.contains("paused"),
        "{list}"
    );
    let (rc, out) = img_tool(&["check", "-U", p(&img)]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        std::fs::read(restored(&img, "paused", "p", false)).unwrap(),
        paused
    );
    assert_point_in_time(&restored(&img, "running", "r", false), before + 2);

    // Delete by name, then by id: QEMU's SnapshotInfo back.
    let r = q.execute(
        "blockdev-snapshot-delete-internal-sync",
        json!({"device": "d0", "name": "running"}),
    );
    assert_eq!(r["return"]["name"], "running", "{r}");
    assert_eq!(r["return"]["id"], "1", "{r}");
    assert_eq!(r["return"]["vm-state-size"], 0, "{r}");
    assert!(
        r["return"]["date-sec"].as_i64().unwrap() > 1_600_000_000,
        "{r}"
    );
    assert!(r["return"].get("icount").is_none(), "{r}");
    let r = q.execute(
        "blockdev-snapshot-delete-internal-sync",
        json!({"device": "d0", "id": "2"}),
    );
    assert_eq!(r["return"]["name"], "paused", "{r}");
    assert!(snapshot_names(&mut q).is_empty());
    q.ok("cont");
    let now = serial.passes();
    serial.wait_passes(now + 2);
    q.ok("stop");
    let (rc, out) = img_tool(&["check", "-U", p(&img)]);
    assert_eq!(rc, 0, "no leaks after the deletes: {out}");
    let (_, list) = img_tool(&["snapshot", "-U", "-l", p(&img)]);
    assert!(!list.contains("paused"), "{list}");
}

#[test]
fn block_proc_killed_during_snapshot_create_and_delete_never_corrupts_the_image() {
    let LoopGuest {
        mut q,
        b,
        serial,
        img,
        dir: _dir,
    } = start_blk_loop("qcow2", 2);
    // How long a create takes, to aim the kills inside one.
    let t = Instant::now();
    let r = q.execute(
        "blockdev-snapshot-internal-sync",
        json!({"device": "d0", "name": "base"}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    let took = t.elapsed().as_micros() as u64;
    let mut seed = u64::from(std::process::id()) | 1;
    let mut kills = 0;
    let mut made = vec!["base".to_string()];
    for i in 0..10 {
        // The guest writes between the kills (its writes copy what the
        // snapshots share), and is paused during each, so the check right
        // after the kill sees the file exactly as the kill left it.
        q.ok("cont");
        let now = serial.passes();
        serial.wait_passes(now + 1);
        q.ok("stop");
        let pid = block_proc_pid(common::broker_pid(&b)).expect("block-proc");
        let sock = b.sock.clone();
        let delete = i % 2 == 1 && !made.is_empty();
        let cmd = if delete {
            json!({"execute": "blockdev-snapshot-delete-internal-sync",
                   "arguments": {"device": "d0", "name": made[0]}})
        } else {
            json!({"execute": "blockdev-snapshot-internal-sync",
                   "arguments": {"device": "d0", "name": format!("k{i}")}})
        };
        let sender = std::thread::spawn(move || {
            let (mut c, _) = Qmp::connect(&sock);
            c.negotiate();
            c.request(cmd)
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % (took * 3 / 2 + 1)));
        sigkill(pid);
        kills += 1;
        let answer = sender.join().unwrap();
        // Killed or not, the file is never corrupt (leaks allowed).
        let (rc, out) = img_tool(&["check", "-U", p(&img)]);
        assert!(rc == 0 || rc == 3, "kill {i} ({answer}): {out}");
        wait_block_restart(&b, &mut q, pid);
        let names = snapshot_names(&mut q);
        if answer.get("return").is_some() {
            assert_eq!(names.contains(&format!("k{i}")), !delete, "{answer}");
        }
        made = names;
    }
    assert_eq!(kills, 10);
    let (rc, out) = img_tool(&["check", "-U", p(&img)]);
    assert!(rc == 0 || rc == 3, "{out}");
    // Every snapshot left restores to a moment of the guest's writes.
    let max = serial.passes() + 2;
    for (k, name) in made.iter().enumerate() {
        assert_point_in_time(&restored(&img, name, &format!("k{k}"), true), max);
    }
}

/// The commands of the comparison with QEMU 10, on nodes `q0` (qcow2),
/// `r0` (raw), `f0` (q0's file), `ro0` (read-only qcow2 holding
/// snapshot `pre`) and `q1` (qcow2 with one-bit refcounts).
fn comparison_commands() -> Vec<Value> {
    let c = |n: &str, a: Value| json!({"execute": n, "arguments": a});
    let mk = "blockdev-snapshot-internal-sync";
    let del = "blockdev-snapshot-delete-internal-sync";
    vec![
        c(mk, json!({"device": "q0", "name": "s1"})),
        c(mk, json!({"device": "q0", "name": "s1"})),
        c(mk, json!({"device": "nope", "name": "s1"})),
        c(mk, json!({"device": "r0", "name": "s1"})),
        c(mk, json!({"device": "f0", "name": "s1"})),
        c(mk, json!({"device": "ro0", "name": "s9"})),
        c(mk, json!({"device": "q0", "name": ""})),
        c(mk, json!({"device": "q0"})),
        c(mk, json!({"name": "x"})),
        c(mk, json!({"device": "q0", "name": "s2", "x": 1})),
        c(mk, json!({"device": "q0", "name": "a b/c"})),
        c(mk, json!({"device": "q1", "name": "s1"})),
        c(del, json!({"device": "q0"})),
        c(del, json!({"device": "q0", "name": "zz"})),
        c(del, json!({"device": "q0", "id": "7"})),
        c(del, json!({"device": "q0", "id": "1", "name": "a b/c"})),
        c(del, json!({"device": "q0", "name": "s1", "id": ""})),
        c(del, json!({"device": "r0", "name": "s1"})),
        c(del, json!({"device": "nope", "name": "s1"})),
        c(del, json!({"device": "f0", "name": "s1"})),
        c(del, json!({"device": "ro0", "name": "pre"})),
        c(del, json!({"device": "q0", "id": "1"})),
        c(del, json!({"device": "q0", "name": "s1"})),
        c(mk, json!({"device": "q0", "name": "1"})),
        c(del, json!({"device": "q0", "name": "1"})),
        c(del, json!({"device": "q0", "id": "2", "name": "a b/c"})),
    ]
}

/// Masks the wall-clock date (the guest clock is 0 in both: -S).
fn masked(mut v: Value) -> Value {
    if let Some(r) = v.get_mut("return").and_then(Value::as_object_mut) {
        for k in ["date-sec", "date-nsec"] {
            if r.contains_key(k) {
                r.insert(k.into(), json!("T"));
            }
        }
    }
    v
}

#[test]
fn snapshot_answers_and_errors_match_qemu() {
    let dir = common::TempDir::new();
    let mk = |tag: &str| -> Vec<String> {
        let (q0, r0, ro) = (
            dir.0.join(format!("{tag}-q.qcow2")),
            dir.0.join(format!("{tag}-r.raw")),
            dir.0.join(format!("{tag}-ro.qcow2")),
        );
        for (f, kind) in [(&q0, "qcow2"), (&r0, "raw"), (&ro, "qcow2")] {
            assert_eq!(img_tool(&["create", "-q", "-f", kind, p(f), "4M"]).0, 0);
        }
        assert_eq!(img_tool(&["snapshot", "-c", "pre", p(&ro)]).0, 0);
        // One-bit refcounts: no room for a second reference.
        let narrow = dir.0.join(format!("{tag}-n.qcow2"));
        let (rc, out) = img_tool(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=1",
            p(&narrow),
            "4M",
        ]);
        assert_eq!(rc, 0, "{out}");
        let w = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write 0 64k", p(&narrow)])
            .output()
            .expect("qemu-io is needed");
        assert!(w.status.success());
        [
            format!("driver=file,filename={},node-name=f0", q0.display()),
            "driver=qcow2,file=f0,node-name=q0".into(),
            format!("driver=file,filename={},node-name=f1", r0.display()),
            "driver=raw,file=f1,node-name=r0".into(),
            format!(
                "driver=file,filename={},node-name=f2,read-only=on",
                ro.display()
            ),
            "driver=qcow2,file=f2,node-name=ro0,read-only=on".into(),
            format!("driver=file,filename={},node-name=f3", narrow.display()),
            "driver=qcow2,file=f3,node-name=q1".into(),
        ]
        .into_iter()
        .flat_map(|b| ["-blockdev".to_string(), b])
        .collect()
    };
    let theirs_args = mk("theirs");
    let ours_args = mk("ours");
    let cmds = comparison_commands();
    let mut qemu_args: Vec<&str> = vec!["-M", "none", "-S", "-nodefaults"];
    qemu_args.extend(theirs_args.iter().map(String::as_str));
    let theirs = common::qemu::replies(&qemu_args, &cmds);
    let mut bh_args: Vec<&str> = vec!["-M", "none", "-S"];
    bh_args.extend(ours_args.iter().map(String::as_str));
    let b = Bulkhead::start(&bh_args);
    let mut q = b.client();
    let ours = common::qemu::ours(&mut q, &cmds);
    for ((c, o), t) in cmds.iter().zip(ours).zip(theirs) {
        assert_eq!(masked(o), masked(t), "{c}");
    }
    // The listing: QEMU shows a writable node's snapshots only.
    let r = q.execute(
        "blockdev-snapshot-internal-sync",
        json!({"device": "q0", "name": "listed"}),
    );
    assert_eq!(r["return"], json!({}));
    let nodes = q.ok("query-named-block-nodes");
    let of = |n: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node-name"] == n)
            .unwrap()["image"]
            .get("snapshots")
            .cloned()
    };
    let listed = of("q0").expect("q0 lists its snapshots");
    assert_eq!(listed[0]["name"], "listed");
    assert_eq!(listed[0]["id"], "1");
    assert_eq!(of("ro0"), None);
    assert_eq!(of("r0"), None);
}
