//! Guest NIC ↔ TAP: the `net-gen` test guest (see its `gen_frame`) runs
//! under bulkhead (its virtio-net NIC through net-proc onto the TAP) and
//! under `qemu-system-x86_64 -M microvm` with `-netdev tap,vhost=off`
//! (QEMU's own userspace virtio-net on the same TAP), one after the other.
//! The host side orders each run with a control frame on the TAP. Guest
//! tx: the guest sends for the run's time; the host counts what the TAP
//! delivered to the kernel (the interface's `rx_packets`, so counting
//! costs nothing), over the time from its order to the guest's answer.
//! Guest rx: an AF_PACKET sender writes data frames into the TAP for the
//! run's time and the guest counts what reached it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::packet::Packet;

/// The guests' frames.
#[path = "../../../../test-guests/net/src/gen_frame.rs"]
#[allow(dead_code)]
mod gen_frame;

use gen_frame::{Control, CONTROL_ETHERTYPE, OP_DONE, OP_RX, OP_TX};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GUEST_MAC_STR: &str = "52:54:00:12:34:56";
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The two machines that run the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// bulkhead: NIC through net-proc.
    Bulkhead,
    /// QEMU's tap netdev with vhost=off.
    Qemu,
}

/// One run's result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Frames per second that arrived (at the TAP for tx, in the guest for rx).
    pub pps: f64,
    /// Frames the sender sent.
    pub sent: u64,
    /// Frames that arrived.
    pub arrived: u64,
}

/// Where the programs are.
pub struct Programs {
    /// The bulkhead binary (its workers beside it).
    pub bulkhead: PathBuf,
    /// qemu-system-x86_64.
    pub qemu: String,
    /// The `net-gen` ELF.
    pub guest: PathBuf,
}

/// A machine running `net-gen` on `tap`, killed on drop.
pub struct Machine {
    child: Child,
    serial: PathBuf,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.serial);
    }
}

impl Machine {
    /// Starts `vmm` with the guest's NIC on `tap` and waits for the guest.
    pub fn start(vmm: Vmm, p: &Programs, tap: &str) -> Result<Machine, String> {
        let serial =
            std::env::temp_dir().join(format!("bench-net-{}-{:?}.serial", std::process::id(), vmm));
        let _ = std::fs::remove_file(&serial);
        let kernel = p.guest.display().to_string();
        let serial_arg = format!("file:{}", serial.display());
        let nic = format!("virtio-net-device,netdev=n0,mac={GUEST_MAC_STR}");
        let mut cmd = match vmm {
            Vmm::Bulkhead => {
                let mut c = Command::new(&p.bulkhead);
                c.args(["-m", "64", "-kernel", &kernel, "-serial", &serial_arg]);
                c.args([
                    "-netdev",
                    &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                ]);
                c
            }
            Vmm::Qemu => {
                let mut c = Command::new(&p.qemu);
                c.args([
                    "-M",
                    "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off",
                    "-bios",
                    "/usr/share/qemu/qboot.rom",
                    "-enable-kvm",
                    "-cpu",
                    "qemu64,-pni",
                    "-m",
                    "64",
                    "-nodefaults",
                    "-display",
                    "none",
                    "-no-reboot",
                    "-device",
                    "isa-debug-exit,iobase=0xf4,iosize=0x04",
                    "-global",
                    "virtio-mmio.force-legacy=false",
                    "-kernel",
                    &kernel,
                    "-serial",
                    &serial_arg,
                ]);
                c.args([
                    "-netdev",
                    &format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
                ]);
                c
            }
        };
        cmd.args(["-device", &nic])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
        let mut m = Machine { child, serial };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&m.serial).unwrap_or_default();
            if text.contains("net-gen: ready") {
                return Ok(m);
            }
            if let Ok(Some(st)) = m.child.try_wait() {
                return Err(format!("{vmm:?} exited ({st}); serial: {text}"));
            }
            if Instant::now() > deadline {
                return Err(format!("{vmm:?}: the guest is not ready; serial: {text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guest's serial output so far.
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
}

/// Counter `stat` of interface `ifname` (`/sys/class/net/*/statistics`).
pub fn if_stat(ifname: &str, stat: &str) -> Result<u64, String> {
    let path = Path::new("/sys/class/net")
        .join(ifname)
        .join("statistics")
        .join(stat);
    std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn order(ctrl: &Packet, op: u8, size: usize, ms: u32) -> Result<(), String> {
    let mut buf = [0u8; gen_frame::CONTROL_LEN];
    let c = Control {
        op,
        size: size as u16,
        ms,
        count: 0,
    };
    let len = gen_frame::control(&mut buf, GUEST_MAC, HOST_MAC, &c).ok_or("control frame")?;
    if !ctrl.send(&buf[..len]) {
        return Err(crate::os_err("sending the order"));
    }
    Ok(())
}

/// The guest's `OP_DONE` count.
fn done(ctrl: &Packet, within: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        let n = ctrl.recv(&mut buf);
        if let Some((c, _)) = gen_frame::parse_control(&buf[..n]) {
            if c.op == OP_DONE {
                return Ok(c.count);
            }
        }
    }
    Err("the guest did not report the end of the run".into())
}

/// Guest tx of `len`-byte frames for `secs`: frames/s out of the TAP.
pub fn tx(tap: &str, len: usize, secs: f64) -> Result<Run, String> {
    let ctrl = Packet::bind(tap, CONTROL_ETHERTYPE)?;
    let ms = (secs * 1000.0) as u32;
    let before = if_stat(tap, "rx_packets")?;
    let start = Instant::now();
    order(&ctrl, OP_TX, len, ms)?;
    let sent = done(&ctrl, Duration::from_millis(u64::from(ms) + 5000))?;
    let el = start.elapsed().as_secs_f64();
    // The answer came through the TAP too.
    let arrived = if_stat(tap, "rx_packets")?.saturating_sub(before + 1);
    Ok(Run {
        pps: arrived as f64 / el,
        sent,
        arrived,
    })
}

/// Guest rx of `len`-byte frames for `secs`: frames/s the guest counted.
pub fn rx(tap: &str, len: usize, secs: f64) -> Result<Run, String> {
    let ctrl = Packet::bind(tap, CONTROL_ETHERTYPE)?;
    let ms = (secs * 1000.0) as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let data = Packet::bind(tap, CONTROL_ETHERTYPE)?;
    order(&ctrl, OP_RX, len, ms)?;
    let (s2, n2) = (stop.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        let mut f = vec![0xa5u8; len];
        let mut seq = 0u32;
        while !s2.load(Ordering::Relaxed) {
            gen_frame::data(&mut f, GUEST_MAC, HOST_MAC, seq);
            if data.send(&f) {
                seq = seq.wrapping_add(1);
            }
        }
        n2.store(u64::from(seq), Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_millis(u64::from(ms)));
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let arrived = done(&ctrl, Duration::from_secs(5))?;
    Ok(Run {
        pps: arrived as f64 / secs,
        sent: sent.load(Ordering::Relaxed),
        arrived,
    })
}

#[cfg(test)]
mod tests {
    use super::gen_frame::*;

    #[test]
    fn control_frames_round_trip_and_other_frames_are_not_orders() {
        let c = Control {
            op: OP_TX,
            size: 9014,
            ms: 2000,
            count: 0x0102_0304_0506,
        };
        let mut buf = [0u8; 64];
        let n = control(&mut buf, [1; 6], [2; 6], &c).unwrap();
        assert_eq!(n, CONTROL_LEN);
        assert_eq!(parse_control(&buf[..n]), Some((c, [2; 6])));
        assert!(control(&mut [0u8; 59], [1; 6], [2; 6], &c).is_none());
        let mut data_frame = [0u8; 64];
        data(&mut data_frame, [1; 6], [2; 6], 7);
        assert_eq!(parse_control(&data_frame), None);
        buf[14] = b'X';
        assert_eq!(parse_control(&buf[..n]), None);
    }

    #[test]
    fn data_frames_carry_their_sequence_number_and_length() {
        let mut f = vec![0xa5u8; 1514];
        data(&mut f, [1; 6], [2; 6], 0xdead_beef);
        assert_eq!(parse_data(&f), Some(0xdead_beef));
        // A frame cut short (or padded) no longer matches its size field.
        assert_eq!(parse_data(&f[..1500]), None);
        let mut c = [0u8; CONTROL_LEN];
        control(
            &mut c,
            [1; 6],
            [2; 6],
            &Control {
                op: OP_DATA,
                size: 60,
                ms: 0,
                count: 0,
            },
        );
        assert_eq!(parse_data(&c), None, "a control frame is not data");
    }
}
