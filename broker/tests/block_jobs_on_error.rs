//! `on-target-error` of `blockdev-mirror` and `on-error` of `block-stream`
//! with a real error: the mirror's target, or the streamed top image,
//! lives on a 2 MiB tmpfs, so copying 8 MiB of data runs out of space
//! (ENOSPC) part way. Each policy is run on bulkhead and on
//! qemu-storage-daemon with the same images and commands, and the event
//! sequences are compared (an error event already seen is folded: how
//! many copies fail before the job reacts depends on how many are in
//! flight). `stop`/`enospc` pause the job with `io-status: nospace`; once
//! the tmpfs is grown (`mount -o remount,size=`) `block-job-resume` lets
//! it finish. A mirror with `ignore` goes on and reaches READY once space
//! is freed; a stream with `ignore` skips what it could not copy and ends
//! with the error, keeping the backing file. Needs root (mount),
//! qemu-img, qemu-io and qemu-storage-daemon.

mod common;
mod disk_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::qemu::Peer;
use common::Qmp;
use disk_common::*;
use serde_json::{json, Value};

/// Size of the source and target images.
const DISK: u64 = 8 << 20;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", p(at)],
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        run(
            "mount",
            &["-o", &format!("remount,size={size}"), p(&self.0)],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a peer still holding the file must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The job under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `blockdev-mirror` (sync full) of a raw source to a raw target on
    /// the tmpfs.
    Mirror,
    /// `block-stream` of a qcow2 top on the tmpfs over a full qcow2 base.
    Stream,
}

/// One side of the comparison: its images and tmpfs.
struct Side {
    kind: Kind,
    /// The data: the mirror's source or the stream's base.
    src: PathBuf,
    /// What is written: the mirror's target or the stream's top.
    tgt: PathBuf,
    tmpfs: Tmpfs,
}

impl Side {
    /// `src` full of data (no zero cluster to skip) and an empty `tgt`
    /// on a 2 MiB tmpfs, under `dir/name`.
    fn new(dir: &Path, name: &str, kind: Kind) -> Side {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let fmt = match kind {
            Kind::Mirror => "raw",
            Kind::Stream => "qcow2",
        };
        let src = d.join(format!("src.{fmt}"));
        let size = DISK.to_string();
        run("qemu-img", &["create", "-q", "-f", fmt, p(&src), &size]);
        run(
            "qemu-io",
            &["-f", fmt, "-c", &format!("write -P 0x5a 0 {DISK}"), p(&src)],
        );
        let tmpfs = Tmpfs::mount(&d.join("small"), "2M");
        let tgt = tmpfs.0.join(format!("tgt.{fmt}"));
        match kind {
            Kind::Mirror => run("qemu-img", &["create", "-q", "-f", fmt, p(&tgt), &size]),
            Kind::Stream => run(
                "qemu-img",
                &["create", "-q", "-f", fmt, "-b", p(&src), "-F", fmt, p(&tgt)],
            ),
        };
        Side {
            kind,
            src,
            tgt,
            tmpfs,
        }
    }

    /// Adds the nodes and starts the job with `policy`.
    fn start_job(&self, q: &mut Qmp, policy: &str) {
        let add = |q: &mut Qmp, driver: &str, name: &str, path: &Path| {
            let r = q.execute(
                "blockdev-add",
                json!({"driver": driver, "node-name": name,
                       "file": {"driver": "file", "filename": p(path)}}),
            );
            assert_eq!(r["return"], json!({}), "{r}");
        };
        let r = match self.kind {
            Kind::Mirror => {
                add(q, "raw", "src", &self.src);
                add(q, "raw", "tgt", &self.tgt);
                q.execute(
                    "blockdev-mirror",
                    json!({"job-id": "m", "device": "src", "target": "tgt", "sync": "full",
                           "on-target-error": policy}),
                )
            }
            Kind::Stream => {
                add(q, "qcow2", "top", &self.tgt);
                q.execute(
                    "block-stream",
                    json!({"job-id": "m", "device": "top", "on-error": policy}),
                )
            }
        };
        assert_eq!(r["return"], json!({}), "{r}");
    }

    /// Closes the nodes (the images' metadata caches are written out),
    /// then compares the data and, for a stream, notes whether the top
    /// kept its backing file.
    fn close_and_check(&self, q: &mut Qmp, seen: &mut Vec<Value>) {
        self.close(q, seen, true);
    }

    /// [`Side::close_and_check`], comparing the data only if `same`.
    fn close(&self, q: &mut Qmp, seen: &mut Vec<Value>, same: bool) {
        let nodes: &[&str] = match self.kind {
            Kind::Mirror => &["tgt", "src"],
            Kind::Stream => &["top"],
        };
        for n in nodes {
            let r = q.execute("blockdev-del", json!({"node-name": n}));
            assert_eq!(r["return"], json!({}), "{r}");
        }
        if self.kind == Kind::Stream {
            seen.push(self.backing());
        }
        if same {
            assert_qemu_img_compare(&self.src, &self.tgt);
        }
    }

    /// Whether the stream's top still has its backing file.
    fn backing(&self) -> Value {
        let out = run("qemu-img", &["info", "-U", "--output=json", p(&self.tgt)]);
        let v: Value = serde_json::from_str(&out).unwrap();
        json!(["backing", v.get("backing-filename").is_some()])
    }
}

/// The next event, from those kept aside first.
fn next_event(q: &mut Qmp) -> Value {
    if let Some(e) = q.events.pop_front() {
        return e;
    }
    loop {
        let v = q.recv();
        if v.get("event").is_some() {
            return v;
        }
    }
}

/// An event without what differs between runs (timestamps, progress).
fn essence(e: &Value) -> Value {
    let name = e["event"].as_str().unwrap_or_default();
    let d = &e["data"];
    match name {
        "JOB_STATUS_CHANGE" => json!([name, d["status"]]),
        "BLOCK_JOB_ERROR" => json!([name, d["device"], d["operation"], d["action"]]),
        "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_READY" => {
            json!([name, d["device"], d["type"], d.get("error")])
        }
        _ => json!([name]),
    }
}

/// Appends to `seen` the events until one satisfies `last` (included),
/// in essence; a BLOCK_JOB_ERROR already in `seen` is folded.
fn events_until(q: &mut Qmp, seen: &mut Vec<Value>, last: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "events so far: {seen:?}");
        let e = next_event(q);
        let done = last(&e);
        let s = essence(&e);
        if e["event"] != "BLOCK_JOB_ERROR" || !seen.contains(&s) {
            seen.push(s);
        }
        if done {
            return;
        }
    }
}

fn status(s: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == "JOB_STATUS_CHANGE" && e["data"]["status"] == s
}

fn is(name: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == name
}

fn job(q: &mut Qmp) -> Value {
    let r = q.execute("query-block-jobs", Value::Null);
    r["return"]
        .as_array()
        .and_then(|a| a.iter().find(|j| j["device"] == "m").cloned())
        .unwrap_or(Value::Null)
}

/// The job's view that must match: status, paused, io-status.
fn job_state(q: &mut Qmp) -> Value {
    let j = job(q);
    json!([j["status"], j["paused"], j["io-status"]])
}

/// Runs `policy` on both peers up to the point `scenario` drives them to,
/// and compares what each saw.
fn compare(kind: Kind, policy: &str, scenario: impl Fn(&mut Qmp, &Side) -> Vec<Value>) {
    let dir = common::TempDir::new();
    let theirs_side = Side::new(&dir.0, "qsd", kind);
    let ours_side = Side::new(&dir.0, "bulkhead", kind);
    let (_qsd, mut qsd) = Peer::qsd(&dir.0.join("qsd.sock"), &[]);
    // The stream's base is outside the top's directory (the tmpfs).
    let images = dir.0.join("bulkhead");
    let b = common::Bulkhead::start(&["-S", "-m", "32M", "-x-bulkhead-image-dir", p(&images)]);
    let mut q = b.client();
    theirs_side.start_job(&mut qsd, policy);
    let theirs = scenario(&mut qsd, &theirs_side);
    ours_side.start_job(&mut q, policy);
    let ours = scenario(&mut q, &ours_side);
    assert_eq!(
        ours,
        theirs,
        "{} {policy}\n bulkhead: {ours:#?}\n qsd: {theirs:#?}",
        match kind {
            Kind::Mirror => "mirror on-target-error",
            Kind::Stream => "stream on-error",
        }
    );
}

/// report: the job fails with the error (a stream keeps its backing, so
/// its top still reads as the base).
fn report(q: &mut Qmp, side: &Side) -> Vec<Value> {
    let mut seen = Vec::new();
    events_until(q, &mut seen, status("null"));
    side.close(q, &mut seen, side.kind == Kind::Stream);
    seen
}

/// stop/enospc: the job pauses with `nospace`; grown tmpfs + resume →
/// it finishes (a mirror: READY, then cancel → a consistent copy).
fn stop_then_resume(q: &mut Qmp, side: &Side) -> Vec<Value> {
    let mut seen = Vec::new();
    events_until(q, &mut seen, status("paused"));
    // The paused job reports the error in query-block-jobs.
    seen.push(json!(["state", job_state(q)]));
    side.tmpfs.resize("64M");
    let r = q.execute("block-job-resume", json!({"device": "m"}));
    assert_eq!(r["return"], json!({}), "{r}");
    if side.kind == Kind::Mirror {
        events_until(q, &mut seen, is("BLOCK_JOB_READY"));
        seen.push(json!(["state", job_state(q)]));
        let r = q.execute("block-job-cancel", json!({"device": "m"}));
        assert_eq!(r["return"], json!({}), "{r}");
    }
    events_until(q, &mut seen, status("null"));
    side.close_and_check(q, &mut seen);
    seen
}

/// ignore: errors are reported and the job goes on. A mirror copies the
/// failed ranges again and reaches READY once space is freed; a stream
/// skips them and ends with the error, keeping its backing file.
fn ignore(q: &mut Qmp, side: &Side) -> Vec<Value> {
    let mut seen = Vec::new();
    if side.kind == Kind::Stream {
        events_until(q, &mut seen, status("null"));
        side.close_and_check(q, &mut seen);
        return seen;
    }
    events_until(q, &mut seen, is("BLOCK_JOB_ERROR"));
    seen.push(json!(["state", job_state(q)]));
    side.tmpfs.resize("64M");
    events_until(q, &mut seen, is("BLOCK_JOB_READY"));
    let r = q.execute("block-job-cancel", json!({"device": "m"}));
    assert_eq!(r["return"], json!({}), "{r}");
    events_until(q, &mut seen, status("null"));
    side.close_and_check(q, &mut seen);
    seen
}

#[test]
fn mirror_on_target_error_report_fails_the_job_on_enospc_as_qemu_does() {
    compare(Kind::Mirror, "report", report);
}

#[test]
fn mirror_on_target_error_stop_pauses_on_enospc_and_resumes_to_ready_as_qemu_does() {
    compare(Kind::Mirror, "stop", stop_then_resume);
}

#[test]
fn mirror_on_target_error_enospc_pauses_on_enospc_and_resumes_to_ready_as_qemu_does() {
    compare(Kind::Mirror, "enospc", stop_then_resume);
}

#[test]
fn mirror_on_target_error_ignore_goes_on_through_enospc_to_ready_as_qemu_does() {
    compare(Kind::Mirror, "ignore", ignore);
}

#[test]
fn stream_on_error_report_fails_the_job_on_enospc_and_keeps_the_backing_as_qemu_does() {
    compare(Kind::Stream, "report", report);
}

#[test]
fn stream_on_error_stop_pauses_on_enospc_and_resumes_to_a_flat_image_as_qemu_does() {
    compare(Kind::Stream, "stop", stop_then_resume);
}

#[test]
fn stream_on_error_enospc_pauses_on_enospc_and_resumes_to_a_flat_image_as_qemu_does() {
    compare(Kind::Stream, "enospc", stop_then_resume);
}

#[test]
fn stream_on_error_ignore_skips_what_failed_and_ends_with_the_error_keeping_the_backing_as_qemu_does(
) {
    compare(Kind::Stream, "ignore", ignore);
}

#[test]
fn a_mirror_stopped_by_enospc_stays_paused_through_a_block_proc_kill_and_resumes_to_ready() {
    let dir = common::TempDir::new();
    let side = Side::new(&dir.0, "bulkhead", Kind::Mirror);
    let b = common::Bulkhead::start(&["-S", "-m", "32M"]);
    let mut q = b.client();
    side.start_job(&mut q, "stop");
    let mut seen = Vec::new();
    events_until(&mut q, &mut seen, status("paused"));
    let paused = json!(["paused", true, "nospace"]);
    assert_eq!(job_state(&mut q), paused);

    // The pause is the broker's: the restarted block-proc gets the job
    // back paused, and it stays so.
    let pid = block_proc_pid(common::broker_pid(&b)).expect("block-proc");
    sigkill(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while block_proc_pid(common::broker_pid(&b)).is_none_or(|p| p == pid) {
        assert!(Instant::now() < deadline, "block-proc not restarted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(job_state(&mut q), paused);
    // A job that ran again would have hit the full tmpfs again.
    assert!(
        !q.events.iter().any(|e| e["event"] == "BLOCK_JOB_ERROR"),
        "{:?}",
        q.events
    );

    side.tmpfs.resize("64M");
    let r = q.execute("block-job-resume", json!({"device": "m"}));
    assert_eq!(r["return"], json!({}), "{r}");
    events_until(&mut q, &mut seen, is("BLOCK_JOB_READY"));
    let r = q.execute("block-job-cancel", json!({"device": "m"}));
    assert_eq!(r["return"], json!({}), "{r}");
    events_until(&mut q, &mut seen, status("null"));
    side.close_and_check(&mut q, &mut seen);
}
