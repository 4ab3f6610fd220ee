//! File descriptor passing over QMP on the real `bulkhead`, as QEMU:
//! `getfd`/`closefd`, `add-fd`/`remove-fd`/`query-fdsets` with fds sent by
//! SCM_RIGHTS, and `/dev/fdset/N` as a `blockdev-add` file name, so a
//! management layer can hand the broker images it cannot open itself.
//! Which fds the broker holds is read from `/proc/PID/fd`. Needs /dev/kvm
//! (the broker always starts vcpu-proc).

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

/// A file of `size` bytes in the test's directory.
fn image(b: &Bulkhead, name: &str, size: u64) -> PathBuf {
    let p = b.dir.0.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn open_rw(p: &Path) -> OwnedFd {
    OwnedFd::from(OpenOptions::new().read(true).write(true).open(p).unwrap())
}

fn open_ro(p: &Path) -> OwnedFd {
    OwnedFd::from(File::open(p).unwrap())
}

/// What the broker's fds point at (`readlink /proc/PID/fd/N`), by number.
fn broker_fds(b: &Bulkhead) -> Vec<(i64, String)> {
    let pid = b.child.as_ref().unwrap().id();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n: i64 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// How many of the broker's fds point at `p`.
fn broker_holds(b: &Bulkhead, p: &Path) -> usize {
    let p = p.to_string_lossy();
    broker_fds(b)
        .iter()
        .filter(|(_, t)| *t == *p || *t == format!("{p} (deleted)"))
        .count()
}

fn error_desc(r: &Value) -> String {
    let (class, desc) = Qmp::error_of(r);
    assert_eq!(class, "GenericError", "{r}");
    desc
}

#[test]
fn getfd_and_add_fd_without_an_fd_fail_with_qemu_message() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    for (cmd, args) in [("getfd", json!({"fdname": "a"})), ("add-fd", Value::Null)] {
        let r = q.execute(cmd, args);
        assert_eq!(
            error_desc(&r),
            "No file descriptor supplied via SCM_RIGHTS",
            "{cmd}"
        );
    }
}

#[test]
fn getfd_keeps_the_fd_by_name_replaces_it_and_closefd_closes_it() {
    let b = Bulkhead::start(&[]);
    let one = image(&b, "one", 512);
    let two = image(&b, "two", 512);
    let mut q = b.client();

    let r = q.execute_with_fds("getfd", json!({"fdname": "a"}), &[open_rw(&one).as_fd()]);
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(broker_holds(&b, &one), 1);

    let r = q.execute_with_fds("getfd", json!({"fdname": "a"}), &[open_rw(&two).as_fd()]);
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(broker_holds(&b, &one), 0, "the replaced fd is closed");
    assert_eq!(broker_holds(&b, &two), 1);

    assert_eq!(
        q.execute("closefd", json!({"fdname": "a"})),
        json!({"return": {}})
    );
    assert_eq!(broker_holds(&b, &two), 0);
    let r = q.execute("closefd", json!({"fdname": "a"}));
    assert_eq!(error_desc(&r), "File descriptor named 'a' not found");
}

#[test]
fn getfd_with_a_digit_name_fails_and_closes_the_fd() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q = b.client();
    let r = q.execute_with_fds("getfd", json!({"fdname": "1a"}), &[open_rw(&f).as_fd()]);
    assert_eq!(
        error_desc(&r),
        "Parameter 'fdname' expects a name not starting with a digit"
    );
    assert_eq!(broker_holds(&b, &f), 0);
}

#[test]
fn named_fds_belong_to_their_session() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q1 = b.client();
    let mut q2 = b.client();
    let r = q1.execute_with_fds("getfd", json!({"fdname": "a"}), &[open_rw(&f).as_fd()]);
    assert_eq!(r, json!({"return": {}}));
    let r = q2.execute("closefd", json!({"fdname": "a"}));
    assert_eq!(error_desc(&r), "File descriptor named 'a' not found");
    assert_eq!(broker_holds(&b, &f), 1);
}

#[test]
fn fds_a_command_does_not_use_are_closed() {
    let b = Bulkhead::start(&[]);
    let used = image(&b, "used", 512);
    let extra = image(&b, "extra", 512);
    let ignored = image(&b, "ignored", 512);
    let mut q = b.client();
    let (u, e) = (open_rw(&used), open_rw(&extra));
    let r = q.execute_with_fds("getfd", json!({"fdname": "a"}), &[u.as_fd(), e.as_fd()]);
    assert_eq!(r, json!({"return": {}}));
    let i = open_rw(&ignored);
    let r = q.execute_with_fds("query-fdsets", Value::Null, &[i.as_fd()]);
    assert_eq!(r, json!({"return": []}));
    assert_eq!(broker_holds(&b, &used), 1);
    assert_eq!(broker_holds(&b, &extra), 0);
    assert_eq!(broker_holds(&b, &ignored), 0);
}

#[test]
fn add_fd_query_fdsets_remove_fd_round_trip() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q = b.client();

    let r = q.execute_with_fds(
        "add-fd",
        json!({"fdset-id": 3, "opaque": "hello"}),
        &[open_rw(&f).as_fd()],
    );
    let a = r["return"]["fd"].as_i64().unwrap();
    assert_eq!(r["return"]["fdset-id"], 3);
    let r = q.execute_with_fds("add-fd", json!({"fdset-id": 3}), &[open_ro(&f).as_fd()]);
    let c = r["return"]["fd"].as_i64().unwrap();
    let r = q.execute_with_fds("add-fd", Value::Null, &[open_ro(&f).as_fd()]);
    assert_eq!(r["return"]["fdset-id"], 0, "the lowest free id");
    let d = r["return"]["fd"].as_i64().unwrap();

    let fds = broker_fds(&b);
    let target = f.to_string_lossy().into_owned();
    for n in [a, c, d] {
        assert!(fds.contains(&(n, target.clone())), "fd {n} in {fds:?}");
    }
    assert_eq!(
        q.ok("query-fdsets"),
        json!([
            {"fds": [{"fd": a, "opaque": "hello"}, {"fd": c}], "fdset-id": 3},
            {"fds": [{"fd": d}], "fdset-id": 0},
        ])
    );

    assert_eq!(
        q.execute("remove-fd", json!({"fdset-id": 3, "fd": a})),
        json!({"return": {}})
    );
    assert_eq!(
        q.ok("query-fdsets"),
        json!([
            {"fds": [{"fd": c}], "fdset-id": 3},
            {"fds": [{"fd": d}], "fdset-id": 0},
        ])
    );
    assert_eq!(
        q.execute("remove-fd", json!({"fdset-id": 3})),
        json!({"return": {}})
    );
    assert_eq!(
        q.ok("query-fdsets"),
        json!([{"fds": [{"fd": d}], "fdset-id": 0}])
    );
    assert_eq!(broker_holds(&b, &f), 1, "only set 0's fd is left open");
}

#[test]
fn add_fd_and_remove_fd_errors_use_qemu_messages() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q = b.client();
    let r = q.execute_with_fds("add-fd", json!({"fdset-id": -1}), &[open_rw(&f).as_fd()]);
    assert_eq!(
        error_desc(&r),
        "Parameter 'fdset-id' expects a non-negative value"
    );
    assert_eq!(broker_holds(&b, &f), 0, "the refused fd is closed");
    let r = q.execute("remove-fd", json!({"fdset-id": 42}));
    assert_eq!(
        error_desc(&r),
        "File descriptor named 'fdset-id:42' not found"
    );
    let r = q.execute_with_fds("add-fd", json!({"fdset-id": 0}), &[open_rw(&f).as_fd()]);
    assert!(r.get("return").is_some(), "{r}");
    let r = q.execute("remove-fd", json!({"fdset-id": 0, "fd": 9999}));
    assert_eq!(
        error_desc(&r),
        "File descriptor named 'fdset-id:0, fd:9999' not found"
    );
}

#[test]
fn fd_sets_are_shared_by_sessions() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q1 = b.client();
    let mut q2 = b.client();
    let r = q1.execute_with_fds("add-fd", json!({"fdset-id": 2}), &[open_rw(&f).as_fd()]);
    let fd = r["return"]["fd"].as_i64().unwrap();
    assert_eq!(
        q2.ok("query-fdsets"),
        json!([{"fds": [{"fd": fd}], "fdset-id": 2}])
    );
}

/// The issue's acceptance test: the image's path is gone, so only the fd
/// passed with add-fd reaches it.
#[test]
fn blockdev_add_through_dev_fdset_works_while_the_path_cannot_be_opened() {
    let b = Bulkhead::start(&[]);
    let img = image(&b, "gone.img", 1 << 20);
    let fd = open_rw(&img);
    std::fs::remove_file(&img).unwrap();
    let mut q = b.client();

    let r = q.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "p0",
               "file": {"driver": "file", "filename": img}}),
    );
    assert_eq!(
        error_desc(&r),
        format!(
            "Could not open '{}': No such file or directory",
            img.display()
        )
    );

    let r = q.execute_with_fds("add-fd", json!({"fdset-id": 5}), &[fd.as_fd()]);
    assert_eq!(r["return"]["fdset-id"], 5, "{r}");
    drop(fd);
    let r = q.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "d0",
               "file": {"driver": "file", "filename": "/dev/fdset/5"}}),
    );
    assert_eq!(r, json!({"return": {}}));
    let nodes = q.ok("query-named-block-nodes");
    let d0 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "d0")
        .unwrap_or_else(|| panic!("d0 not listed: {nodes}"));
    assert_eq!(d0["ro"], false);
    assert_eq!(d0["image"]["virtual-size"], 1 << 20);

    // The node keeps its own copy: removing the set does not close it.
    assert_eq!(
        q.execute("remove-fd", json!({"fdset-id": 5})),
        json!({"return": {}})
    );
    let nodes = q.ok("query-named-block-nodes");
    assert!(nodes
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["node-name"] == "d0"));
}

#[test]
fn read_only_fd_is_refused_for_a_read_write_node_and_accepted_read_only() {
    let b = Bulkhead::start(&[]);
    let img = image(&b, "ro.img", 1 << 20);
    let mut q = b.client();
    let r = q.execute_with_fds("add-fd", json!({"fdset-id": 7}), &[open_ro(&img).as_fd()]);
    assert!(r.get("return").is_some(), "{r}");

    let r = q.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "w0",
               "file": {"driver": "file", "filename": "/dev/fdset/7"}}),
    );
    assert_eq!(
        error_desc(&r),
        "Failed to find file descriptor with matching flags=0x2"
    );

    let r = q.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "r0", "read-only": true,
               "file": {"driver": "file", "filename": "/dev/fdset/7"}}),
    );
    assert_eq!(r, json!({"return": {}}));
}

#[test]
fn dev_fdset_names_of_unknown_or_malformed_sets_fail_with_qemu_messages() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    for (name, msg) in [
        ("/dev/fdset/9", "Failed to find fdset /dev/fdset/9"),
        ("/dev/fdset/x", "Could not parse fdset /dev/fdset/x"),
        ("/dev/fdset/", "Could not parse fdset /dev/fdset/"),
    ] {
        let r = q.execute(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "n0",
                   "file": {"driver": "file", "filename": name}}),
        );
        assert_eq!(error_desc(&r), msg, "{name}");
    }
}

#[test]
fn fds_sent_by_themselves_wait_for_the_next_message() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q = b.client();
    let fd = open_rw(&f);
    // The first part of the message carries the fd; the rest follows.
    q.send_with_fds(br#"{"execute": "getfd", "#, &[fd.as_fd()]);
    q.send_raw(br#""arguments": {"fdname": "late"}}"#);
    assert_eq!(q.reply(), json!({"return": {}}));
    assert_eq!(broker_holds(&b, &f), 1);
}

/// QEMU's Python library (`qemu.qmp`, `send_fd_scm`) sends each fd with a
/// lone space, then the command in a separate write.
#[test]
fn fd_sent_with_a_lone_space_before_the_command_reaches_it() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q = b.client();
    let fd = open_rw(&f);
    q.send_with_fds(b" ", &[fd.as_fd()]);
    let r = q.execute("add-fd", json!({"fdset-id": 1, "opaque": "lib"}));
    let n = r["return"]["fd"].as_i64().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        q.ok("query-fdsets"),
        json!([{"fds": [{"fd": n, "opaque": "lib"}], "fdset-id": 1}])
    );
}

#[test]
fn named_fds_are_closed_when_their_session_ends() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let mut q = b.client();
    let r = q.execute_with_fds("getfd", json!({"fdname": "a"}), &[open_rw(&f).as_fd()]);
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(broker_holds(&b, &f), 1);
    drop(q);
    let start = std::time::Instant::now();
    while broker_holds(&b, &f) != 0 {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "the session's fd was never closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The status flags of the broker's fd `fd` (`/proc/PID/fdinfo`).
fn broker_fd_flags(b: &Bulkhead, fd: i64) -> i32 {
    let pid = b.child.as_ref().unwrap().id();
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let octal = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    i32::from_str_radix(octal, 8).unwrap()
}

#[test]
fn direct_node_through_dev_fdset_gets_o_direct_like_qemu_dup_flags() {
    let b = Bulkhead::start(&[]);
    let img = image(&b, "direct.img", 1 << 20);
    let mut q = b.client();
    let r = q.execute_with_fds("add-fd", json!({"fdset-id": 2}), &[open_rw(&img).as_fd()]);
    let set_fd = r["return"]["fd"].as_i64().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(broker_fd_flags(&b, set_fd) & libc::O_DIRECT, 0);

    let r = q.execute(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "d0",
               "file": {"driver": "file", "filename": "/dev/fdset/2",
                        "cache": {"direct": true}}}),
    );
    assert_eq!(r, json!({"return": {}}));
    // The copy shares the set's open file description, so O_DIRECT shows
    // on the set's fd too (as in QEMU).
    assert_ne!(broker_fd_flags(&b, set_fd) & libc::O_DIRECT, 0);
}

#[test]
fn fds_sent_before_negotiation_are_refused_and_closed() {
    let b = Bulkhead::start(&[]);
    let f = image(&b, "f", 512);
    let (mut q, _) = b.connect();
    let r = q.execute_with_fds("getfd", json!({"fdname": "a"}), &[open_rw(&f).as_fd()]);
    assert_eq!(
        Qmp::error_of(&r),
        (
            "CommandNotFound".to_owned(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".to_owned()
        )
    );
    assert_eq!(broker_holds(&b, &f), 0);
}

#[test]
fn add_fd_on_the_command_line_feeds_a_blockdev_through_dev_fdset() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    common::require_kvm();
    let dir = common::TempDir::new();
    let img = dir.0.join("inherited.img");
    File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let fd = open_rw(&img);
    // The path disappears: only the inherited fd reaches the image.
    std::fs::remove_file(&img).unwrap();
    let raw = fd.as_raw_fd();
    let sock = dir.0.join("q.sock");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(["-serial", "null", "-m", "32M", "-add-fd", "fd=20,set=7,opaque=disk"])
        .args(["-blockdev", r#"{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"/dev/fdset/7"}}"#])
        .stdin(std::process::Stdio::null());
    // SAFETY: dup2 in the forked child before exec; `raw` is open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 20) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let b = Bulkhead {
        child: Some(child),
        sock: sock.clone(),
        dir: common::TempDir::new(),
    };
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "QMP socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut c = b.client();
    let sets = c.ok("query-fdsets");
    assert_eq!(sets[0]["fdset-id"], json!(7), "{sets}");
    assert_eq!(sets[0]["fds"][0]["opaque"], "disk");
    let nodes = c.ok("query-named-block-nodes");
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node-name"] == "d0"),
        "{nodes}"
    );
    drop(dir);
}

#[test]
fn add_fd_of_a_closed_fd_aborts_start_up_with_qemu_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["-serial", "null", "-add-fd", "fd=77,set=1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-add-fd"), "{err}");
}
