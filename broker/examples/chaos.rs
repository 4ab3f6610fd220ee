//! Chaos at scale (not a test: `scripts/chaos` runs it, `scripts/demo
//! --disk` runs a short, talkative version). The `blk-loop` guest writes,
//! flushes, reads back and verifies its disk in a loop while block-proc is
//! SIGKILLed and SIGSTOPped (hung for a while, then SIGCONTed unless the
//! broker replaced it first) at random moments, and several QMP clients
//! keep asking questions. At the end the guest is stopped, the image is
//! checked sector by sector against the pattern of the last verified pass
//! (or the one being written) and with `qemu-img check`, and one summary
//! line is printed. Exit status 0 when nothing was lost or failed.
//!
//! Usage: `chaos --bulkhead PATH --guest PATH [--kills N] [--hangs N]
//! [--stop-ms MS] [--gap-ms MIN:MAX] [--clients N] [--format qcow2|raw]
//! [--seed N] [--demo] [--keep]`

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The guests' sector pattern, the very source the `blk` guests use.
#[path = "../../test-guests/blk/src/pattern.rs"]
#[allow(dead_code)]
mod pattern;

/// Sectors the `blk` guests write.
const GUEST_SECTORS: u64 = 64;
/// Image size.
const IMAGE_BYTES: u64 = 4 << 20;
/// A QMP request unanswered this long is a timeout.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a device may stay without a backend before the run fails.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take for a pass on a slow (nested) host.
const PASS_TIMEOUT: Duration = Duration::from_secs(120);

struct Opts {
    bulkhead: PathBuf,
    guest: PathBuf,
    kills: usize,
    hangs: usize,
    stop_ms: u64,
    gap_ms: (u64, u64),
    clients: usize,
    format: String,
    seed: u64,
    demo: bool,
    keep: bool,
}

fn parse_args() -> Result<Opts, String> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut o = Opts {
        bulkhead: PathBuf::from("target/release/bulkhead"),
        guest: PathBuf::from("target/test-guests/x86_64-unknown-linux-gnu/release/blk-loop"),
        kills: 1000,
        hangs: 0,
        stop_ms: 500,
        gap_ms: (20, 300),
        clients: 4,
        format: "qcow2".into(),
        seed,
        demo: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--bulkhead" => o.bulkhead = PathBuf::from(val()?),
            "--guest" => o.guest = PathBuf::from(val()?),
            "--kills" => o.kills = num(val()?)? as usize,
            "--hangs" => o.hangs = num(val()?)? as usize,
            "--stop-ms" => o.stop_ms = num(val()?)?,
            "--clients" => o.clients = num(val()?)? as usize,
            "--seed" => o.seed = num(val()?)? | 1,
            "--gap-ms" => {
                let v = val()?;
                let (lo, hi) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--gap-ms wants MIN:MAX, not '{v}'"))?;
                o.gap_ms = (num(lo.into())?, num(hi.into())?);
                if o.gap_ms.0 > o.gap_ms.1 {
                    return Err(format!("--gap-ms: {} > {}", o.gap_ms.0, o.gap_ms.1));
                }
            }
            "--format" => {
                o.format = val()?;
                if o.format != "qcow2" && o.format != "raw" {
                    return Err(format!("--format: '{}' is not qcow2 or raw", o.format));
                }
            }
            "--demo" => o.demo = true,
            "--keep" => o.keep = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(o)
}

/// A small xorshift generator (the seed is printed for reruns).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A QMP session: requests with a timeout, events set aside.
struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

/// Why a request got no reply.
enum CallError {
    Timeout,
    Closed(String),
}

impl Qmp {
    fn connect(sock: &Path, timeout: Option<Duration>) -> Result<Qmp, String> {
        let s = UnixStream::connect(sock).map_err(|e| format!("QMP connect: {e}"))?;
        s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut q = Qmp { w: s, r };
        q.line().map_err(|_| "no QMP greeting".to_string())?;
        match q.call("qmp_capabilities", Value::Null) {
            Ok(v) if v.get("return").is_some() => Ok(q),
            Ok(v) => Err(format!("qmp_capabilities: {v}")),
            Err(_) => Err("qmp_capabilities: no reply".into()),
        }
    }

    fn line(&mut self) -> Result<Value, CallError> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Err(CallError::Closed("connection closed".into())),
            Ok(_) => serde_json::from_str(&l)
                .map_err(|e| CallError::Closed(format!("bad JSON {l:?}: {e}"))),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Err(CallError::Timeout)
            }
            Err(e) => Err(CallError::Closed(e.to_string())),
        }
    }

    /// Runs `cmd` and returns the whole reply (events are skipped).
    fn call(&mut self, cmd: &str, args: Value) -> Result<Value, CallError> {
        let msg = if args.is_null() {
            json!({"execute": cmd})
        } else {
            json!({"execute": cmd, "arguments": args})
        };
        self.w
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| CallError::Closed(e.to_string()))?;
        loop {
            let v = self.line()?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }
}

/// QMP load counters, shared by the load clients.
#[derive(Default)]
struct Load {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Errors naming the block worker ("the block worker is restarting;
    /// try again", "... is not running", "cannot reach the block worker:
    /// ...", as the request raced the kill): the answer of a command that
    /// needs block-proc while it restarts. Counted apart from errors.
    busy: AtomicU64,
    timeouts: AtomicU64,
    stop: AtomicBool,
}

/// The load commands, cycled through by each client.
const LOAD: &[&str] = &[
    "query-status",
    "query-version",
    "query-block",
    "query-named-block-nodes",
    "query-blockstats",
    "query-name",
];

fn load_client(sock: PathBuf, load: Arc<Load>, first: usize) {
    let mut q = match Qmp::connect(&sock, Some(QMP_TIMEOUT)) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("chaos: load client: {e}");
            load.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut i = first;
    while !load.stop.load(Ordering::Relaxed) {
        let cmd = LOAD[i % LOAD.len()];
        i += 1;
        load.requests.fetch_add(1, Ordering::Relaxed);
        match q.call(cmd, Value::Null) {
            // The guest runs all along: any other status is a wrong answer.
            Ok(v) if cmd == "query-status" && v["return"]["status"] != "running" => {
                eprintln!("chaos: {cmd}: {v}");
                load.errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(v) if v.get("return").is_some() => {}
            Ok(v) => {
                let desc = v["error"]["desc"].as_str().unwrap_or_default();
                if desc.contains("the block worker") {
                    load.busy.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("chaos: {cmd}: {v}");
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(CallError::Timeout) => {
                eprintln!("chaos: {cmd}: no reply within {QMP_TIMEOUT:?}");
                load.timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(CallError::Closed(e)) => {
                if !load.stop.load(Ordering::Relaxed) {
                    eprintln!("chaos: {cmd}: {e}");
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forwards every event of one session to a channel (printing it in demo
/// mode), until the connection closes.
fn event_reader(mut q: Qmp, tx: std::sync::mpsc::Sender<Value>, t0: Instant, demo: bool) {
    while let Ok(v) = q.line() {
        if v.get("event").is_none() {
            continue;
        }
        if demo {
            let data = v.get("data").map(Value::to_string).unwrap_or_default();
            println!(
                "[{:6.1}s] QMP event {} {data}",
                t0.elapsed().as_secs_f64(),
                v["event"].as_str().unwrap_or("?")
            );
        }
        if tx.send(v).is_err() {
            return;
        }
    }
}

/// The broker's serial log of the guest.
struct Serial(PathBuf);

impl Serial {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// The last `pass N ok` line's N.
    fn passes(&self) -> u64 {
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

    fn failed(&self) -> bool {
        let t = self.text();
        t.contains("VERDICT: FAIL") || t.contains("panic:") || t.contains("exception ")
    }

    fn wait_passes(&self, n: u64, broker: &mut Child) -> Result<(), String> {
        let until = Instant::now() + PASS_TIMEOUT;
        while self.passes() < n {
            if self.failed() {
                return Err(format!("guest failed:\n{}", self.text()));
            }
            if let Ok(Some(st)) = broker.try_wait() {
                return Err(format!("bulkhead exited: {st}"));
            }
            if Instant::now() > until {
                return Err(format!(
                    "the guest did not reach pass {n} in {PASS_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// The pid of `broker`'s block-proc child, if one runs.
fn block_proc_pid(broker: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{broker}/task")).ok()?;
    for t in tasks.flatten() {
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

fn signal(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: kill() with plain integers; it touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Gone already (the broker replaced it): nothing to signal.
        Some(libc::ESRCH) if sig == libc::SIGCONT => Ok(()),
        _ => Err(format!(
            "cannot send signal {sig} to block-proc (pid {pid}): {e} (run as root, like the tests)"
        )),
    }
}

/// A `DEVICE_BACKEND_RESTORED`: the downtime the broker measured, and when
/// (the event's timestamp).
#[derive(Clone, Copy)]
struct Restored {
    ms: u64,
    at: SystemTime,
}

/// Waits for the device's backend to come back.
fn wait_restored(events: &Receiver<Value>, counters: &mut EventCounts) -> Result<Restored, String> {
    let until = Instant::now() + RESTORE_TIMEOUT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(v) => {
                if let Some(r) = counters.note(&v) {
                    return Ok(r);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("device not restored within {RESTORE_TIMEOUT:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => return Err("event session closed".into()),
        }
    }
}

/// Events seen that count against the run, and the backend losses.
#[derive(Default)]
struct EventCounts {
    lost: u64,
    io_errors: u64,
    crashes: u64,
}

impl EventCounts {
    /// Records `v`; returns it if it is a restore.
    fn note(&mut self, v: &Value) -> Option<Restored> {
        match v["event"].as_str().unwrap_or_default() {
            "__org.bulkhead_DEVICE_BACKEND_LOST" => self.lost += 1,
            "__org.bulkhead_DEVICE_BACKEND_RESTORED" => {
                let ts = &v["timestamp"];
                let at = UNIX_EPOCH
                    + Duration::from_secs(ts["seconds"].as_u64().unwrap_or(0))
                    + Duration::from_micros(ts["microseconds"].as_u64().unwrap_or(0));
                return Some(Restored {
                    ms: v["data"]["downtime-ms"].as_u64().unwrap_or(0),
                    at,
                });
            }
            "BLOCK_IO_ERROR" => self.io_errors += 1,
            "__org.bulkhead_GUEST_CRASHED" => self.crashes += 1,
            _ => {}
        }
        None
    }

    /// Takes every event already queued.
    fn drain(&mut self, events: &Receiver<Value>) -> Vec<Restored> {
        let mut restored = Vec::new();
        while let Ok(v) = events.try_recv() {
            restored.extend(self.note(&v));
        }
        restored
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `qemu-img ARGS`; its output, or an error with it.
fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("qemu-img: {e} (install qemu-utils: scripts/setup)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("qemu-img {args:?}: {text}"))
    }
}

/// Sectors of `raw` that hold neither the pattern of `pass` nor `pass + 1`.
fn bad_sectors(raw: &Path, pass: u64) -> Result<Vec<u64>, String> {
    let f = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let mut bad = Vec::new();
    for s in 0..GUEST_SECTORS {
        let mut b = [0u8; pattern::SECTOR];
        f.read_exact_at(&mut b, s * pattern::SECTOR as u64)
            .map_err(|e| format!("{}: {e}", raw.display()))?;
        let mut words = [0u64; pattern::WORDS];
        for (w, c) in words.iter_mut().zip(b.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(c);
            *w = u64::from_le_bytes(le);
        }
        let ok =
            pattern::check(&words, s, pass).is_ok() || pattern::check(&words, s, pass + 1).is_ok();
        if !ok {
            bad.push(s);
        }
    }
    Ok(bad)
}

/// One fault to inject.
#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Hang,
}

/// The outcome of a run, for the summary line.
#[derive(Default)]
struct Outcome {
    kills: usize,
    hangs: usize,
    hangs_replaced: usize,
    /// Device downtime of every fault: a kill's as the broker measured it
    /// (backend lost -> restored), a hang's from SIGSTOP until the worker
    /// runs again (SIGCONT) or its replacement serves the device.
    downtimes: Vec<u64>,
    /// The kills' alone.
    kill_downtimes: Vec<u64>,
    passes: u64,
    host_sectors_ok: u64,
    lost_sectors: u64,
    guest_errors: u64,
    img_check: String,
    failure: Option<String>,
}

struct Vm {
    broker: Child,
    sock: PathBuf,
    serial: Serial,
    img: PathBuf,
}

fn start_vm(o: &Opts, dir: &Path) -> Result<Vm, String> {
    let img = dir.join(format!("disk.{}", o.format));
    if o.format == "qcow2" {
        let size = IMAGE_BYTES.to_string();
        qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            img.as_os_str(),
            size.as_ref(),
        ])?;
    } else {
        File::create(&img)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .map_err(|e| format!("{}: {e}", img.display()))?;
    }
    let sock = dir.join("qmp.sock");
    let serial = Serial(dir.join("serial.log"));
    let log = File::create(dir.join("broker.log")).map_err(|e| e.to_string())?;
    let blockdev = json!({"driver": o.format, "node-name": "d0",
        "file": {"driver": "file", "filename": img}});
    let mut broker = Command::new(&o.bulkhead)
        .args(["-name", "chaos", "-m", "64M", "-kernel"])
        .arg(&o.guest)
        .arg("-serial")
        .arg(format!("file:{}", serial.0.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .arg("-blockdev")
        .arg(blockdev.to_string())
        .args(["-device", "virtio-blk-device,drive=d0,id=vda"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", o.bulkhead.display()))?;
    let until = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        if let Ok(Some(st)) = broker.try_wait() {
            return Err(format!("bulkhead exited at start: {st}"));
        }
        if Instant::now() > until {
            let _ = broker.kill();
            return Err("no QMP socket after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Vm {
        broker,
        sock,
        serial,
        img,
    })
}

fn run(o: &Opts, dir: &Path, load: &Arc<Load>) -> Outcome {
    let mut out = Outcome::default();
    let mut vm = match start_vm(o, dir) {
        Ok(vm) => vm,
        Err(e) => {
            out.failure = Some(e);
            return out;
        }
    };
    let r = chaos(o, &mut vm, load, &mut out);
    if let Err(e) = r {
        out.failure = Some(e);
    }
    if vm.broker.try_wait().ok().flatten().is_none() {
        let _ = vm.broker.kill();
        let _ = vm.broker.wait();
    }
    out
}

fn chaos(o: &Opts, vm: &mut Vm, load: &Arc<Load>, out: &mut Outcome) -> Result<(), String> {
    let t0 = Instant::now();
    let say = |msg: String| {
        if o.demo {
            println!("[{:6.1}s] {msg}", t0.elapsed().as_secs_f64());
        }
    };
    let broker_pid = vm.broker.id();
    let mut control = Qmp::connect(&vm.sock, Some(QMP_TIMEOUT))?;
    let (ev_tx, events) = channel();
    let ev = Qmp::connect(&vm.sock, None)?;
    let demo = o.demo;
    std::thread::spawn(move || event_reader(ev, ev_tx, t0, demo));
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            let (s, l) = (vm.sock.clone(), load.clone());
            std::thread::spawn(move || load_client(s, l, i))
        })
        .collect();
    say("waiting for the guest's first verified pass".into());
    vm.serial.wait_passes(1, &mut vm.broker)?;
    say(format!("guest verified pass {}", vm.serial.passes()));

    let mut rng = Rng(o.seed);
    let mut plan: Vec<Fault> = std::iter::repeat_n(Fault::Kill, o.kills)
        .chain(std::iter::repeat_n(Fault::Hang, o.hangs))
        .collect();
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut counts = EventCounts::default();
    let total = plan.len();
    for (n, fault) in plan.into_iter().enumerate() {
        let gap = o.gap_ms.0 + rng.below(o.gap_ms.1 - o.gap_ms.0 + 1);
        std::thread::sleep(Duration::from_millis(gap));
        counts.drain(&events);
        let pid = block_proc_pid(broker_pid).ok_or("no block-proc is running")?;
        match fault {
            Fault::Kill => {
                say(format!(
                    "fault {}/{total}: SIGKILL block-proc (pid {pid})",
                    n + 1
                ));
                signal(pid, libc::SIGKILL)?;
                let ms = wait_restored(&events, &mut counts)?.ms;
                out.kills += 1;
                out.downtimes.push(ms);
                out.kill_downtimes.push(ms);
                say(format!(
                    "device vda back after {ms} ms; the guest is at pass {}",
                    vm.serial.passes()
                ));
            }
            Fault::Hang => {
                say(format!(
                    "fault {}/{total}: SIGSTOP block-proc (pid {pid}) for {} ms",
                    n + 1,
                    o.stop_ms
                ));
                let stopped = Instant::now();
                let stopped_at = SystemTime::now();
                signal(pid, libc::SIGSTOP)?;
                std::thread::sleep(Duration::from_millis(o.stop_ms));
                let lost_before = counts.lost;
                let restored = counts.drain(&events);
                if counts.lost > lost_before || !restored.is_empty() {
                    // The broker judged it hung and replaced it: the device
                    // was down from the stop until the replacement served it.
                    let r = match restored.first() {
                        Some(&r) => r,
                        None => wait_restored(&events, &mut counts)?,
                    };
                    let down = r.at.duration_since(stopped_at).unwrap_or_default();
                    out.hangs_replaced += 1;
                    out.downtimes.push(down.as_millis() as u64);
                    say(format!(
                        "the broker replaced the hung block-proc: device back {} ms after the stop",
                        down.as_millis()
                    ));
                } else {
                    signal(pid, libc::SIGCONT)?;
                    out.downtimes.push(stopped.elapsed().as_millis() as u64);
                    say(format!(
                        "SIGCONT block-proc after {} ms",
                        stopped.elapsed().as_millis()
                    ));
                }
                out.hangs += 1;
            }
        }
        if vm.serial.failed() {
            return Err(format!(
                "guest failed after fault {}:\n{}",
                n + 1,
                vm.serial.text()
            ));
        }
    }
    // Progress after the last fault: two whole passes.
    let after = vm.serial.passes();
    say(format!(
        "faults done; waiting for two more verified passes (now at {after})"
    ));
    vm.serial.wait_passes(after + 2, &mut vm.broker)?;
    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    if let Ok(v) = control.call("stop", Value::Null) {
        if v.get("return").is_none() {
            return Err(format!("stop: {v}"));
        }
    }
    // Let requests already handed to block-proc finish.
    std::thread::sleep(Duration::from_millis(300));
    out.passes = vm.serial.passes();
    counts.drain(&events);
    out.guest_errors = counts.io_errors + counts.crashes + u64::from(vm.serial.failed());
    let raw = if o.format == "raw" {
        vm.img.clone()
    } else {
        let view = vm.img.with_extension("view.raw");
        qemu_img(&[
            "convert".as_ref(),
            "-U".as_ref(),
            "-f".as_ref(),
            o.format.as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            vm.img.as_os_str(),
            view.as_os_str(),
        ])?;
        view
    };
    let bad = bad_sectors(&raw, out.passes)?;
    out.lost_sectors = bad.len() as u64;
    out.host_sectors_ok = GUEST_SECTORS - out.lost_sectors;
    let _ = control.call("quit", Value::Null);
    let until = Instant::now() + Duration::from_secs(30);
    while vm.broker.try_wait().ok().flatten().is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    out.img_check = if o.format == "qcow2" {
        match qemu_img(&[
            "check".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            vm.img.as_os_str(),
        ]) {
            Ok(_) => "clean".into(),
            Err(e) => {
                eprintln!("chaos: {e}");
                "FAILED".into()
            }
        }
    } else {
        "n/a(raw)".into()
    };
    say(format!(
        "guest stopped at pass {}; {} of {GUEST_SECTORS} sectors on the host hold the last verified pass (or the next)",
        out.passes, out.host_sectors_ok
    ));
    let l = load;
    if l.timeouts.load(Ordering::Relaxed) > 0 {
        return Err("QMP requests timed out".into());
    }
    if !bad.is_empty() {
        return Err(format!("sectors {bad:?} lost acknowledged writes"));
    }
    if out.img_check != "clean" && o.format == "qcow2" {
        return Err("qemu-img check failed".into());
    }
    if out.guest_errors > 0 {
        return Err(format!("{} guest errors", out.guest_errors));
    }
    let errors = l.errors.load(Ordering::Relaxed);
    if errors > 0 {
        return Err(format!("{errors} QMP errors"));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for (what, p) in [("bulkhead", &o.bulkhead), ("guest", &o.guest)] {
        if !p.exists() {
            eprintln!("chaos: {what} {} not found", p.display());
            return std::process::ExitCode::from(2);
        }
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-chaos-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("chaos: {}: {e}", dir.display());
        return std::process::ExitCode::from(2);
    }
    let load = Arc::new(Load::default());
    let out = run(&o, &dir, &load);
    let mut d = out.downtimes.clone();
    d.sort_unstable();
    let mut k = out.kill_downtimes.clone();
    k.sort_unstable();
    let verdict = match &out.failure {
        None => "PASS".to_string(),
        Some(e) => {
            eprintln!("chaos: FAIL: {e}");
            eprintln!(
                "chaos: files kept in {} (broker.log, serial.log, the image)",
                dir.display()
            );
            "FAIL".to_string()
        }
    };
    println!(
        "chaos {verdict}: kills {} hangs {} (replaced {}) | device downtime ms p50 {} p99 {} max {} (kills alone p50 {} p99 {} max {}) | \
         guest passes {} (each {GUEST_SECTORS} acknowledged writes verified by the guest), \
         host check {}/{GUEST_SECTORS} sectors ok, lost {} | guest errors {} | \
         QMP requests {} errors {} block-worker-down {} timeouts {} | qemu-img check {} | {} image, seed {}",
        out.kills,
        out.hangs,
        out.hangs_replaced,
        pct(&d, 0.5),
        pct(&d, 0.99),
        d.last().copied().unwrap_or(0),
        pct(&k, 0.5),
        pct(&k, 0.99),
        k.last().copied().unwrap_or(0),
        out.passes,
        out.host_sectors_ok,
        out.lost_sectors,
        out.guest_errors,
        load.requests.load(Ordering::Relaxed),
        load.errors.load(Ordering::Relaxed),
        load.busy.load(Ordering::Relaxed),
        load.timeouts.load(Ordering::Relaxed),
        if out.img_check.is_empty() { "not run" } else { &out.img_check },
        o.format,
        o.seed,
    );
    if out.failure.is_none() {
        if !o.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
