//! Port to port between two guest NICs: what two VMs' NICs on one host
//! switch cost. net-proc: two harness devices are the NICs of two
//! `x-switch-port` netdevs of one rocker switch; one thread queues frames
//! on A's tx ring, another counts what lands in B's rx ring (net-proc
//! forwards ring to ring, no syscall per frame). The kernel's own path
//! for two VM NICs: two TAPs in a Linux bridge, one thread writing frames
//! into TAP A's fd, another reading TAP B's fd (as QEMU's tap netdev
//! with vhost=off does per frame). Same frames, same run time; frames/s
//! counted at the receiver.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_proto::net::{NetReply, NetRequest, NicSpec};
use vhost_user_harness::net::{NetDevice, NetOptions, HDR_LEN};
use vhost_user_harness::HarnessError;

use crate::guest::Run;
use crate::{open_tap_with, os_err, Worker, ETHERTYPE};

const A: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x0a];
const B: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x0b];

/// A `len`-byte frame from A to B.
fn frame(len: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let mut f = [dst, src].concat();
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.resize(len, 0xa5);
    f
}

fn herr(e: HarnessError) -> String {
    e.to_string()
}

/// net-proc with switch `sw` on two switch ports, a NIC on each, and the
/// harness connected to both (A, B). B has sent one frame, so the switch
/// knows where B is and A's frames go only there.
pub fn start(net_proc: &str) -> Result<(Worker, NetDevice, NetDevice), String> {
    let mut w = Worker::spawn(net_proc)?;
    for p in ["pa", "pb"] {
        w.call(NetRequest::AddSwitchPortNetdev { id: p.into() }, &[])?;
    }
    crate::switch::create(&mut w)?;
    let mut devs = Vec::new();
    for (nic, port, mac) in [("na", "pa", A), ("nb", "pb", B)] {
        let spec = NicSpec {
            id: nic.into(),
            netdev: port.into(),
            mac,
            queue_pairs: 1,
            mtu: Some(9000),
            link_up: true,
        };
        w.call(NetRequest::AddNic(spec), &[])?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        let reply = w.call(
            NetRequest::AttachNicConnection { id: nic.into() },
            &[std::os::fd::AsFd::as_fd(&theirs)],
        )?;
        if reply != NetReply::Done {
            return Err(format!("attach {nic}: {reply:?}"));
        }
        // Page-sized rx buffers, as Linux's mergeable rx buffers are.
        let opts = NetOptions {
            queue_size: 1024,
            rx_buf_len: 4096,
            ..NetOptions::default()
        };
        let mut dev = NetDevice::from_stream(ours, opts).map_err(herr)?;
        dev.fill_rx(0).map_err(herr)?;
        devs.push(dev);
    }
    let (Some(mut b), Some(mut a)) = (devs.pop(), devs.pop()) else {
        return Err("two devices".into());
    };
    b.send(0, &frame(64, B, A)).map_err(herr)?;
    a.recv(0).map_err(herr)?;
    Ok((w, a, b))
}

/// `len`-byte frames from A's tx ring for `secs`; what B's rx ring got.
pub fn rings(
    a: NetDevice,
    b: &mut NetDevice,
    len: usize,
    secs: f64,
) -> Result<(Run, NetDevice), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let sender = std::thread::spawn(move || -> Result<(u64, NetDevice), String> {
        let mut a = a;
        // The frames wait in the sender's memory, as the TAP writer's
        // buffer does: only the descriptors are published per frame.
        a.prefill_tx(0, &[0u8; HDR_LEN], &frame(len, A, B))
            .map_err(herr)?;
        let mut sent = 0u64;
        while !s2.load(Ordering::Relaxed) {
            a.reap_tx(0).map_err(herr)?;
            let mut queued = 0;
            while queued < 64 {
                match a.queue_tx_prefilled(0) {
                    Ok(()) => queued += 1,
                    Err(HarnessError::QueueFull(_)) => break,
                    Err(e) => return Err(herr(e)),
                }
            }
            a.kick_tx(0).map_err(herr)?;
            sent += queued;
            if queued == 0 {
                std::thread::yield_now();
            }
        }
        Ok((sent, a))
    });
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut arrived = 0u64;
    while Instant::now() < end {
        arrived += b.count_rx(0, Duration::from_millis(100)).map_err(herr)? as u64;
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, a) = sender.join().map_err(|_| "sender panicked")??;
    // Frames still in flight come out within moments.
    let drain_end = Instant::now() + Duration::from_millis(50);
    while Instant::now() < drain_end {
        arrived += b.count_rx(0, Duration::from_millis(10)).map_err(herr)? as u64;
    }
    let el = start.elapsed().as_secs_f64();
    Ok((
        Run {
            pps: arrived as f64 / el,
            sent,
            arrived,
        },
        a,
    ))
}

/// Sets `fd` non-blocking.
fn nonblocking(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: fcntl on an fd we own.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(os_err("O_NONBLOCK"));
    }
    Ok(())
}

/// `len`-byte frames written into TAP `from` for `secs` (its Linux
/// bridge forwards them to TAP `to`); what a reader of `to`'s fd got.
pub fn taps(from: &str, to: &str, len: usize, secs: f64) -> Result<Run, String> {
    let tx = open_tap_with(from, false)?;
    let rx = open_tap_with(to, false)?;
    nonblocking(&rx)?;
    // Let the bridge see both ports up (carrier comes with the fd).
    std::thread::sleep(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (s2, n2) = (stop.clone(), sent.clone());
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let f = frame(len, A, B);
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            for _ in 0..64 {
                // SAFETY: writes `f.len()` bytes from `f` to an fd we own.
                let r = unsafe { libc::write(tx.as_raw_fd(), f.as_ptr().cast(), f.len()) };
                n += u64::from(r > 0);
            }
        }
        n2.store(n, Ordering::Relaxed);
    });
    let end = start + Duration::from_secs_f64(secs);
    let mut buf = vec![0u8; 65_536];
    let mut arrived = 0u64;
    let drain = Duration::from_millis(50);
    loop {
        let now = Instant::now();
        if now >= end {
            stop.store(true, Ordering::Relaxed);
        }
        if now >= end + drain {
            break;
        }
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let r = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            // Only the test frames (the kernel may send its own).
            if buf[12..14] == ETHERTYPE.to_be_bytes() {
                arrived += 1;
            }
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 10) };
    }
    let _ = writer.join();
    let el = start.elapsed().as_secs_f64();
    Ok(Run {
        pps: arrived as f64 / el,
        sent: sent.load(Ordering::Relaxed),
        arrived,
    })
}
