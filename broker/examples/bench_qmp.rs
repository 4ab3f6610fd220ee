//! QMP benchmark, bulkhead beside qemu-storage-daemon in one run, with the
//! same client for both:
//! - spawn → greeting time of each server (median of several starts),
//!   and bulkhead's spawn → first `query-status` answered (VM up);
//! - round-trip latency (p50/p99, in rounds alternating between the
//!   servers) of `query-version` (answered by the broker itself) and
//!   `query-status` (answered through vcpu-proc) on bulkhead, and of
//!   `query-version` on qemu-storage-daemon;
//! - the ratios with their targets (≤ 0.3 for a command the broker
//!   answers itself, ≤ 1.0 for one that goes through a worker, ≤ 1.5 for
//!   spawn → greeting).
//!
//! Usage: `bench_qmp --bulkhead PATH [--qsd PATH] [--iters N] [--starts N]`
//! (normally through `scripts/bench-qmp`, which builds it in release).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    bulkhead: PathBuf,
    qsd: PathBuf,
    iters: usize,
    starts: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        bulkhead: PathBuf::from("target/release/bulkhead"),
        qsd: PathBuf::from("qemu-storage-daemon"),
        iters: 5000,
        starts: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bulkhead" => o.bulkhead = PathBuf::from(val()?),
            "--qsd" => o.qsd = PathBuf::from(val()?),
            "--iters" => o.iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--starts" => o.starts = val()?.parse().map_err(|e| format!("--starts: {e}"))?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(o)
}

/// A server process with its QMP socket; killed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Bulkhead,
    Qsd,
}

fn spawn(kind: Kind, o: &Opts, n: usize) -> Result<(Server, Duration, Client), String> {
    let dir = std::env::temp_dir().join(format!(
        "bench-qmp-{}-{}-{n}",
        std::process::id(),
        name(kind)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("q.sock");
    let mut cmd = match kind {
        Kind::Bulkhead => {
            let mut c = Command::new(&o.bulkhead);
            c.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", sock.display()))
                .args(["-serial", "null"]);
            c
        }
        Kind::Qsd => {
            let mut c = Command::new(&o.qsd);
            c.arg("--chardev")
                .arg(format!(
                    "socket,path={},server=on,wait=off,id=m",
                    sock.display()
                ))
                .args(["--monitor", "chardev=m"]);
            c
        }
    };
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        // Servers killed mid-start complain; only the timings matter here.
        .stderr(if n >= 1000 {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(|e| format!("cannot start {kind:?}: {e}", kind = name(kind)))?;
    let mut server = Server { child, dir, sock };
    let stream = loop {
        match UnixStream::connect(&server.sock) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                if let Ok(Some(st)) = server.child.try_wait() {
                    return Err(format!("{} exited: {st}", name(kind)));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(format!("{}: no QMP socket: {e}", name(kind))),
        }
    };
    let mut client = Client::new(stream)?;
    if let Err(e) = client.line() {
        let status = server.child.try_wait().ok().flatten();
        return Err(format!(
            "{} (start {n}): no greeting: {e} (exit status: {status:?})",
            name(kind)
        ));
    }
    let ready = start.elapsed();
    server.sock = server.sock.clone();
    Ok((server, ready, client))
}

/// A second negotiated session on a running server.
fn b_client(s: &Server) -> Result<Client, String> {
    let stream = UnixStream::connect(&s.sock).map_err(|e| e.to_string())?;
    let mut c = Client::new(stream)?;
    c.line()?;
    c.call(b"{\"execute\": \"qmp_capabilities\"}")?;
    Ok(c)
}

fn name(k: Kind) -> &'static str {
    match k {
        Kind::Bulkhead => "bulkhead",
        Kind::Qsd => "qemu-storage-daemon",
    }
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
    buf: String,
}

impl Client {
    fn new(s: UnixStream) -> Result<Self, String> {
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(Client {
            w: s,
            r,
            buf: String::new(),
        })
    }

    fn line(&mut self) -> Result<&str, String> {
        self.buf.clear();
        match self.r.read_line(&mut self.buf) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(&self.buf),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends `msg` and waits for its reply (skipping events).
    fn call(&mut self, msg: &[u8]) -> Result<(), String> {
        self.w.write_all(msg).map_err(|e| e.to_string())?;
        loop {
            let l = self.line()?;
            if l.starts_with("{\"return\"") {
                return Ok(());
            }
            if l.contains("\"error\"") {
                return Err(format!("error reply: {l}"));
            }
        }
    }
}

/// Round trips of `cmd` on `c`, `n` of them, appended to `out`.
fn measure(c: &mut Client, cmd: &str, n: usize, out: &mut Vec<Duration>) -> Result<(), String> {
    let msg = format!("{{\"execute\": \"{cmd}\"}}\n");
    for _ in 0..n {
        let t = Instant::now();
        c.call(msg.as_bytes())?;
        out.push(t.elapsed());
    }
    Ok(())
}

/// `iters` round trips of each (client, command) pair, taken in rounds of
/// [`ROUND`] that alternate between the pairs, so a change of machine load
/// during the run weighs on every server alike; sorted per pair.
fn latencies(
    pairs: &mut [(&mut Client, &str)],
    iters: usize,
) -> Result<Vec<Vec<Duration>>, String> {
    let mut out = vec![Vec::with_capacity(iters); pairs.len()];
    // Warm-up, not counted.
    let mut scratch = Vec::new();
    for (c, cmd) in pairs.iter_mut() {
        measure(c, cmd, iters / 10, &mut scratch)?;
    }
    let mut done = 0;
    while done < iters {
        let n = ROUND.min(iters - done);
        for ((c, cmd), o) in pairs.iter_mut().zip(out.iter_mut()) {
            measure(c, cmd, n, o)?;
        }
        done += n;
    }
    for o in &mut out {
        o.sort();
    }
    Ok(out)
}

/// Round trips per turn when alternating between servers.
const ROUND: usize = 100;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median spawn -> greeting time of `kind`, and for bulkhead also the
/// median spawn -> first `query-status` answered (the VM is up: the
/// greeting comes before the workers are).
fn startup(kind: Kind, o: &Opts) -> Result<(Duration, Duration), String> {
    let mut greet = Vec::new();
    let mut up = Vec::new();
    for n in 0..o.starts {
        let (_server, ready, mut c) = spawn(kind, o, 1000 + n)?;
        greet.push(ready);
        if let Kind::Bulkhead = kind {
            let t = Instant::now();
            c.call(b"{\"execute\": \"qmp_capabilities\"}")?;
            c.call(b"{\"execute\": \"query-status\"}")?;
            up.push(ready + t.elapsed());
        }
    }
    greet.sort();
    up.sort();
    Ok((pct(&greet, 0.5), pct(&up, 0.5)))
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
    if !Path::new(&o.bulkhead).exists() {
        return Err(format!("{} not found", o.bulkhead.display()));
    }
    println!(
        "QMP benchmark: {} iterations per command, {} starts per server",
        o.iters, o.starts
    );

    let (_b, _, mut bc) = spawn(Kind::Bulkhead, &o, 1)?;
    bc.call(b"{\"execute\": \"qmp_capabilities\"}")?;
    // A second session for query-status, so each session keeps one command.
    let mut bc2 = b_client(&_b)?;
    let (_q, _, mut qc) = spawn(Kind::Qsd, &o, 2)?;
    qc.call(b"{\"execute\": \"qmp_capabilities\"}")?;

    let lat = latencies(
        &mut [
            (&mut bc, "query-version"),
            (&mut bc2, "query-status"),
            (&mut qc, "query-version"),
        ],
        o.iters,
    )?;
    let [bv, bs, qv] = [&lat[0], &lat[1], &lat[2]];

    println!("{:<44} {:>10} {:>10}", "round trip", "p50 µs", "p99 µs");
    for (label, v) in [
        ("bulkhead query-version (broker only)", bv),
        ("bulkhead query-status (through vcpu-proc)", bs),
        ("qemu-storage-daemon query-version", qv),
    ] {
        println!(
            "{label:<44} {:>10.1} {:>10.1}",
            us(pct(v, 0.5)),
            us(pct(v, 0.99))
        );
    }
    let r1 = us(pct(bv, 0.5)) / us(pct(qv, 0.5));
    let r2 = us(pct(bs, 0.5)) / us(pct(qv, 0.5));
    println!("ratio p50 bulkhead query-version / qsd query-version: {r1:.2} (target <= 0.3)");
    println!("ratio p50 bulkhead query-status  / qsd query-version: {r2:.2} (target <= 1.0)");

    drop((bc, bc2, qc));
    let (bstart, bup) = startup(Kind::Bulkhead, &o)?;
    let (qstart, _) = startup(Kind::Qsd, &o)?;
    println!(
        "spawn -> greeting (median): bulkhead {:.1} ms, qemu-storage-daemon {:.1} ms, ratio {:.2} (target <= 1.5)",
        bstart.as_secs_f64() * 1e3,
        qstart.as_secs_f64() * 1e3,
        bstart.as_secs_f64() / qstart.as_secs_f64()
    );
    println!(
        "spawn -> first query-status answered (VM up, median): bulkhead {:.1} ms",
        bup.as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_qmp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
