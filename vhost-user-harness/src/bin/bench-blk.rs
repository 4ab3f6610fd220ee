//! bench-blk: side-by-side vhost-user-blk numbers for block-proc and
//! qemu-storage-daemon on the same image, plus the host's own file I/O on
//! that file, all through the same harness and access patterns.
//!
//! ```text
//! bench-blk --block-proc BIN --file IMG --format raw|qcow2 [--secs S] [--rounds N] [--only I] [--host-file RAW] [--direct]
//! ```

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vhost_user_harness::process::Backend;
use vhost_user_harness::{BlkDevice, BlkOptions, HarnessError, Request};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: bench-blk --block-proc BIN --file IMG --format raw|qcow2 [--secs S] [--rounds N] [--only I] [--host-file RAW] [--direct]")]
    Usage,
    #[error("harness")]
    Harness(#[from] HarnessError),
    #[error("I/O")]
    Io(#[from] std::io::Error),
    #[error("request failed with status {0}")]
    Status(u8),
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

/// The host's own pread/pwrite loop with the same pattern (QD1, one thread).
fn run_host(file: &Path, size: u64, w: Work, secs: f64, direct: bool) -> Result<f64> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(file)?;
    let layout = std::alloc::Layout::from_size_align(w.bs() as usize, 4096)
        .map_err(|_| BenchError::Usage)?;
    let mut buf = vec![0xa5u8; w.bs() as usize + 4096];
    let shift = buf.as_ptr().align_offset(4096);
    let b = &mut buf[shift..shift + layout.size()];
    let mut off = Offsets::new(size, w);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    while Instant::now() < end {
        for _ in 0..16 {
            let o = off.next();
            if w.write() {
                f.write_all_at(b, o)?;
            } else {
                f.read_exact_at(b, o)?;
            }
            ops += 1;
        }
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
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

fn start_bp(a: &Args, sock: &Path) -> Result<Backend> {
    let direct = if a.direct { "true" } else { "false" };
    let json = format!(
        r#"{{"driver":"{}","node-name":"d","file":{{"driver":"file","filename":"{}","cache":{{"direct":{direct}}}}}}}"#,
        a.format,
        a.file.display()
    );
    Ok(Backend::block_proc(&a.bp, sock, &[json], &[])?)
}

fn start_qsd(a: &Args, sock: &Path) -> Result<Backend> {
    let direct = if a.direct { "on" } else { "off" };
    Ok(Backend::qsd(
        sock,
        &[
            format!(
                "driver=file,node-name=f,filename={},cache.direct={direct}",
                a.file.display()
            ),
            format!("driver={},node-name=d,file=f", a.format),
        ],
        "d",
        1,
        true,
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
    let mut bp = start_bp(a, sock)?;
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
        bp = start_bp(a, sock)?;
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
    // it); each workload is measured on block-proc, qsd and the host back
    // to back, `rounds` times keeping the best, so background load on a
    // shared machine hits all three alike.
    let size = {
        let _b = start_bp(&a, &sock_bp)?;
        let mut dev = BlkDevice::connect(&sock_bp, opts())?;
        dev.capacity()? * 512
    };
    // Host writes at random offsets would wreck a qcow2 container, so the
    // host baseline may run on another file (the raw image with the same
    // data) given by --host-file.
    let host_file = a.host_file.clone().unwrap_or_else(|| a.file.clone());
    let file_size = std::fs::metadata(&host_file)?.len().min(size);
    println!(
        "format={} file={} host-file={} O_DIRECT={} ({}s per measurement, best of {}; host = one-thread pread/pwrite loop, qd1)",
        a.format,
        a.file.display(),
        host_file.display(),
        a.direct,
        a.secs,
        a.rounds
    );
    println!(
        "{:<18} {:>15} {:>15} {:>15} {:>8} {:>8}",
        "workload", "block-proc", "qsd", "host", "bp/qsd", "bp/host"
    );
    for w in works {
        let (mut rb, mut rq, mut rh) = (0f64, 0f64, 0f64);
        for _ in 0..a.rounds {
            {
                let _b = start_bp(&a, &sock_bp)?;
                let mut dev = BlkDevice::connect(&sock_bp, opts())?;
                rb = rb.max(run_device(&mut dev, size, w, a.secs)?);
            }
            {
                let _b = start_qsd(&a, &sock_qsd)?;
                let mut dev = BlkDevice::connect(&sock_qsd, opts())?;
                rq = rq.max(run_device(&mut dev, size, w, a.secs)?);
            }
            rh = rh.max(run_host(&host_file, file_size, w, a.secs, a.direct)?);
        }
        println!(
            "{:<18} {:>15} {:>15} {:>15} {:>8.2} {:>8.2}",
            w.name(),
            fmt(w, rb),
            fmt(w, rq),
            fmt(w, rh),
            rb / rq,
            rb / rh
        );
    }
    let gaps = recovery_gap(&a, &sock_bp)?;
    println!(
        "recovery gap (SIGKILL block-proc -> first request completed by the new process): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        gaps[gaps.len() / 2],
        gaps[0],
        gaps[gaps.len() - 1]
    );
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
