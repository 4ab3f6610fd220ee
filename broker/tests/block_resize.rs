//! `block_resize` on the real `bulkhead` with a guest doing verified I/O
//! (`blk-loop`) on a raw disk: the node, its file and `query-block` show
//! the new size, the guest keeps going, and the size (held by the file)
//! survives a SIGKILL of block-proc. Argument errors are compared with
//! `qemu-storage-daemon` on the same images and inputs. Needs /dev/kvm and
//! qemu-storage-daemon.

mod common;
mod disk_common;

use std::path::Path;
use std::process::Command;

use common::qemu::Peer;
use common::{Bulkhead, Qmp};
use disk_common::*;
use serde_json::{json, Value};

fn virtual_size(q: &mut Qmp, device: &str) -> u64 {
    let v = q.ok("query-block");
    let d = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["qdev"] == device || d["device"] == device)
        .unwrap_or_else(|| panic!("no {device} in {v}"));
    d["inserted"]["image"]["virtual-size"].as_u64().unwrap()
}

fn error(r: &Value) -> Value {
    r.get("error").cloned().unwrap_or_else(|| r.clone())
}

/// The line the blk guests print when a config-change interrupt shows
/// them a new capacity.
fn config_change_line(bytes: u64) -> String {
    format!("blk: config change, capacity {} sectors", bytes / 512)
}

#[test]
fn a_running_guest_gets_a_config_interrupt_with_the_new_capacity_before_and_after_a_block_proc_kill(
) {
    let LoopGuest {
        mut q,
        b,
        serial,
        dir: _dir,
        ..
    } = start_blk_loop("raw", 1);

    // block-proc sends CONFIG_CHANGE_MSG on the backend request channel;
    // vcpu-proc fetches the config space and interrupts the guest, which
    // reads the capacity again. No reconnection is involved.
    let bigger = IMAGE_BYTES * 2;
    let r = q.execute("block_resize", json!({"node-name": "d0", "size": bigger}));
    assert_eq!(r["return"], json!({}), "{r}");
    serial.wait_for(&config_change_line(bigger));
    assert!(
        block_proc_pid(common::broker_pid(&b)).is_some(),
        "block-proc is the first one"
    );
    let done = serial.passes();
    serial.wait_passes(done + 1);

    // The channel is set up again with the restarted backend.
    kill_block_proc_and_wait_restart(&b, &mut q);
    let done = serial.passes();
    serial.wait_passes(done + 1);
    let biggest = IMAGE_BYTES * 3;
    let r = q.execute("block_resize", json!({"node-name": "d0", "size": biggest}));
    assert_eq!(r["return"], json!({}), "{r}");
    serial.wait_for(&config_change_line(biggest));
    let done = serial.passes();
    serial.wait_passes(done + 1);
    let t = serial.text();
    assert_eq!(t.matches("config change").count(), 2, "{t}");
}

#[test]
fn growing_a_raw_disk_under_a_running_guest_shows_the_new_size_and_survives_a_block_proc_kill() {
    let LoopGuest {
        mut q,
        b,
        serial,
        img,
        dir: _dir,
    } = start_blk_loop("raw", 1);
    assert_eq!(virtual_size(&mut q, "vda"), IMAGE_BYTES);

    let bigger = IMAGE_BYTES * 2;
    let r = q.execute("block_resize", json!({"node-name": "d0", "size": bigger}));
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(virtual_size(&mut q, "vda"), bigger);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), bigger);
    let done = serial.passes();
    serial.wait_passes(done + 2);

    // The size is the file's: a restarted block-proc reads it back.
    kill_block_proc_and_wait_restart(&b, &mut q);
    assert_eq!(virtual_size(&mut q, "vda"), bigger);
    let done = serial.passes();
    serial.wait_passes(done + 2);

    // Shrinking back is allowed on raw, as in QEMU.
    let r = q.execute(
        "block_resize",
        json!({"node-name": "d0", "size": IMAGE_BYTES}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(virtual_size(&mut q, "vda"), IMAGE_BYTES);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), IMAGE_BYTES);
    let done = serial.passes();
    serial.wait_passes(done + 1);
}

#[test]
fn block_resize_errors_match_qemu_storage_daemon() {
    let dir = common::TempDir::new();
    let ours_img = raw_image_named(&dir.0, "ours.raw");
    let theirs_img = raw_image_named(&dir.0, "theirs.raw");
    let q2 = |name: &str| {
        let p = dir.0.join(name);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&p)
            .arg("1M")
            .output()
            .expect("qemu-img is needed");
        assert!(out.status.success());
        p
    };
    let (ours_q, theirs_q) = (q2("ours.qcow2"), q2("theirs.qcow2"));
    let blockdevs = |raw: &Path, qcow2: &Path| -> Vec<String> {
        vec![
            "--blockdev".into(),
            format!("driver=file,filename={},node-name=rf", raw.display()),
            "--blockdev".into(),
            "driver=raw,file=rf,node-name=r".into(),
            "--blockdev".into(),
            format!("driver=file,filename={},node-name=qf", qcow2.display()),
            "--blockdev".into(),
            "driver=qcow2,file=qf,node-name=q".into(),
        ]
    };
    let (_qsd, mut qsd) = Peer::qsd(&dir.0.join("qsd.sock"), &blockdevs(&theirs_img, &theirs_q));
    let ours_args: Vec<String> = blockdevs(&ours_img, &ours_q)
        .into_iter()
        .map(|a| a.replacen("--", "-", 1))
        .collect();
    let mut all: Vec<&str> = vec!["-S"];
    all.extend(ours_args.iter().map(String::as_str));
    let b = Bulkhead::start(&all);
    let mut q = b.client();
    for c in [
        json!({"device": "nope", "size": 2097152}),
        json!({"node-name": "nope", "size": 2097152}),
        json!({"size": 2097152}),
        json!({"device": "r", "size": 2097152}),
        json!({"node-name": "r"}),
        json!({"node-name": "r", "size": "x"}),
        json!({"node-name": "r", "size": 1.5}),
        json!({"node-name": "r", "size": -1}),
        json!({"node-name": "r", "size": 1, "x": 1}),
        json!({"node-name": "q", "size": 1000}),
        json!({"node-name": "r", "size": 1000}),
        json!({"node-name": "r", "size": 2097152}),
        json!({"node-name": "rf", "size": 3145728}),
    ] {
        let ours = error(&q.execute("block_resize", c.clone()));
        let theirs = error(&qsd.execute("block_resize", c.clone()));
        assert_eq!(ours, theirs, "{c}");
    }
    assert_eq!(std::fs::metadata(&ours_img).unwrap().len(), 3145728);
    let size_of = |q: &mut Qmp, node: &str| -> Value {
        q.ok("query-named-block-nodes")
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == node)
            .unwrap()["image"]["virtual-size"]
            .clone()
    };
    // Resizing the file under the raw node leaves the raw node's size as
    // it was, in QEMU too.
    for node in ["r", "rf"] {
        assert_eq!(size_of(&mut q, node), size_of(&mut qsd, node), "{node}");
    }

    // Nor does it resize dirty bitmaps (QEMU does): a node with one (or
    // over one) refuses rather than stop tracking writes past the bitmap.
    let r = q.execute(
        "block-dirty-bitmap-add",
        json!({"node": "rf", "name": "b0"}),
    );
    assert_eq!(r["return"], json!({}), "{r}");
    for node in ["r", "rf"] {
        let r = q.execute("block_resize", json!({"node-name": node, "size": 4194304}));
        let (_, desc) = Qmp::error_of(&r);
        assert!(desc.contains("dirty bitmaps"), "{desc}");
    }
    assert_eq!(std::fs::metadata(&ours_img).unwrap().len(), 3145728);
}

/// `dir/base.qcow2` (4 MiB of data) under `dir/top.qcow2` (2 MiB).
fn short_top_over_a_longer_base(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let (base, top) = (dir.join("base.qcow2"), dir.join("top.qcow2"));
    let img = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "4M"]);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 4M",
            base.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        top.to_str().unwrap(),
        "2M",
    ]);
    top
}

#[test]
fn qcow2_grows_and_shrinks_as_in_qemu_storage_daemon_zero_filled_over_a_longer_backing() {
    let dir = common::TempDir::new();
    let ours = short_top_over_a_longer_base(&dir.0.join("ours"));
    let theirs = short_top_over_a_longer_base(&dir.0.join("theirs"));
    let node = |img: &Path| {
        format!(
            r#"{{"driver":"qcow2","node-name":"q","file":{{"driver":"file","filename":"{}"}}}}"#,
            img.display()
        )
    };
    let (qsd_proc, mut qsd) = Peer::qsd(
        &dir.0.join("qsd.sock"),
        &["--blockdev".into(), node(&theirs)],
    );
    let b = Bulkhead::start(&["-S", "-blockdev", &node(&ours)]);
    let mut q = b.client();
    let size_of = |q: &mut Qmp| -> Value {
        q.ok("query-named-block-nodes")
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == "q")
            .unwrap()["image"]["virtual-size"]
            .clone()
    };
    // Grow past the base's data (which must not show through), shrink
    // into the grown part, grow again.
    for size in [6 << 20, 3 << 20, 5 << 20] {
        let c = json!({"node-name": "q", "size": size});
        let r = q.execute("block_resize", c.clone());
        assert_eq!(r, qsd.execute("block_resize", c.clone()), "{c}");
        assert_eq!(r["return"], json!({}), "{c}: {r}");
        assert_eq!(size_of(&mut q), json!(size));
    }
    // The size is the image's: a restarted block-proc reads it back.
    kill_block_proc_and_wait_restart(&b, &mut q);
    assert_eq!(size_of(&mut q), json!(5 << 20));
    assert_eq!(size_of(&mut qsd), json!(5 << 20));

    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    drop(b);
    drop(qsd_proc);
    let check = |img: &Path| {
        let out = Command::new("qemu-img")
            .args(["check", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {out:?}", img.display());
    };
    check(&ours);
    check(&theirs);
    // Same contents: the base's data up to 2 MiB, zeroes after.
    let out = Command::new("qemu-img")
        .args(["compare", ours.to_str().unwrap(), theirs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "read -P 0 2M 3M",
            ours.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "{text}"
    );
}

/// Beyond QEMU: QEMU 10 resizes an image with internal snapshots;
/// bulkhead's qcow2 driver (imago) does not know them, so it refuses and
/// leaves the image as it was.
#[test]
fn a_qcow2_image_with_internal_snapshots_is_refused_and_left_intact() {
    let dir = common::TempDir::new();
    let mut node = Vec::new();
    for side in ["ours", "theirs"] {
        let img = short_top_over_a_longer_base(&dir.0.join(side));
        let out = Command::new("qemu-img")
            .args(["snapshot", "-c", "s1", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        node.push(format!(
            r#"{{"driver":"qcow2","node-name":"q","file":{{"driver":"file","filename":"{}"}}}}"#,
            img.display()
        ));
    }
    let (_qsd, mut qsd) = Peer::qsd(
        &dir.0.join("qsd.sock"),
        &["--blockdev".into(), node[1].clone()],
    );
    let b = Bulkhead::start(&["-S", "-blockdev", &node[0]]);
    let mut q = b.client();
    let c = json!({"node-name": "q", "size": 4 << 20});
    let theirs = qsd.execute("block_resize", c.clone());
    assert_eq!(theirs["return"], json!({}), "{theirs}");
    let (class, desc) = Qmp::error_of(&q.execute("block_resize", c));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("internal snapshots"), "{desc}");
    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    drop(b);
    let ours = dir.0.join("ours/top.qcow2");
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", ours.to_str().unwrap()])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], json!(2 << 20), "{info}");
    let out = Command::new("qemu-img")
        .args(["check", ours.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_qcow2_disk_grows_under_a_guest_doing_verified_io_which_sees_the_new_capacity() {
    let LoopGuest {
        mut q,
        b,
        serial,
        img,
        dir: _dir,
    } = start_blk_loop("qcow2", 1);
    // The resize waits for the guest's requests in flight, then runs
    // alone; the guest goes on and is told.
    let bigger = IMAGE_BYTES * 4;
    let r = q.execute("block_resize", json!({"node-name": "d0", "size": bigger}));
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(virtual_size(&mut q, "vda"), bigger);
    serial.wait_for(&config_change_line(bigger));
    let done = serial.passes();
    serial.wait_passes(done + 2);
    assert_eq!(q.execute("quit", json!(null)), json!({"return": {}}));
    drop(b);
    assert_qemu_img_check(&img, "qcow2");
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", img.to_str().unwrap()])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], json!(bigger), "{info}");
}
