//! bench-blk: side-by-side vhost-user-blk numbers for block-proc with each
//! of its I/O engines (`aio=io_uring`, `aio=threads`) and
//! qemu-storage-daemon (`aio=io_uring`, its fastest, with the export in an
//! IOThread, which polls like block-proc's queue threads; the main loop
//! with `--qsd-main-loop`) on the same image, all through the same harness
//! and access patterns, plus `fio` with io_uring at the same queue depth
//! on the same file (the host's own ceiling).
//!
//! With `--cdrom` (or only that with `--cdrom-only`), the CD-ROM read
//! path too: the same image as a `scsi-cd` of a vhost-user-scsi
//! controller (READ(10) of 2048-byte blocks) beside block-proc's
//! virtio-blk export of it (qemu-storage-daemon has no vhost-user-scsi
//! export to compare with).
//!
//! With `--dirty-log` (or only that with `--dirty-log-only`), the cost of
//! vhost-user dirty logging: block-proc (default aio) with LOG_ALL and a
//! log set through SET_LOG_BASE, as during a live migration, beside the
//! same export with logging off.
//!
//! ```text
//! bench-blk --block-proc BIN --file IMG --format raw|qcow2 [--secs S] [--rounds N] [--only I] [--host-file RAW] [--direct] [--qsd-main-loop] [--cdrom|--cdrom-only] [--dirty-log|--dirty-log-only]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vhost_user_harness::dirty_log::HarnessLog;
use vhost_user_harness::process::Backend;
use vhost_user_harness::scsi::{Data, ScsiDevice, ScsiOptions};
use vhost_user_harness::{BlkDevice, BlkOptions, HarnessError, Request};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: bench-blk --block-proc BIN --file IMG --format raw|qcow2 [--secs S] [--rounds N] [--only I] [--host-file RAW] [--direct] [--qsd-main-loop] [--cdrom|--cdrom-only] [--dirty-log|--dirty-log-only]")]
    Usage,
    #[error("harness")]
    Harness(#[from] HarnessError),
    #[error("I/O")]
    Io(#[from] std::io::Error),
    #[error("request failed with status {0}")]
    Status(u8),
    #[error("fio: {0}")]
    Fio(String),
}

type Result<T> = std::result::Result<T, BenchError>;

#[derive(Clone, Copy)]
enum Work {
    RandRead4k(usize),
    RandWrite4k(usize),
    SeqRead1m,
    SeqWrite1m,
}

impl Work {
    fn name(self) -> String {
        match self {
            Work::RandRead4k(qd) => format!("4k randread qd{qd}"),
            Work::RandWrite4k(qd) => format!("4k randwrite qd{qd}"),
            Work::SeqRead1m => "1M seqread qd1".into(),
            Work::SeqWrite1m => "1M seqwrite qd1".into(),
        }
    }
    fn bs(self) -> u64 {
        match self {
            Work::RandRead4k(_) | Work::RandWrite4k(_) => 4096,
            Work::SeqRead1m | Work::SeqWrite1m => 1 << 20,
        }
    }
    fn qd(self) -> usize {
        match self {
            Work::RandRead4k(q) | Work::RandWrite4k(q) => q,
            Work::SeqRead1m | Work::SeqWrite1m => 1,
        }
    }
    fn write(self) -> bool {
        matches!(self, Work::RandWrite4k(_) | Work::SeqWrite1m)
    }
    fn random(self) -> bool {
        matches!(self, Work::RandRead4k(_) | Work::RandWrite4k(_))
    }
}

/// Offsets generator shared by all three contenders.
struct Offsets {
    state: u64,
    pos: u64,
    size: u64,
    bs: u64,
    random: bool,
}

impl Offsets {
    fn new(size: u64, w: Work) -> Self {
        Offsets {
            state: 0x9e37_79b9_7f4a_7c15,
            pos: 0,
            size,
            bs: w.bs(),
            random: w.random(),
        }
    }
    fn next(&mut self) -> u64 {
        let blocks = self.size / self.bs;
        if self.random {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            (self.state % blocks) * self.bs
        } else {
            let o = self.pos;
            self.pos = (self.pos + self.bs) % (blocks * self.bs);
            o
        }
    }
}

/// Run `w` for `secs` through the harness; ops per second.
fn run_device(dev: &mut BlkDevice, size: u64, w: Work, secs: f64) -> Result<f64> {
    let mut off = Offsets::new(size, w);
    let len = u32::try_from(w.bs()).map_err(|_| BenchError::Usage)?;
    let req = |o: u64| {
        if w.write() {
            Request::WriteInPlace {
                sector: o / 512,
                len,
            }
        } else {
            Request::Read {
                sector: o / 512,
                len,
            }
        }
    };
    for s in 0..u16::try_from(w.qd()).map_err(|_| BenchError::Usage)? {
        dev.fill_slot(0, s, &vec![0xa5u8; len as usize])?;
    }
    let mut slots = Vec::new();
    for _ in 0..w.qd() {
        slots.push(dev.take_slot(0)?);
    }
    for &s in &slots {
        dev.submit_in(0, s, req(off.next()))?;
    }
    dev.kick(0)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    let mut draining = false;
    let mut outstanding = w.qd();
    while outstanding > 0 {
        let done = dev.wait(0)?;
        for c in done {
            if let Some(st) = c.status.filter(|&s| s != 0) {
                return Err(BenchError::Status(st));
            }
            ops += 1;
            outstanding -= 1;
            if !draining {
                let slot = c.slot.ok_or(BenchError::Usage)?;
                let _ = dev.take_slot(0);
                dev.submit_in(0, slot, req(off.next()))?;
                outstanding += 1;
            }
        }
        if !draining && Instant::now() >= end {
            draining = true;
        }
        dev.kick(0)?;
    }
    let el = start.elapsed().as_secs_f64();
    Ok(ops as f64 / el)
}

/// fio with io_uring, the same block size, pattern and queue depth, on
/// the file itself; ops per second.
fn run_fio(file: &Path, size: u64, w: Work, secs: f64, direct: bool) -> Result<f64> {
    let rw = match (w.write(), w.random()) {
        (false, true) => "randread",
        (true, true) => "randwrite",
        (false, false) => "read",
        (true, false) => "write",
    };
    let out = std::process::Command::new("fio")
        .arg("--name=bench")
        .arg(format!("--filename={}", file.display()))
        .arg("--ioengine=io_uring")
        .arg(format!("--direct={}", u8::from(direct)))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", w.bs()))
        .arg(format!("--iodepth={}", w.qd()))
        .arg(format!("--size={size}"))
        .arg(format!("--runtime={}ms", (secs * 1000.0) as u64))
        .arg("--time_based")
        .arg("--norandommap")
        .arg("--output-format=json")
        .output()
        .map_err(|e| BenchError::Fio(format!("cannot run fio (scripts/setup installs it): {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Fio(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Fio(format!("bad JSON output: {e}")))?;
    let dir = if w.write() { "write" } else { "read" };
    v["jobs"][0][dir]["iops"]
        .as_f64()
        .ok_or_else(|| BenchError::Fio("no iops in the output".into()))
}

fn opts() -> BlkOptions {
    BlkOptions {
        num_queues: 1,
        queue_size: 128,
        slots: 32,
        slot_size: 1 << 20,
        ..Default::default()
    }
}

struct Args {
    bp: PathBuf,
    file: PathBuf,
    format: String,
    secs: f64,
    direct: bool,
    rounds: u32,
    only: Option<usize>,
    host_file: Option<PathBuf>,
    qsd_main_loop: bool,
    cdrom: bool,
    blk: bool,
    dirty_log: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        bp: PathBuf::new(),
        file: PathBuf::new(),
        format: "raw".into(),
        secs: 0.7,
        direct: false,
        rounds: 2,
        only: None,
        host_file: None,
        qsd_main_loop: false,
        cdrom: false,
        blk: true,
        dirty_log: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--block-proc" => a.bp = it.next().ok_or(BenchError::Usage)?.into(),
            "--file" => a.file = it.next().ok_or(BenchError::Usage)?.into(),
            "--format" => a.format = it.next().ok_or(BenchError::Usage)?,
            "--secs" => {
                a.secs = it
                    .next()
                    .ok_or(BenchError::Usage)?
                    .parse()
                    .map_err(|_| BenchError::Usage)?
            }
            "--direct" => a.direct = true,
            "--qsd-main-loop" => a.qsd_main_loop = true,
            "--cdrom" => a.cdrom = true,
            "--cdrom-only" => {
                a.cdrom = true;
                a.blk = false;
            }
            "--dirty-log" => a.dirty_log = true,
            "--dirty-log-only" => {
                a.dirty_log = true;
                a.blk = false;
            }
            "--host-file" => a.host_file = Some(it.next().ok_or(BenchError::Usage)?.into()),
            "--rounds" => {
                a.rounds = it
                    .next()
                    .ok_or(BenchError::Usage)?
                    .parse()
                    .map_err(|_| BenchError::Usage)?
            }
            "--only" => {
                a.only = Some(
                    it.next()
                        .ok_or(BenchError::Usage)?
                        .parse()
                        .map_err(|_| BenchError::Usage)?,
                )
            }
            _ => return Err(BenchError::Usage),
        }
    }
    if a.bp.as_os_str().is_empty() || a.file.as_os_str().is_empty() {
        return Err(BenchError::Usage);
    }
    Ok(a)
}

/// block-proc with the file driver's `aio` engine (`None`: its default).
fn start_bp(a: &Args, sock: &Path, aio: Option<&str>) -> Result<Backend> {
    start_bp_with(a, sock, aio, &[])
}

fn start_bp_with(a: &Args, sock: &Path, aio: Option<&str>, extra: &[&str]) -> Result<Backend> {
    let direct = if a.direct { "true" } else { "false" };
    let aio = aio.map(|x| format!(r#""aio":"{x}","#)).unwrap_or_default();
    let json = format!(
        r#"{{"driver":"{}","node-name":"d","file":{{"driver":"file","filename":"{}",{aio}"cache":{{"direct":{direct}}}}}}}"#,
        a.format,
        a.file.display()
    );
    Ok(Backend::block_proc(&a.bp, sock, &[json], extra)?)
}

/// Run the read workload `w` as READ(10)s of 2048-byte blocks on a
/// CD-ROM for `secs`; ops per second.
fn run_cdrom(dev: &mut ScsiDevice, size: u64, w: Work, secs: f64) -> Result<f64> {
    const Q: usize = 2;
    let mut off = Offsets::new(size, w);
    let len = u32::try_from(w.bs()).map_err(|_| BenchError::Usage)?;
    let blocks = u16::try_from(w.bs() / 2048).map_err(|_| BenchError::Usage)?;
    let submit = |dev: &mut ScsiDevice, o: u64| -> Result<()> {
        let lba = u32::try_from(o / 2048).map_err(|_| BenchError::Usage)?;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        dev.submit(Q, 0, 0, &cdb, Data::In(len))?;
        Ok(())
    };
    for _ in 0..w.qd() {
        let o = off.next();
        submit(dev, o)?;
    }
    dev.kick(Q)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut ops, mut outstanding, mut draining) = (0u64, w.qd(), false);
    while outstanding > 0 {
        for u in dev.wait(Q)? {
            let r = dev.result(&u, 0)?;
            if r.response != 0 || r.status != 0 {
                return Err(BenchError::Status(r.status.max(r.response)));
            }
            ops += 1;
            outstanding -= 1;
            if !draining {
                let o = off.next();
                submit(dev, o)?;
                outstanding += 1;
            }
        }
        draining = draining || Instant::now() >= end;
        dev.kick(Q)?;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// The CD-ROM read path beside block-proc's virtio-blk export of the
/// same image, best of `rounds`, alternating who runs first.
fn cdrom_section(a: &Args, sock: &Path, size: u64) -> Result<()> {
    println!();
    println!(
        "CD-ROM read path (vhost-user-scsi scsi-cd, READ(10) of 2048-byte blocks) vs virtio-blk, block-proc default aio"
    );
    println!(
        "{:<18} {:>15} {:>15} {:>8}",
        "workload", "scsi-cd", "virtio-blk", "cd/blk"
    );
    for w in [Work::SeqRead1m, Work::RandRead4k(1), Work::RandRead4k(32)] {
        let mut best = [0f64; 2];
        for round in 0..a.rounds as usize {
            for k in 0..2 {
                let i = (round + k) % 2;
                let r = if i == 0 {
                    let _b = start_bp_with(a, sock, None, &["--scsi", "cd", "--read-only"])?;
                    let mut dev = ScsiDevice::connect(sock, ScsiOptions::default())?;
                    run_cdrom(&mut dev, size, w, a.secs)?
                } else {
                    let _b = start_bp_with(a, sock, None, &["--read-only"])?;
                    let mut dev = BlkDevice::connect(sock, opts())?;
                    run_device(&mut dev, size, w, a.secs)?
                };
                best[i] = best[i].max(r);
            }
        }
        println!(
            "{:<18} {:>15} {:>15} {:>8.2}",
            w.name(),
            fmt(w, best[0]),
            fmt(w, best[1]),
            best[0] / best[1]
        );
    }
    Ok(())
}

fn start_qsd(a: &Args, sock: &Path) -> Result<Backend> {
    let direct = if a.direct { "on" } else { "off" };
    Ok(Backend::qsd_in(
        sock,
        &[
            format!(
                "driver=file,node-name=f,filename={},cache.direct={direct},aio=io_uring",
                a.file.display()
            ),
            format!("driver={},node-name=d,file=f", a.format),
        ],
        "d",
        1,
        true,
        !a.qsd_main_loop,
    )?)
}

fn fmt(w: Work, ops: f64) -> String {
    if w.bs() == 4096 {
        format!("{:>9.0} IOPS", ops)
    } else {
        format!("{:>8.0} MiB/s", ops * w.bs() as f64 / (1 << 20) as f64)
    }
}

fn recovery_gap(a: &Args, sock: &Path) -> Result<Vec<f64>> {
    let mut bp = start_bp(a, sock, None)?;
    let mut dev = BlkDevice::connect(sock, opts())?;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        dev.run(
            0,
            Request::Read {
                sector: 0,
                len: 4096,
            },
        )?;
        bp.kill();
        let t0 = Instant::now();
        drop(bp);
        bp = start_bp(a, sock, None)?;
        dev.reconnect()?;
        dev.run(
            0,
            Request::Read {
                sector: 8,
                len: 4096,
            },
        )?;
        gaps.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    gaps.sort_by(f64::total_cmp);
    Ok(gaps)
}

fn run() -> Result<()> {
    let a = parse()?;
    let sock_bp = std::env::temp_dir().join(format!("bench-blk-{}-bp.sock", std::process::id()));
    let sock_qsd = std::env::temp_dir().join(format!("bench-blk-{}-qsd.sock", std::process::id()));
    let all = [
        Work::RandRead4k(1),
        Work::RandRead4k(32),
        Work::RandWrite4k(1),
        Work::RandWrite4k(32),
        Work::SeqRead1m,
        Work::SeqWrite1m,
    ];
    let works: Vec<Work> = match a.only {
        Some(i) => all.get(i).copied().into_iter().collect(),
        None => all.to_vec(),
    };
    // One backend at a time (two writers on one qcow2 image would corrupt
    // it); each workload is measured on every contender back to back,
    // `rounds` times keeping the best, so background load on a shared
    // machine hits all alike.
    let size = {
        let _b = start_bp(&a, &sock_bp, None)?;
        let mut dev = BlkDevice::connect(&sock_bp, opts())?;
        dev.capacity()? * 512
    };
    if !a.blk {
        if a.cdrom {
            cdrom_section(&a, &sock_bp, size)?;
        }
        if a.dirty_log {
            dirty_log_section(&a, &sock_bp, size, &works)?;
        }
        return Ok(());
    }
    // fio's random writes would wreck a qcow2 container, so it may run on
    // another file (the raw image with the same data) given by --host-file.
    let host_file = a.host_file.clone().unwrap_or_else(|| a.file.clone());
    let file_size = std::fs::metadata(&host_file)?.len().min(size);
    println!(
        "format={} file={} fio-file={} O_DIRECT={} ({}s per measurement, best of {}; qsd and fio with aio=io_uring)",
        a.format,
        a.file.display(),
        host_file.display(),
        a.direct,
        a.secs,
        a.rounds
    );
    println!(
        "{:<18} {:>15} {:>15} {:>15} {:>15} {:>8} {:>8} {:>8}",
        "workload", "bp io_uring", "bp threads", "qsd", "fio", "/fio", "/qsd", "/threads"
    );
    let bp_run = |aio: &str, w: Work| -> Result<f64> {
        let _b = start_bp(&a, &sock_bp, Some(aio))?;
        let mut dev = BlkDevice::connect(&sock_bp, opts())?;
        run_device(&mut dev, size, w, a.secs)
    };
    for &w in &works {
        // best[i]: contender i's best over the rounds. Each round starts
        // with the next contender, so no one always runs first (or
        // always right after fio) while the machine's load drifts.
        let mut best = [0f64; 4];
        for round in 0..a.rounds as usize {
            for k in 0..4 {
                let i = (round + k) % 4;
                let r = match i {
                    0 => bp_run("io_uring", w)?,
                    1 => bp_run("threads", w)?,
                    2 => {
                        let _b = start_qsd(&a, &sock_qsd)?;
                        let mut dev = BlkDevice::connect(&sock_qsd, opts())?;
                        run_device(&mut dev, size, w, a.secs)?
                    }
                    _ => run_fio(&host_file, file_size, w, a.secs, a.direct)?,
                };
                best[i] = best[i].max(r);
            }
        }
        let (ru, rt, rq, rf) = (best[0], best[1], best[2], best[3]);
        println!(
            "{:<18} {:>15} {:>15} {:>15} {:>15} {:>8.2} {:>8.2} {:>8.2}",
            w.name(),
            fmt(w, ru),
            fmt(w, rt),
            fmt(w, rq),
            fmt(w, rf),
            ru / rf,
            ru / rq,
            ru / rt
        );
    }
    let gaps = recovery_gap(&a, &sock_bp)?;
    println!(
        "recovery gap (SIGKILL block-proc -> first request completed by the new process): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        gaps[gaps.len() / 2],
        gaps[0],
        gaps[gaps.len() - 1]
    );
    if a.cdrom {
        cdrom_section(&a, &sock_bp, size)?;
    }
    if a.dirty_log {
        dirty_log_section(&a, &sock_bp, size, &works)?;
    }
    Ok(())
}

/// block-proc (default aio) with vhost-user dirty logging off and on (as
/// during a live migration: LOG_ALL, SET_LOG_BASE, logged used rings),
/// best of `rounds`, alternating which runs first.
fn dirty_log_section(a: &Args, sock: &Path, size: u64, works: &[Work]) -> Result<()> {
    println!();
    println!(
        "vhost-user dirty logging (LOG_ALL + SET_LOG_BASE, as during a migration), block-proc default aio"
    );
    println!(
        "{:<18} {:>15} {:>15} {:>8}",
        "workload", "logging off", "logging on", "on/off"
    );
    for &w in works {
        let mut best = [0f64; 2];
        for round in 0..a.rounds as usize {
            for k in 0..2 {
                let i = (round + k) % 2;
                let _b = start_bp(a, sock, None)?;
                let mut dev = BlkDevice::connect(sock, opts())?;
                let log = HarnessLog::for_memory(dev.mem().size())?;
                if i == 1 {
                    dev.set_dirty_log(Some(&log), true)?;
                }
                best[i] = best[i].max(run_device(&mut dev, size, w, a.secs)?);
                if i == 1 && log.pages()?.is_empty() {
                    return Err(BenchError::Harness(HarnessError::Invalid(
                        "logging on, but nothing was logged".into(),
                    )));
                }
            }
        }
        println!(
            "{:<18} {:>15} {:>15} {:>8.2}",
            w.name(),
            fmt(w, best[0]),
            fmt(w, best[1]),
            best[1] / best[0]
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("bench-blk: {msg}");
            ExitCode::FAILURE
        }
    }
}
