//! Block-graph QMP commands on the real `bulkhead` (block-proc serving the
//! nodes): blockdev-add/-del with QEMU's messages, the node and stats
//! queries, `-blockdev`/`-drive` at start-up, and the desired state
//! replayed into a restarted block-proc. Needs /dev/kvm (the broker always
//! starts vcpu-proc).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bulkhead, Qmp, TIMEOUT};
use serde_json::{json, Value};

/// A raw image of `size` bytes in the test's directory.
fn raw_image(b: &Bulkhead, name: &str, size: u64) -> PathBuf {
    let p = b.dir.0.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// A qcow2 image of `size` made by qemu-img.
fn qcow2_image(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg(size)
        .status()
        .expect("qemu-img is installed");
    assert!(st.success());
    p
}

fn add(q: &mut Qmp, args: Value) -> Value {
    q.execute("blockdev-add", args)
}

fn add_ok(q: &mut Qmp, args: Value) {
    let r = add(q, args.clone());
    assert_eq!(r, json!({"return": {}}), "blockdev-add {args}");
}

/// File node `f0` over `img`, then raw node `r0` over `f0` (each by a
/// `blockdev-add` of its own, so both are the monitor's).
fn add_raw_over_file(q: &mut Qmp, img: &Path) {
    add_ok(
        q,
        json!({"driver": "file", "node-name": "f0", "filename": img}),
    );
    add_ok(q, json!({"driver": "raw", "node-name": "r0", "file": "f0"}));
}

fn error_desc(r: &Value) -> String {
    let (class, desc) = Qmp::error_of(r);
    assert_eq!(class, "GenericError");
    desc
}

fn nodes(q: &mut Qmp) -> Vec<Value> {
    q.ok("query-named-block-nodes").as_array().unwrap().clone()
}

fn node<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|n| n["node-name"] == name)
        .unwrap_or_else(|| panic!("node {name} not listed in {list:?}"))
}

fn names(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|n| n["node-name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn raw_on_file_is_added_and_listed_with_qemu_fields() {
    let b = Bulkhead::start(&[]);
    let img = raw_image(&b, "r.img", 1 << 20);
    let mut q = b.client();
    add_ok(
        &mut q,
        json!({"driver": "raw", "node-name": "d0",
               "file": {"driver": "file", "node-name": "f0", "filename": img}}),
    );
    let list = nodes(&mut q);
    assert_eq!(names(&list), ["d0", "f0"], "newest first, as QEMU");
    let d0 = node(&list, "d0");
    assert_eq!(d0["drv"], "raw");
    assert_eq!(d0["ro"], false);
    assert_eq!(d0["file"], img.to_str().unwrap());
    assert_eq!(d0["image"]["virtual-size"], 1 << 20);
    assert_eq!(d0["image"]["format"], "raw");
    assert_eq!(
        d0["cache"],
        json!({"writeback": true, "direct": false, "no-flush": false})
    );
    for k in [
        "backing_file_depth",
        "encrypted",
        "detect_zeroes",
        "bps",
        "bps_rd",
        "bps_wr",
        "iops",
        "iops_rd",
        "iops_wr",
        "write_threshold",
    ] {
        assert!(d0.get(k).is_some(), "{k} missing from {d0}");
    }
    assert_eq!(node(&list, "f0")["drv"], "file");
}

#[test]
fn qcow2_on_file_reports_the_image_virtual_size() {
    let b = Bulkhead::start(&[]);
    let img = qcow2_image(&b.dir.0, "d.qcow2", "64M");
    let mut q = b.client();
    add_ok(
        &mut q,
        json!({"driver": "qcow2", "node-name": "q0",
               "file": {"driver": "file", "filename": img}}),
    );
    let list = nodes(&mut q);
    let q0 = node(&list, "q0");
    assert_eq!(q0["drv"], "qcow2");
    assert_eq!(q0["image"]["virtual-size"], 64 << 20);
    assert_eq!(q0["image"]["format"], "qcow2");
}

#[test]
fn null_co_is_added_with_qemu_default_size() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    add_ok(&mut q, json!({"driver": "null-co", "node-name": "n0"}));
    let list = nodes(&mut q);
    let n0 = node(&list, "n0");
    assert_eq!(n0["drv"], "null-co");
    assert_eq!(n0["image"]["virtual-size"], 1u64 << 30);
}

#[test]
fn duplicate_node_name_is_refused_with_qemu_message() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    add_ok(&mut q, json!({"driver": "null-co", "node-name": "d0"}));
    let r = add(&mut q, json!({"driver": "null-co", "node-name": "d0"}));
    assert_eq!(error_desc(&r), "Duplicate nodes with node-name='d0'");
}

#[test]
fn missing_file_is_refused_with_could_not_open() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let r = add(
        &mut q,
        json!({"driver": "file", "node-name": "f", "filename": "/nope"}),
    );
    assert_eq!(
        error_desc(&r),
        "Could not open '/nope': No such file or directory"
    );
    assert!(nodes(&mut q).is_empty(), "a failed add leaves no node");
}

#[test]
fn bad_arguments_use_qemu_wording() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let cases = [
        (json!({"node-name": "x"}), "Parameter 'driver' is missing"),
        (
            json!({"driver": "foo", "node-name": "x"}),
            "Parameter 'driver' does not accept value 'foo'",
        ),
        (
            json!({"driver": "null-co"}),
            "'node-name' must be specified for the root node",
        ),
        (
            json!({"driver": "raw", "node-name": "r"}),
            "Parameter 'file' is missing",
        ),
        (
            json!({"driver": "raw", "node-name": "r", "file": {"driver": "file"}}),
            "Parameter 'file.filename' is missing",
        ),
        (
            json!({"driver": "null-co", "node-name": "#x"}),
            "Invalid node-name: '#x'",
        ),
        (
            json!({"driver": "raw", "node-name": "r", "file": "nosuch"}),
            "Cannot find device='nosuch' nor node-name='nosuch'",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(error_desc(&add(&mut q, args.clone())), want, "{args}");
    }
}

#[test]
fn blockdev_del_of_unknown_node_fails_to_find_it() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let r = q.execute("blockdev-del", json!({"node-name": "x"}));
    assert_eq!(error_desc(&r), "Failed to find node with node-name='x'");
}

#[test]
fn blockdev_del_refuses_a_node_another_node_uses() {
    let b = Bulkhead::start(&[]);
    let img = raw_image(&b, "r.img", 1 << 20);
    let mut q = b.client();
    add_raw_over_file(&mut q, &img);
    add_ok(
        &mut q,
        json!({"driver": "raw", "node-name": "r1",
               "file": {"driver": "null-co", "node-name": "inner"}}),
    );
    let r = q.execute("blockdev-del", json!({"node-name": "f0"}));
    assert_eq!(error_desc(&r), "Block device f0 is in use");
    let r = q.execute("blockdev-del", json!({"node-name": "inner"}));
    assert_eq!(error_desc(&r), "Node inner is not owned by the monitor");
    // Deleting the parent first frees the child.
    assert_eq!(
        q.execute("blockdev-del", json!({"node-name": "r0"})),
        json!({"return": {}})
    );
    assert_eq!(
        q.execute("x-blockdev-del", json!({"node-name": "f0"})),
        json!({"return": {}})
    );
    assert_eq!(names(&nodes(&mut q)), ["r1", "inner"]);
}

#[test]
fn deleting_a_node_frees_its_named_inline_children() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    add_ok(
        &mut q,
        json!({"driver": "raw", "node-name": "r0",
               "file": {"driver": "null-co", "node-name": "inner"}}),
    );
    assert_eq!(
        q.execute("blockdev-del", json!({"node-name": "r0"})),
        json!({"return": {}})
    );
    assert!(nodes(&mut q).is_empty(), "inner goes with its parent");
    add_ok(&mut q, json!({"driver": "null-co", "node-name": "inner"}));
}

#[test]
fn drive_lists_its_auto_named_file_node_after_the_format_node() {
    let dir = common::TempDir::new();
    let raw = dir.0.join("a.img");
    std::fs::File::create(&raw).unwrap().set_len(4096).unwrap();
    let drive = format!("file={},format=raw,if=none,id=d0", raw.display());
    let b = Bulkhead::start(&["-drive", &drive]);
    let mut q = b.client();
    let list = nodes(&mut q);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["node-name"], "d0");
    assert_eq!(list[1]["drv"], "file");
    assert!(list[1]["node-name"].as_str().unwrap().starts_with("#block"));
}

#[test]
fn query_blockstats_lists_nodes_with_qemu_counters() {
    let b = Bulkhead::start(&[]);
    let img = raw_image(&b, "r.img", 1 << 20);
    let mut q = b.client();
    add_ok(
        &mut q,
        json!({"driver": "raw", "node-name": "r0",
               "file": {"driver": "file", "node-name": "f0", "filename": img}}),
    );
    assert_eq!(q.ok("query-blockstats"), json!([]), "no devices yet");
    let r = q.execute("query-blockstats", json!({"query-nodes": true}));
    let stats = r["return"].as_array().unwrap().clone();
    let order: Vec<&str> = stats
        .iter()
        .map(|s| s["node-name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["f0", "r0"], "creation order, as QEMU");
    let r0 = &stats[1];
    for k in [
        "rd_bytes",
        "wr_bytes",
        "rd_operations",
        "wr_operations",
        "flush_operations",
        "rd_total_time_ns",
        "wr_total_time_ns",
        "flush_total_time_ns",
        "wr_highest_offset",
        "rd_merged",
        "wr_merged",
        "failed_rd_operations",
        "invalid_rd_operations",
        "account_invalid",
        "account_failed",
        "timed_stats",
    ] {
        assert!(r0["stats"].get(k).is_some(), "{k} missing from {r0}");
    }
    assert_eq!(r0["stats"]["rd_bytes"], 0);
    assert_eq!(r0["parent"]["node-name"], "f0");
    assert_eq!(stats[0]["driver-specific"]["driver"], "file");
}

#[test]
fn query_block_is_empty_without_devices() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    add_ok(&mut q, json!({"driver": "null-co", "node-name": "n0"}));
    assert_eq!(q.ok("query-block"), json!([]));
}

#[test]
fn blockdev_and_drive_options_create_nodes_at_start_up() {
    let dir = common::TempDir::new();
    let raw = dir.0.join("a.img");
    std::fs::File::create(&raw).unwrap().set_len(4096).unwrap();
    let qcow = qcow2_image(&dir.0, "b.qcow2", "8M");
    let json_form = format!(
        r#"{{"driver":"raw","node-name":"j0","file":{{"driver":"file","filename":"{}"}}}}"#,
        raw.display()
    );
    let dotted = "driver=null-co,node-name=k0,size=1M".to_owned();
    let drive = format!(
        "file={},format=qcow2,if=none,id=drive0,readonly=on",
        qcow.display()
    );
    let b = Bulkhead::start(&[
        "-blockdev",
        &json_form,
        "-blockdev",
        &dotted,
        "-drive",
        &drive,
    ]);
    let mut q = b.client();
    let list = nodes(&mut q);
    assert_eq!(node(&list, "j0")["image"]["virtual-size"], 4096);
    assert_eq!(node(&list, "k0")["image"]["virtual-size"], 1 << 20);
    let d = node(&list, "drive0");
    assert_eq!(d["drv"], "qcow2");
    assert_eq!(d["ro"], true);
    assert_eq!(d["image"]["virtual-size"], 8 << 20);
}

#[test]
fn failing_blockdev_aborts_start_up_with_qemu_message() {
    // Builds the workers (the fixture does it once per test binary).
    drop(Bulkhead::start(&[]));
    let dir = common::TempDir::new();
    let sock = dir.0.join("q.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(["-serial", "null"])
        .args(["-blockdev", "driver=file,node-name=f0,filename=/nope"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("bulkhead started although its -blockdev cannot be opened");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(
            "-blockdev driver=file,node-name=f0,filename=/nope: \
             Could not open '/nope': No such file or directory"
        ),
        "stderr: {err}"
    );
}

fn block_proc_pid(b: &Bulkhead) -> u32 {
    let broker = b.child.as_ref().unwrap().id();
    let start = Instant::now();
    loop {
        if let Some((pid, _)) = common::children(broker)
            .into_iter()
            .find(|(_, c)| c == "block-proc")
        {
            return pid;
        }
        assert!(start.elapsed() < TIMEOUT, "no block-proc child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_node_is_replayed_into_a_restarted_block_worker() {
    let b = Bulkhead::start(&[]);
    let img = raw_image(&b, "r.img", 1 << 20);
    let qcow = qcow2_image(&b.dir.0, "d.qcow2", "16M");
    let mut q = b.client();
    add_raw_over_file(&mut q, &img);
    add_ok(
        &mut q,
        json!({"driver": "qcow2", "node-name": "q0",
               "file": {"driver": "file", "node-name": "qf", "filename": qcow}}),
    );
    add_ok(&mut q, json!({"driver": "null-co", "node-name": "n0"}));
    add_ok(&mut q, json!({"driver": "null-co", "node-name": "gone"}));
    assert_eq!(
        q.execute("blockdev-del", json!({"node-name": "gone"})),
        json!({"return": {}})
    );
    let before = nodes(&mut q);

    let pid = block_proc_pid(&b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    q.event("__org.bulkhead_WORKER_RESTARTED");

    let after = nodes(&mut q);
    assert_eq!(names(&after), ["n0", "q0", "qf", "r0", "f0"]);
    assert_eq!(after, before, "the restarted worker shows the same nodes");
    // The replayed graph keeps its rules: f0 is still in use by r0.
    let r = q.execute("blockdev-del", json!({"node-name": "f0"}));
    assert_eq!(error_desc(&r), "Block device f0 is in use");
}
