//! `bench-net`: net-proc through the VM-less harness against the host
//! kernel's own path, in one run. Port to port first: between two guest
//! NICs on one switch (harness rings on two `x-switch-port`s of net-proc's
//! switch vs two TAPs in a Linux bridge, `rings.rs`) and between two TAPs
//! (net-proc's switch with TAP ports vs a Linux bridge, `switch.rs`). net-proc (spawned sandboxed, driven over
//! its control channel as the broker does) serves a NIC on a TAP; the
//! harness sends into its tx ring and an AF_PACKET socket on the TAP
//! counts what comes out (tx), or the socket sends into the TAP and the
//! harness counts what lands in its rx ring (rx). The peer is a veth pair
//! with an AF_PACKET sender on one end and the same receiver on the other.
//! Then the recovery gap: net-proc SIGKILLed → first frame forwarded by
//! its successor (replay and reconnection included). Needs root.
//!
//! Usage: bench-net --net-proc PATH --tap NAME --veth A,B [--secs S]
//! [--switch-taps A,B --bridge-ports A,B] [--bridge-taps A,B]
//! [--bulkhead PATH --guest PATH [--qemu PATH]] [--only nic|ports|harness]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_proto::net::{NetEvent, NetReply, NetRequest, NicSpec};
use ipc_proto::WorkerKind;
use vhost_user_harness::net::{NetDevice, NetOptions, HDR_LEN};
use vhost_user_harness::worker::ControlledWorker;
use vhost_user_harness::HarnessError;

mod guest;
mod packet;
mod rings;
mod switch;

use packet::Packet;

/// The test frames' EtherType.
pub const ETHERTYPE: u16 = 0x88b5;

struct Args {
    net_proc: String,
    tap: String,
    veth: (String, String),
    secs: f64,
    /// bulkhead, qemu and the `net-gen` guest (the guest NIC ↔ TAP part).
    guest: Option<guest::Programs>,
    /// Port to port: the switch's two TAPs and the bridge's two veth
    /// host ends.
    ports: Option<((String, String), (String, String))>,
    /// NIC to NIC: two TAPs in a Linux bridge (the kernel's path).
    bridge_taps: Option<(String, String)>,
    /// `--only nic|ports|harness`: that table alone (profiling one path).
    only: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = std::env::args().skip(1);
    let (mut net_proc, mut tap, mut veth, mut secs) = (None, None, None, 2.0);
    let (mut bulkhead, mut gen, mut qemu) = (None, None, "qemu-system-x86_64".to_owned());
    let (mut switch, mut bridge, mut bridge_taps, mut only) = (None, None, None, None);
    let pair = |s: String, what: &str| -> Result<(String, String), String> {
        let (x, y) = s.split_once(',').ok_or(format!("{what} A,B"))?;
        Ok((x.to_owned(), y.to_owned()))
    };
    while let Some(k) = a.next() {
        let mut v = || a.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--net-proc" => net_proc = Some(v()?),
            "--tap" => tap = Some(v()?),
            "--veth" => {
                let s = v()?;
                let (x, y) = s.split_once(',').ok_or("--veth A,B")?;
                veth = Some((x.to_owned(), y.to_owned()));
            }
            "--secs" => secs = v()?.parse().map_err(|_| "--secs S")?,
            "--bulkhead" => bulkhead = Some(v()?.into()),
            "--guest" => gen = Some(v()?.into()),
            "--qemu" => qemu = v()?,
            "--switch-taps" => switch = Some(pair(v()?, "--switch-taps")?),
            "--bridge-ports" => bridge = Some(pair(v()?, "--bridge-ports")?),
            "--bridge-taps" => bridge_taps = Some(pair(v()?, "--bridge-taps")?),
            "--only" => match v()?.as_str() {
                o @ ("nic" | "ports" | "harness") => only = Some(o.to_owned()),
                o => return Err(format!("--only nic|ports|harness, not {o}")),
            },
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(Args {
        net_proc: net_proc.ok_or("--net-proc PATH")?,
        tap: tap.ok_or("--tap NAME")?,
        veth: veth.ok_or("--veth A,B")?,
        secs,
        guest: match (bulkhead, gen) {
            (Some(bulkhead), Some(guest)) => Some(guest::Programs {
                bulkhead,
                qemu,
                guest,
            }),
            (None, None) => None,
            _ => return Err("--bulkhead and --guest go together".into()),
        },
        ports: match (switch, bridge) {
            (Some(s), Some(b)) => Some((s, b)),
            (None, None) => None,
            _ => return Err("--switch-taps and --bridge-ports go together".into()),
        },
        bridge_taps,
        only,
    })
}

/// `what` with the last OS error.
pub fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Opens TAP `name` (IFF_VNET_HDR) and returns its fd.
pub fn open_tap(name: &str) -> Result<OwnedFd, String> {
    open_tap_with(name, true)
}

/// Opens TAP `name`, with IFF_VNET_HDR or without, and returns its fd.
pub fn open_tap_with(name: &str, vnet_hdr: bool) -> Result<OwnedFd, String> {
    // SAFETY: open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("/dev/net/tun"));
    }
    // SAFETY: just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let vnet = if vnet_hdr { 0x4000u16 } else { 0 };
    req[16..18].copy_from_slice(&(0x0002u16 | 0x1000 | vnet).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes the 40-byte ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), 0x4004_54ca as _, req.as_mut_ptr()) } < 0 {
        return Err(os_err("TUNSETIFF"));
    }
    Ok(fd)
}

/// A test frame of `len` bytes (broadcast, EtherType [`ETHERTYPE`], `seq`).
pub fn frame(len: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(len, 0xa5);
    f
}

/// Counts frames arriving on `sock` until `stop`.
fn counter(
    sock: Arc<Packet>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            if sock.recv(&mut buf) > 0 {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// A net-proc driven as the broker drives it (sandboxed, on its control
/// channel), killed on drop.
pub struct Worker(ControlledWorker<NetRequest, NetReply, NetEvent>);

impl Worker {
    /// Spawns `exe` sandboxed.
    pub fn spawn(exe: &str) -> Result<Worker, String> {
        ControlledWorker::spawn(std::path::Path::new(exe), WorkerKind::Net, 61005)
            .map(Worker)
            .map_err(|e| format!("{exe}: {e}"))
    }

    /// Sends `body` with `fds`; the reply.
    pub fn call(
        &mut self,
        body: NetRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<NetReply, String> {
        self.0.call(body, fds).map_err(herr)?.map_err(|e| e.desc)
    }

    /// The process id of the net-proc.
    fn pid(&self) -> i32 {
        self.0.child.id() as i32
    }

    /// Waits for the (killed) net-proc to end.
    fn reap(&mut self) {
        let _ = self.0.child.wait();
    }

    fn stats(&mut self) -> Result<ipc_proto::net::NicStats, String> {
        // (NetReply has test-hook variants when a workspace build turns
        // them on, so no exhaustive match here.)
        let reply = self.call(NetRequest::QueryStats { id: "n".into() }, &[])?;
        if let NetReply::Stats(s) = reply {
            return Ok(s);
        }
        Err(format!("unexpected reply {reply:?}"))
    }

    /// The TAP and NIC replayed, and a connection for the NIC.
    fn setup(&mut self, tap: &OwnedFd) -> Result<UnixStream, String> {
        let fd = tap.try_clone().map_err(|e| e.to_string())?;
        self.call(
            NetRequest::AddTapNetdev {
                id: "t".into(),
                vnet_hdr: true,
            },
            &[fd.as_fd()],
        )?;
        let spec = NicSpec {
            id: "n".into(),
            netdev: "t".into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            queue_pairs: 1,
            mtu: Some(9000),
            link_up: true,
        };
        self.call(NetRequest::AddNic(spec), &[])?;
        let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        self.call(
            NetRequest::AttachNicConnection { id: "n".into() },
            &[theirs.as_fd()],
        )?;
        Ok(ours)
    }
}

fn herr(e: HarnessError) -> String {
    e.to_string()
}

/// Harness tx → net-proc → TAP → AF_PACKET: frames/s received.
fn tx_rate(dev: &mut NetDevice, tap: &str, len: usize, secs: f64) -> Result<f64, String> {
    let sock = Arc::new(Packet::bind(tap, ETHERTYPE)?);
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let t = counter(sock, stop.clone(), count.clone());
    // The frames wait in the sender's memory, as the AF_PACKET sender's
    // buffer does: only the descriptors are published per frame.
    while dev.reap_tx(0).map_err(herr)? > 0 {}
    dev.prefill_tx(0, &[0u8; HDR_LEN], &frame(len, 0))
        .map_err(herr)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        dev.reap_tx(0).map_err(herr)?;
        let mut queued = 0;
        loop {
            match dev.queue_tx_prefilled(0) {
                Ok(()) => queued += 1,
                Err(HarnessError::QueueFull(_)) => break,
                Err(e) => return Err(herr(e)),
            }
            if queued == 64 {
                break;
            }
        }
        dev.kick_tx(0).map_err(herr)?;
        if queued == 0 {
            std::thread::yield_now();
        }
    }
    let n = count.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    Ok(n as f64 / el)
}

/// AF_PACKET → TAP → net-proc → harness rx: frames/s received.
fn rx_rate(dev: &mut NetDevice, tap: &str, len: usize, secs: f64) -> Result<f64, String> {
    let sock = Arc::new(Packet::bind(tap, ETHERTYPE)?);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let f = frame(len, 0);
    let sender = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            sock.send(&f);
        }
    });
    dev.fill_rx(0).map_err(herr)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        n += dev.count_rx(0, Duration::from_millis(100)).map_err(herr)? as u64;
    }
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    // Drain what is left.
    while dev.count_rx(0, Duration::from_millis(50)).map_err(herr)? > 0 {}
    Ok(n as f64 / el)
}

/// AF_PACKET on veth A → veth B → AF_PACKET: frames/s received.
fn veth_rate(a: &str, b: &str, len: usize, secs: f64) -> Result<f64, String> {
    let tx = Packet::bind(a, ETHERTYPE)?;
    let rx = Arc::new(Packet::bind(b, ETHERTYPE)?);
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let t = counter(rx, stop.clone(), count.clone());
    let f = frame(len, 0);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..64 {
            tx.send(&f);
        }
    }
    let n = count.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    Ok(n as f64 / el)
}

/// Frame sizes: (length without FCS, label).
const SIZES: [(usize, &str); 3] = [(64, "64 B"), (1514, "1500 B"), (9014, "9000 B")];

/// `pps` of `len`-byte frames as the table shows it.
fn fmt_rate(len: usize, pps: f64) -> String {
    if len == 64 {
        format!("{:.0} kpps", pps / 1e3)
    } else {
        format!("{:.2} Gbit/s", pps * len as f64 * 8.0 / 1e9)
    }
}

fn run() -> Result<(), String> {
    let a = args()?;
    let only = a.only.as_deref();
    if let (Some(taps), None | Some("nic")) = (&a.bridge_taps, only) {
        nic_to_nic(&a, taps)?;
    }
    if let (Some((taps, ports)), None | Some("ports")) = (&a.ports, only) {
        port_to_port(&a, taps, ports)?;
    }
    if only.is_some_and(|o| o != "harness") {
        return Ok(());
    }
    let veth = harness(&a)?;
    if only.is_some() {
        return Ok(());
    }
    if let Some(p) = &a.guest {
        guests(&a, p, &veth)?;
    }
    Ok(())
}

/// NIC to NIC: two guest NICs' rings through net-proc's switch against
/// two TAPs through the kernel's bridge (`rings.rs`).
fn nic_to_nic(a: &Args, taps: &(String, String)) -> Result<(), String> {
    let (w, mut na, mut nb) = rings::start(&a.net_proc)?;
    println!(
        "NIC to NIC through a switch (A's frames counted out of B): net-proc = harness tx ring \
         -> rocker switch -> harness rx ring (two x-switch-port NICs); kernel = write(TAP A) -> \
         Linux bridge -> read(TAP B):"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>10}   sent/out: net-proc, kernel",
        "frame", "net-proc rings", "kernel taps", "ratio"
    );
    for (len, label) in SIZES {
        let (sw, back) = rings::rings(na, &mut nb, len, a.secs)?;
        na = back;
        let br = rings::taps(&taps.0, &taps.1, len, a.secs)?;
        pair_row(label, len, &sw, &br);
    }
    drop((na, nb, w));
    println!();
    Ok(())
}

/// One row of a two-column table: net-proc's run, the kernel's, their
/// ratio and each one's sent/arrived counts.
fn pair_row(label: &str, len: usize, ours: &guest::Run, kernel: &guest::Run) {
    println!(
        "{:<8} {:>14} {:>14} {:>9.2}x   {}/{}, {}/{}",
        label,
        fmt_rate(len, ours.pps),
        fmt_rate(len, kernel.pps),
        ours.pps / kernel.pps,
        ours.sent,
        ours.arrived,
        kernel.sent,
        kernel.arrived
    );
}

/// Port to port: net-proc's switch against the kernel's bridge.
fn port_to_port(a: &Args, taps: &(String, String), ports: &(String, String)) -> Result<(), String> {
    let w = switch::start_switch(&a.net_proc, &taps.0, &taps.1)?;
    println!(
        "TAP port to TAP port (broadcast frames sent by AF_PACKET into one port, counted out of \
         the other): net-proc = rocker switch on two TAPs; kernel = Linux bridge on two veths:"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>10}   sent/out: switch, bridge",
        "frame", "net-proc sw", "kernel bridge", "ratio"
    );
    for (len, label) in SIZES {
        let sw = switch::blast(&taps.0, &taps.1, len, a.secs)?;
        let br = switch::blast(&ports.0, &ports.1, len, a.secs)?;
        pair_row(label, len, &sw, &br);
    }
    drop(w);
    println!();
    Ok(())
}

/// Guest NIC ↔ TAP under bulkhead and under QEMU (tap, vhost=off), with
/// `veth` (frames/s of the kernel's veth path per size) beside them.
fn guests(a: &Args, p: &guest::Programs, veth: &[f64]) -> Result<(), String> {
    let mut runs = Vec::new();
    for vmm in [guest::Vmm::Bulkhead, guest::Vmm::Qemu] {
        let m = guest::Machine::start(vmm, p, &a.tap)?;
        let mut per_size = Vec::new();
        for (len, _) in SIZES {
            let tx = guest::tx(&a.tap, len, a.secs).map_err(|e| format!("{vmm:?}: {e}"))?;
            let rx = guest::rx(&a.tap, len, a.secs).map_err(|e| format!("{vmm:?}: {e}"))?;
            per_size.push((tx, rx));
        }
        if std::env::var_os("BENCH_NET_SERIAL").is_some() {
            print!("{}", m.serial());
        }
        runs.push(per_size);
    }
    println!();
    println!("guest NIC <-> TAP (net-gen guest, same TAP; host counts tx at the TAP, the guest counts rx):");
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>8} {:>8} | {:>14} {:>14} {:>8}",
        "frame",
        "bulkhead tx",
        "qemu tx",
        "kernel veth",
        "vs qemu",
        "vs veth",
        "bulkhead rx",
        "qemu rx",
        "vs qemu"
    );
    let mut notes = Vec::new();
    for (i, (len, label)) in SIZES.into_iter().enumerate() {
        let ((btx, brx), (qtx, qrx)) = (runs[0][i], runs[1][i]);
        println!(
            "{:<8} {:>14} {:>14} {:>14} {:>7.2}x {:>7.2}x | {:>14} {:>14} {:>7.2}x",
            label,
            fmt_rate(len, btx.pps),
            fmt_rate(len, qtx.pps),
            fmt_rate(len, veth[i]),
            btx.pps / qtx.pps,
            btx.pps / veth[i],
            fmt_rate(len, brx.pps),
            fmt_rate(len, qrx.pps),
            brx.pps / qrx.pps,
        );
        notes.push(format!(
            "{label}: tx guest sent/TAP got: bulkhead {}/{}, qemu {}/{}; rx host sent/guest got: bulkhead {}/{}, qemu {}/{}",
            btx.sent, btx.arrived, qtx.sent, qtx.arrived, brx.sent, brx.arrived, qrx.sent, qrx.arrived
        ));
    }
    for n in notes {
        println!("{n}");
    }
    Ok(())
}

/// The harness part (see the module doc); returns the veth rates per size.
fn harness(a: &Args) -> Result<Vec<f64>, String> {
    let tap = open_tap(&a.tap)?;
    let mut w = Worker::spawn(&a.net_proc)?;
    // Page-sized rx buffers, as Linux's mergeable rx buffers are.
    let opts = NetOptions {
        queue_size: 1024,
        rx_buf_len: 4096,
        ..NetOptions::default()
    };
    let mut dev = NetDevice::from_stream(w.setup(&tap)?, opts).map_err(herr)?;
    println!(
        "guest NIC <-> TAP through the harness: tx = harness tx ring -> net-proc -> TAP (counted \
         by AF_PACKET), rx = AF_PACKET -> TAP -> net-proc -> harness rx ring; kernel = AF_PACKET \
         -> veth pair -> AF_PACKET:"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "frame", "net-proc tx", "net-proc rx", "kernel veth", "tx ratio", "rx ratio"
    );
    let mut notes = Vec::new();
    let mut veth = Vec::new();
    for (len, label) in SIZES {
        let tx = tx_rate(&mut dev, &a.tap, len, a.secs)?;
        let before = w.stats()?;
        let rx = rx_rate(&mut dev, &a.tap, len, a.secs)?;
        let after = w.stats()?;
        notes.push(format!(
            "{label}: net-proc rx delivered {} frames, dropped {} (no guest buffers)",
            after.rx_packets - before.rx_packets,
            after.rx_dropped - before.rx_dropped
        ));
        let peer = veth_rate(&a.veth.0, &a.veth.1, len, a.secs)?;
        veth.push(peer);
        println!(
            "{:<8} {:>14} {:>14} {:>14} {:>9.2}x {:>9.2}x",
            label,
            fmt_rate(len, tx),
            fmt_rate(len, rx),
            fmt_rate(len, peer),
            tx / peer,
            rx / peer
        );
    }
    for n in notes {
        println!("{n}");
    }
    // Recovery gap: SIGKILL → replay → reconnect → first frame out.
    let sock = Packet::bind(&a.tap, ETHERTYPE)?;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| e.to_string())?;
        w.reap();
        w = Worker::spawn(&a.net_proc)?;
        dev.reconnect(w.setup(&tap)?).map_err(herr)?;
        dev.send(0, &frame(64, 7)).map_err(herr)?;
        let mut buf = vec![0u8; 65_536];
        loop {
            if sock.recv(&mut buf) > 0 {
                break;
            }
            if killed.elapsed() > Duration::from_secs(10) {
                return Err("no frame after the restart".into());
            }
        }
        gaps.push(killed.elapsed().as_secs_f64() * 1e3);
    }
    gaps.sort_by(f64::total_cmp);
    println!(
        "recovery gap (SIGKILL -> first frame forwarded, spawn + replay + reconnect): \
         median {:.1} ms, max {:.1} ms over {} kills",
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        gaps.len()
    );
    Ok(veth)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-net: {e}");
            ExitCode::FAILURE
        }
    }
}
