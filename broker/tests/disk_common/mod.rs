//! Helpers of the disk tests (`disk_*.rs`): test-guest paths, images,
//! the serial log of a guest, the host-side check of the guest's sector
//! patterns, `qemu-img`, and a pidof for block-proc.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use crate::common::guest;

/// Guest code is very slow on the nested KVM of the development machines.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Image size (the guests use the first 64 sectors).
pub const IMAGE_BYTES: u64 = 4 << 20;
/// Sectors the `blk` guests write.
pub const GUEST_SECTORS: u64 = 64;

/// Starts bulkhead running test guest `guest_name` with its serial output
/// in `dir/serial.log` (`-kernel GUEST -serial file:LOG EXTRA...`).
pub fn start_guest(
    dir: &Path,
    guest_name: &str,
    extra: &[&str],
) -> (crate::common::Bulkhead, SerialLog) {
    let log = SerialLog(dir.join("serial.log"));
    let serial = format!("file:{}", log.0.display());
    let kernel = guest(guest_name);
    let mut args = vec!["-kernel", kernel.as_str(), "-serial", serial.as_str()];
    args.extend_from_slice(extra);
    (crate::common::Bulkhead::start(&args), log)
}

/// Starts bulkhead with `extra` options (e.g. `-S`), then `guest_name` on
/// one disk: device `vda` over node `d0` of `format` on the image `img`,
/// its serial output in `serial`.
pub fn start_with_disk(
    extra: &[&str],
    guest_name: &str,
    format: &str,
    img: &Path,
    serial: &SerialLog,
) -> crate::common::Bulkhead {
    let blockdev = serde_json::json!({"driver": format, "node-name": "d0",
        "file": {"driver": "file", "filename": img}});
    let kernel = guest(guest_name);
    let serial = format!("file:{}", serial.0.display());
    let blockdev = blockdev.to_string();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend_from_slice(&[
        "-kernel",
        &kernel,
        "-m",
        "64M",
        "-serial",
        &serial,
        "-blockdev",
        &blockdev,
        "-device",
        "virtio-blk-device,drive=d0,id=vda",
    ]);
    crate::common::Bulkhead::start(&args)
}

/// A `blk-loop` guest doing verified I/O on a disk of its own (device
/// `vda` over node `d0`), the broker and a QMP client; the fields in the
/// order they drop (a test binds `dir` too, as `_dir`, to keep it).
pub struct LoopGuest {
    pub q: crate::common::Qmp,
    pub b: crate::common::Bulkhead,
    pub serial: SerialLog,
    pub img: PathBuf,
    pub dir: crate::common::TempDir,
}

/// Starts a [`LoopGuest`] on a new `format` image (`raw` or `qcow2`) in a
/// directory of its own, and waits until it has written `passes` passes.
pub fn start_blk_loop(format: &str, passes: u64) -> LoopGuest {
    let dir = crate::common::TempDir::new();
    let img = match format {
        "raw" => raw_image(&dir.0),
        "qcow2" => qcow2_image(&dir.0),
        other => panic!("no {other} image for blk-loop"),
    };
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = start_with_disk(&[], "blk-loop", format, &img, &serial);
    let q = b.client();
    serial.wait_passes(passes);
    LoopGuest {
        q,
        b,
        serial,
        img,
        dir,
    }
}

/// A zero-filled raw image.
pub fn raw_image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    File::create(&p).unwrap().set_len(IMAGE_BYTES).unwrap();
    p
}

/// A qcow2 image made by `qemu-img create`.
pub fn qcow2_image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg(IMAGE_BYTES.to_string())
        .output()
        .expect("qemu-img is needed");
    assert!(out.status.success(), "qemu-img create: {out:?}");
    p
}

/// `qemu-img check` passes on `img`.
pub fn assert_qemu_img_check(img: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", format])
        .arg(img)
        .output()
        .expect("qemu-img is needed");
    assert!(
        out.status.success(),
        "qemu-img check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check` finds no corruption in `img` after block-proc was
/// SIGKILLed: leaked clusters (exit status 3: counted, referenced by
/// nothing) are allowed, as a QEMU killed mid-allocation leaves them too;
/// corruption (status 2) or a failed check is not.
pub fn assert_qemu_img_check_after_kills(img: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", format])
        .arg(img)
        .output()
        .expect("qemu-img is needed");
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "qemu-img check found more than leaks ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guest-visible contents of `img` (qcow2 converted to raw).
pub fn raw_view(img: &Path, format: &str) -> PathBuf {
    if format == "raw" {
        return img.to_path_buf();
    }
    let out_path = img.with_extension("view.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-f", format, "-O", "raw"])
        .arg(img)
        .arg(&out_path)
        .output()
        .expect("qemu-img is needed");
    assert!(out.status.success(), "qemu-img convert: {out:?}");
    out_path
}

pub mod qemu_tools;
#[allow(unused_imports)]
pub use qemu_tools::*;

/// The guests' sector pattern, the very source the `blk` guests use.
#[path = "../../../test-guests/blk/src/pattern.rs"]
#[allow(dead_code)]
pub mod pattern;

/// Sector `s` of the open image `f`, as the pattern's words.
fn read_sector_words(f: &File, s: u64) -> [u64; pattern::WORDS] {
    let mut b = [0u8; pattern::SECTOR];
    f.read_exact_at(&mut b, s * pattern::SECTOR as u64).unwrap();
    let mut words = [0u64; pattern::WORDS];
    for (w, c) in words.iter_mut().zip(b.chunks_exact(8)) {
        *w = u64::from_le_bytes(c.try_into().unwrap());
    }
    words
}

/// True if sector `s` of `raw` holds the pattern of `pass`.
pub fn sector_holds(raw: &Path, s: u64, pass: u64) -> bool {
    let f = File::open(raw).unwrap();
    pattern::check(&read_sector_words(&f, s), s, pass).is_ok()
}

/// Every guest sector of `raw` holds the pattern of `pass`.
pub fn assert_image_holds_pass(raw: &Path, pass: u64) {
    for s in 0..GUEST_SECTORS {
        assert!(
            sector_holds(raw, s, pass),
            "sector {s} does not hold pass {pass}"
        );
    }
}

/// The serial log the broker writes (`-serial file:PATH`).
pub struct SerialLog(pub PathBuf);

impl SerialLog {
    /// The log so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// True if a line contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Waits for `needle`, failing on a FAIL verdict or a timeout.
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        loop {
            let t = self.text();
            if t.contains(needle) {
                return;
            }
            assert!(!t.contains("VERDICT: FAIL"), "guest failed:\n{t}");
            assert!(Instant::now() < deadline, "no {needle:?} on serial:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Completed passes of `blk-loop` (`pass N ok` lines).
    pub fn passes(&self) -> u64 {
        self.text()
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("pass ")?
                    .strip_suffix(" ok")?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Waits until at least `n` passes completed.
    pub fn wait_passes(&self, n: u64) {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        while self.passes() < n {
            let t = self.text();
            assert!(!t.contains("VERDICT: FAIL"), "guest failed:\n{t}");
            assert!(Instant::now() < deadline, "fewer than {n} passes:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pid of `broker`'s block-proc child, if one runs.
pub fn block_proc_pid(broker: u32) -> Option<i32> {
    for t in std::fs::read_dir(format!("/proc/{broker}/task"))
        .ok()?
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in list
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if comm.trim() == "block-proc" {
                return Some(c);
            }
        }
    }
    None
}

/// Waits until a block-proc other than `old` runs under `b` and the
/// broker answers `query-block`.
pub fn wait_block_restart(b: &crate::common::Bulkhead, q: &mut crate::common::Qmp, old: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if block_proc_pid(crate::common::broker_pid(b)).is_some_and(|p| p != old)
            && q.execute("query-block", serde_json::json!({}))
                .get("return")
                .is_some()
        {
            return;
        }
        assert!(Instant::now() < deadline, "block-proc not restarted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `b`'s block-proc and waits for its successor
/// ([`wait_block_restart`]).
pub fn kill_block_proc_and_wait_restart(b: &crate::common::Bulkhead, q: &mut crate::common::Qmp) {
    let pid = block_proc_pid(crate::common::broker_pid(b)).expect("block-proc");
    sigkill(pid);
    wait_block_restart(b, q, pid);
}

/// SIGKILLs `pid`.
pub fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "bulkhead did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A zero-filled raw image named `name` in `dir`.
pub fn raw_image_named(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(IMAGE_BYTES).unwrap();
    p
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// What one polling client saw.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Replies received.
    pub replies: u64,
    /// Every error reply, with the command that got it.
    pub errors: Vec<(String, serde_json::Value)>,
    /// The longest wait for a reply.
    pub slowest: Duration,
    /// Counters of `query-blockstats` that went backwards.
    pub backwards: Vec<String>,
}

/// QMP clients, each on its own connection and thread, polling
/// `query-block` and `query-blockstats` (per node) as management tools
/// do, until [`QueryPollers::stop`].
pub struct QueryPollers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<PollReport>>,
}

impl QueryPollers {
    /// Starts `clients` pollers on `sock`.
    pub fn start(sock: &Path, clients: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let sock = sock.to_path_buf();
                std::thread::spawn(move || poll(&sock, &stop))
            })
            .collect();
        QueryPollers { stop, threads }
    }

    /// Stops the pollers and returns what each saw.
    pub fn stop(self) -> Vec<PollReport> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn poll(sock: &Path, stop: &std::sync::atomic::AtomicBool) -> PollReport {
    use std::collections::HashMap;
    let (mut q, _) = crate::common::Qmp::connect(sock);
    q.negotiate();
    let mut report = PollReport::default();
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let block_stats = serde_json::json!({"query-nodes": true});
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (cmd, args) in [
            ("query-block", serde_json::Value::Null),
            ("query-blockstats", block_stats.clone()),
        ] {
            let start = Instant::now();
            let r = q.execute(cmd, args);
            report.slowest = report.slowest.max(start.elapsed());
            report.replies += 1;
            q.events.clear();
            if r.get("error").is_some() {
                report.errors.push((cmd.to_owned(), r));
                continue;
            }
            if cmd != "query-blockstats" {
                continue;
            }
            for node in r["return"].as_array().into_iter().flatten() {
                let name = node["node-name"].as_str().unwrap_or_default().to_owned();
                for (k, v) in node["stats"].as_object().into_iter().flatten() {
                    let Some(v) = v.as_u64() else { continue };
                    let prev = last.insert((name.clone(), k.clone()), v).unwrap_or(0);
                    if v < prev {
                        report.backwards.push(format!("{name}.{k}: {prev} -> {v}"));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    report
}

/// After a disturbance of the `blk-loop` guest on `img`: it completes two
/// more whole passes, is stopped, never reported a failure, and every
/// sector holds the last verified pass (or the next one, being written
/// when the guest stopped).
pub fn assert_progress_and_image(
    q: &mut crate::common::Qmp,
    serial: &SerialLog,
    img: &Path,
    format: &str,
) {
    let after = serial.passes();
    serial.wait_passes(after + 2);
    q.ok("stop");
    // Let requests already handed to block-proc finish.
    std::thread::sleep(Duration::from_millis(300));
    let last = serial.passes();
    let log = serial.text();
    assert!(!log.contains("FAIL"), "{log}");
    assert!(last > after, "{log}");
    let raw = raw_view(img, format);
    for s in 0..GUEST_SECTORS {
        assert!(
            sector_holds(&raw, s, last) || sector_holds(&raw, s, last + 1),
            "sector {s} holds neither pass {last} nor {}",
            last + 1
        );
    }
}
