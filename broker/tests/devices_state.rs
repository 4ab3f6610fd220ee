//! Snapshot/restore of a whole VM from QMP, end to end: the `ticker` test
//! guest runs with its RAM in a `memory-backend-file` on tmpfs, is saved
//! with `stop` + `xen-save-devices-state`, the broker quits, and a new
//! broker with the same memory file and `-incoming defer` loads the state
//! with `xen-load-devices-state`: the guest goes on counting (no boot
//! banner again, the next tick after the last one) and passes. Corrupt,
//! truncated, foreign and missing state files are refused with a clear
//! error and start nothing; the errors QEMU 10 also gives are compared with
//! `qemu-system-x86_64`. The restored broker takes the RAM file as
//! `-object memory-backend-file` in one test and as `-mem-path` in the
//! other. Needs /dev/kvm.

mod common;
mod disk_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::locks::held;
use common::{Bulkhead, Qmp, TempDir};
use disk_common::{guest, SerialLog};
use serde_json::{json, Value};

/// A guest-RAM file on tmpfs, removed on drop.
struct MemFile(PathBuf);

impl MemFile {
    fn new(dir: &TempDir) -> Self {
        let name = dir.0.file_name().unwrap().to_string_lossy().into_owned();
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm } else { dir.0.as_path() };
        MemFile(base.join(format!("{name}-ram")))
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts `ticker` with 64 MiB of RAM in `mem`, COM1 into `log`, `extra`.
fn start_ticker(mem: &MemFile, log: &SerialLog, extra: &[&str]) -> Bulkhead {
    let kernel = guest("ticker");
    let serial = format!("file:{}", log.0.display());
    let object = format!(
        "memory-backend-file,id=ram,size=64M,mem-path={},share=on",
        mem.0.display()
    );
    let mut args = vec![
        "-kernel",
        kernel.as_str(),
        "-serial",
        serial.as_str(),
        "-m",
        "64M",
        "-object",
        object.as_str(),
        "-machine",
        "microvm,memory-backend=ram",
    ];
    args.extend_from_slice(extra);
    Bulkhead::start(&args)
}

/// Starts `ticker` with its 64 MiB of RAM in `-mem-path FILE`.
fn start_ticker_mem_path(mem: &MemFile, log: &SerialLog, extra: &[&str]) -> Bulkhead {
    let kernel = guest("ticker");
    let serial = format!("file:{}", log.0.display());
    let path = mem.0.to_str().unwrap();
    let mut args = vec![
        "-kernel",
        kernel.as_str(),
        "-serial",
        serial.as_str(),
        "-m",
        "64M",
        "-mem-path",
        path,
    ];
    args.extend_from_slice(extra);
    Bulkhead::start(&args)
}

/// The numbers of the `tick N` lines in `text`.
fn ticks(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn status(q: &mut Qmp) -> String {
    q.ok("query-status")["status"].as_str().unwrap().to_owned()
}

fn ok_with(q: &mut Qmp, name: &str, args: Value) {
    let r = q.execute(name, args.clone());
    assert_eq!(r["return"], json!({}), "{name} {args}: {r}");
}

fn error_with(q: &mut Qmp, name: &str, args: Value) -> String {
    let r = q.execute(name, args);
    let (class, desc) = Qmp::error_of(&r);
    assert_eq!(class, "GenericError", "{r}");
    desc
}

/// A ticker run to its 50th tick, saved while running once (the VM goes
/// on), then stopped and saved into `state`; the broker quits. Returns the
/// last tick it printed.
fn run_and_save(dir: &TempDir, mem: &MemFile, state: &Path) -> u32 {
    let log = SerialLog(dir.0.join("first.log"));
    let mut b = start_ticker(mem, &log, &[]);
    let mut q = b.client();
    log.wait_for("tick 50 ");
    // A save while running stops the VM for the capture and resumes it.
    let scratch = dir.0.join("while-running.state");
    ok_with(
        &mut q,
        "xen-save-devices-state",
        json!({"filename": scratch}),
    );
    q.event("STOP");
    q.event("RESUME");
    assert_eq!(status(&mut q), "running");
    assert!(std::fs::metadata(&scratch).unwrap().len() > 0);

    ok_with(&mut q, "stop", Value::Null);
    q.event("STOP");
    ok_with(
        &mut q,
        "xen-save-devices-state",
        json!({"filename": state, "live": false}),
    );
    assert_eq!(status(&mut q), "paused");
    let last = *ticks(&log.text()).last().unwrap();
    assert!(
        !log.has("VERDICT"),
        "the guest finished before it was saved"
    );
    ok_with(&mut q, "quit", Value::Null);
    assert!(b.wait_exit().success());
    last
}

/// Waits until `log` has the ticker's verdict and returns its text.
fn wait_verdict(log: &SerialLog) -> String {
    let start = Instant::now();
    let done = |t: &str| t.split("VERDICT").nth(1).is_some_and(|v| v.contains('\n'));
    while !done(&log.text()) {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "no verdict: {}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    log.text()
}

/// The restored guest's output: it goes on after `last` without booting.
fn assert_continued(text: &str, last: u32) {
    assert!(text.contains("VERDICT: PASS ticker"), "{text}");
    assert!(
        !text.contains("Bulkhead test guest") && !text.contains("counting to"),
        "the guest booted again:\n{text}"
    );
    let t = ticks(text);
    assert_eq!(t.first(), Some(&(last + 25)), "{text}");
    assert_eq!(t.last(), Some(&300), "{text}");
}

fn file_digest(p: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(p).unwrap().hash(&mut h);
    h.finish()
}

#[test]
fn a_stopped_ticker_saved_and_loaded_into_a_new_broker_continues_after_cont() {
    let dir = TempDir::new();
    let mem = MemFile::new(&dir);
    let state = dir.0.join("ticker.state");
    let last = run_and_save(&dir, &mem, &state);
    let ram = file_digest(&mem.0);

    let log = SerialLog(dir.0.join("second.log"));
    let b = start_ticker(&mem, &log, &["-incoming", "defer", "-S"]);
    let mut q = b.client();
    assert_eq!(status(&mut q), "inmigrate");
    // A reset while inmigrate stays there (QEMU) and loads no kernel.
    ok_with(&mut q, "system_reset", Value::Null);
    q.event("RESET");
    assert_eq!(status(&mut q), "inmigrate");
    // Nothing was written into the saved RAM and nothing ran.
    assert_eq!(file_digest(&mem.0), ram, "the incoming VM wrote its RAM");
    assert_eq!(log.text(), "");

    ok_with(&mut q, "xen-load-devices-state", json!({"filename": state}));
    // -S: the incoming step ends paused, as QEMU's; cont resumes.
    assert_eq!(status(&mut q), "paused");
    ok_with(&mut q, "cont", Value::Null);
    q.event("RESUME");
    assert_continued(&wait_verdict(&log), last);
}

/// A state file with one byte changed at `at`.
fn flipped(state: &[u8], at: usize) -> Vec<u8> {
    let mut v = state.to_vec();
    v[at] ^= 0x40;
    v
}

#[test]
fn bad_state_files_are_refused_and_start_nothing_then_the_good_one_runs_at_once() {
    let dir = TempDir::new();
    let mem = MemFile::new(&dir);
    let state = dir.0.join("ticker.state");
    let last = run_and_save(&dir, &mem, &state);
    let good = std::fs::read(&state).unwrap();

    let log = SerialLog(dir.0.join("second.log"));
    // No -S: autostart, so a load that went through would start the guest.
    // The same RAM file, as QEMU's -mem-path this time.
    let b = start_ticker_mem_path(&mem, &log, &["-incoming", "defer"]);
    let mut q = b.client();
    assert_eq!(status(&mut q), "inmigrate");
    let mut other_version = good.clone();
    other_version[8] = 2;
    let bad: [(&str, Vec<u8>, &str); 6] = [
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("corrupt", flipped(&good, good.len() / 2), "corrupt"),
        ("empty", Vec::new(), "truncated"),
        (
            "foreign",
            b"QEVM\0\0\0\x03 not ours".to_vec(),
            "not a Bulkhead VM-state file",
        ),
        (
            "other-version",
            other_version,
            "format version 2 is not supported",
        ),
        ("no-checksum", good[..good.len() - 4].to_vec(), ""),
    ];
    for (name, bytes, why) in bad {
        let p = dir.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        let desc = error_with(&mut q, "xen-load-devices-state", json!({"filename": p}));
        assert!(
            desc.starts_with("loading Xen device state failed: ") && desc.contains(why),
            "{name}: {desc}"
        );
        assert_eq!(status(&mut q), "inmigrate", "{name}");
    }
    let missing = dir.0.join("missing");
    assert_eq!(
        error_with(
            &mut q,
            "xen-load-devices-state",
            json!({"filename": missing})
        ),
        format!(
            "Could not open '{}': No such file or directory",
            missing.display()
        )
    );
    // A FIFO with no writer would hang vcpu-proc's read: refused at once.
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let desc = error_with(&mut q, "xen-load-devices-state", json!({"filename": fifo}));
    assert!(desc.contains("not a regular file"), "{desc}");
    assert_eq!(status(&mut q), "inmigrate");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log.text(), "", "a refused load started the guest");

    ok_with(&mut q, "xen-load-devices-state", json!({"filename": state}));
    // Autostart: the incoming step ends running; cont changes nothing.
    q.event("RESUME");
    assert_eq!(status(&mut q), "running");
    ok_with(&mut q, "cont", Value::Null);
    assert_continued(&wait_verdict(&log), last);
}

#[test]
fn errors_and_inmigrate_behaviour_match_qemu() {
    let dir = TempDir::new();
    let x = dir.0.join("no-such-dir/x");
    let x = x.to_str().unwrap();
    let qemu_common = ["-M", "microvm", "-accel", "kvm", "-m", "64M", "-nodefaults"];

    // A running VM: load refused, save to a bad name refused.
    let running = [
        json!({"execute": "xen-load-devices-state", "arguments": {"filename": x}}),
        json!({"execute": "xen-save-devices-state", "arguments": {"filename": x}}),
        json!({"execute": "query-status"}),
    ];
    let peer = common::qemu::replies(&qemu_common, &running);
    let b = Bulkhead::start(&["-kernel", &guest("ticker"), "-m", "64M"]);
    let mut q = b.client();
    assert_eq!(common::qemu::ours(&mut q, &running), peer);

    // -incoming defer: inmigrate; cont and stop only set autostart; a
    // missing file is QEMU's error and changes nothing.
    let incoming = [
        json!({"execute": "query-status"}),
        json!({"execute": "cont"}),
        json!({"execute": "query-status"}),
        json!({"execute": "stop"}),
        json!({"execute": "query-status"}),
        json!({"execute": "xen-load-devices-state", "arguments": {"filename": x}}),
        json!({"execute": "query-status"}),
    ];
    let mut args = qemu_common.to_vec();
    args.extend(["-incoming", "defer"]);
    let peer = common::qemu::replies(&args, &incoming);
    let b = Bulkhead::start(&[
        "-kernel",
        &guest("ticker"),
        "-m",
        "64M",
        "-incoming",
        "defer",
    ]);
    let mut q = b.client();
    assert_eq!(common::qemu::ours(&mut q, &incoming), peer);
}

#[test]
fn incoming_refuses_an_unknown_migration_protocol_with_qemus_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["-incoming", "foo:bar", "-display", "none"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown migration protocol: foo:bar"), "{err}");
}

/// `live` (the default) on a VM stopped before the save hands its disk
/// image over, as QEMU's `bdrv_inactivate_all` there: the image locks go
/// once the state is written (`live: false` keeps them), a new broker
/// with the same RAM file and image loads the state and at `cont` takes
/// the locks and runs the guest on; the old VM's `cont` then fails on the
/// lock with QEMU's message.
#[test]
fn a_live_save_of_a_stopped_vm_hands_its_disk_image_to_the_restoring_broker() {
    let dir = TempDir::new();
    let mem = MemFile::new(&dir);
    let img = disk_common::raw_image(&dir.0);
    let blockdev = json!({"driver": "raw", "node-name": "d0",
        "file": {"driver": "file", "filename": img}})
    .to_string();
    let log = SerialLog(dir.0.join("first.log"));
    let b = start_ticker(&mem, &log, &["-blockdev", &blockdev]);
    let mut q = b.client();
    log.wait_for("tick 50 ");
    ok_with(&mut q, "stop", Value::Null);
    q.event("STOP");
    let kept = dir.0.join("kept.state");
    ok_with(
        &mut q,
        "xen-save-devices-state",
        json!({"filename": kept, "live": false}),
    );
    assert!(held(&img, 101), "live: false released the image");
    let state = dir.0.join("vm.state");
    ok_with(&mut q, "xen-save-devices-state", json!({"filename": state}));
    assert!(
        !held(&img, 101) && !held(&img, 201),
        "the live save kept the image locked"
    );
    assert_eq!(status(&mut q), "paused");
    let last = *ticks(&log.text()).last().unwrap();

    let log2 = SerialLog(dir.0.join("second.log"));
    let b2 = start_ticker(
        &mem,
        &log2,
        &["-blockdev", &blockdev, "-incoming", "defer", "-S"],
    );
    let mut q2 = b2.client();
    ok_with(
        &mut q2,
        "xen-load-devices-state",
        json!({"filename": state}),
    );
    ok_with(&mut q2, "cont", Value::Null);
    assert!(held(&img, 101), "the restored VM did not take the image");
    // Asked while the restored guest still runs (it powers off after its
    // verdict, and its broker then lets the image go).
    let desc = error_with(&mut q, "cont", Value::Null);
    assert_eq!(desc, "Failed to get \"write\" lock");
    assert_continued(&wait_verdict(&log2), last);
}

#[test]
fn a_vcpu_proc_killed_after_a_load_is_a_guest_crash_and_the_broker_still_answers() {
    let dir = TempDir::new();
    let mem = MemFile::new(&dir);
    let state = dir.0.join("ticker.state");
    run_and_save(&dir, &mem, &state);
    let log = SerialLog(dir.0.join("second.log"));
    let b = start_ticker(&mem, &log, &["-incoming", "defer", "-S"]);
    let mut q = b.client();
    ok_with(&mut q, "xen-load-devices-state", json!({"filename": state}));
    let vcpu = common::children(common::broker_pid(&b))
        .into_iter()
        .find(|(_, c)| c == "vcpu-proc")
        .map(|(p, _)| p)
        .expect("a vcpu-proc");
    disk_common::sigkill(vcpu as i32);
    let exited = q.event_where("__org.bulkhead_WORKER_EXITED", |d| d["worker"] == "vcpu");
    assert_eq!(exited["data"]["action"], "guest-crashed");
    assert_eq!(status(&mut q), "internal-error");
    // The loaded state lived only in the killed process: nothing replays it.
    let desc = error_with(&mut q, "xen-load-devices-state", json!({"filename": state}));
    assert!(!desc.is_empty());
    assert!(q.ok("query-version").is_object());
}
