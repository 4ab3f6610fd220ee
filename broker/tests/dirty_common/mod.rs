//! Helpers for tests running the `dirty` guest (test-guests/dirty): its
//! serial lines (the area, completed generations, the verdict) and its
//! page format, so a test can read or change its RAM from outside (through
//! a `memory-backend-file`) and know what the guest must say.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Bulkhead, Qmp, TempDir};
use crate::disk_common::{guest, wait_exit_within, SerialLog, GUEST_TIMEOUT};

/// Guest RAM of every VM here.
pub const RAM: &str = "64M";

/// Bytes per page of the guest's area.
pub const PAGE: u64 = 4096;
/// Word 2 of every page the guest wrote.
pub const MAGIC: u64 = 0x4452_5459_5047_3031;

/// The guest's area `[start, end)` from its first line
/// (`dirty: N pages (M MiB) at 0xA..0xB, ...`), waiting for it.
pub fn area(log: &SerialLog) -> (u64, u64) {
    log.wait_for(" pages/ms, rounds ");
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("dirty: ") && l.contains(" at 0x"))
        .expect("the area line");
    let range = line
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("0xA..0xB");
    let (a, b) = range.split_once("..").expect("0xA..0xB");
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    (hex(a), hex(b))
}

/// The complete lines of the log so far (the guest prints slowly: the
/// last line may still be coming).
pub fn lines(log: &SerialLog) -> Vec<String> {
    log.text()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// The highest generation the guest completed (`dirty: gen G: ...`
/// lines; 0 before the first).
pub fn last_gen(log: &SerialLog) -> u64 {
    lines(log)
        .iter()
        .filter_map(|l| {
            l.strip_prefix("dirty: gen ")?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the guest completed generation `gen` (fails on a FAIL
/// verdict).
pub fn wait_gen(log: &SerialLog, gen: u64) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while last_gen(log) < gen {
        let t = log.text();
        assert!(!t.contains("VERDICT: FAIL"), "guest failed:\n{t}");
        assert!(Instant::now() < deadline, "no gen {gen}:\n{t}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the verdict line and returns it.
pub fn verdict(log: &SerialLog) -> String {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if let Some(l) = lines(log).into_iter().find(|l| l.starts_with("VERDICT: ")) {
            return l;
        }
        assert!(Instant::now() < deadline, "no verdict:\n{}", log.text());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn word(page: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap())
}

/// The generation a whole, consistent page at guest-physical `addr`
/// holds, or what is wrong with it (the guest's own checks: address,
/// magic, checksum).
pub fn page_gen(page: &[u8], addr: u64) -> Result<u64, String> {
    assert_eq!(page.len() as u64, PAGE);
    if word(page, 0) != addr {
        return Err(format!("holds address {:#x}", word(page, 0)));
    }
    if word(page, 2) != MAGIC {
        return Err(format!("word 2 is {:#x}", word(page, 2)));
    }
    let sum = (0..511).fold(0u64, |s, i| s.rotate_left(5) ^ word(page, i));
    if word(page, 511) != sum {
        return Err(format!(
            "checksum {:#x}, expected {sum:#x}",
            word(page, 511)
        ));
    }
    Ok(word(page, 1))
}

/// Which VMM runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// The broker under test.
    Bulkhead,
    /// `qemu-system-x86_64 -M microvm`, the reference.
    Qemu,
}

/// A guest-RAM file (a `memory-backend-file`), on tmpfs if there is one
/// (a file on disk would be written back all the time); removed on drop.
pub struct RamFile(pub PathBuf, TempDir);

impl RamFile {
    pub fn new() -> Self {
        let dir = TempDir::new();
        let name = dir.0.file_name().unwrap().to_string_lossy().into_owned();
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm } else { dir.0.as_path() };
        RamFile(base.join(format!("{name}-dirty-ram")), dir)
    }

    /// The file, open for reading and writing (guest-physical address =
    /// file offset).
    pub fn open(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.0)
            .unwrap()
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A VM running the `dirty` guest with its RAM in a [`RamFile`], its
/// serial output in `log`; killed on drop.
pub struct Vm {
    pub bulkhead: Option<Bulkhead>,
    pub qemu: Option<Child>,
    pub log: SerialLog,
    pub dir: TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
    }
}

impl Vm {
    /// Starts the guest on `vmm` with `append` as its command line, RAM in
    /// `ram`, and `extra` options (e.g. `-incoming ...`).
    pub fn start(vmm: Vmm, ram: &RamFile, append: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let log = SerialLog(dir.0.join("serial.log"));
        let object = format!(
            "memory-backend-file,id=ram,size={RAM},mem-path={},share=on",
            ram.0.display()
        );
        let serial = format!("file:{}", log.0.display());
        let kernel = guest("dirty");
        let mut args = vec![
            "-object", &object, "-m", RAM, "-kernel", &kernel, "-serial", &serial, "-append",
            append,
        ];
        args.extend_from_slice(extra);
        let (bulkhead, qemu) = match vmm {
            Vmm::Qemu => {
                let qmp = format!(
                    "unix:{},server=on,wait=off",
                    dir.0.join("qmp.sock").display()
                );
                let child = Command::new("qemu-system-x86_64")
                    .args([
                        "-M",
                        "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off,memory-backend=ram",
                        "-bios",
                        "/usr/share/qemu/qboot.rom",
                        "-enable-kvm",
                        "-cpu",
                        "qemu64,-pni",
                        "-nodefaults",
                        "-display",
                        "none",
                        "-no-reboot",
                        "-device",
                        "isa-debug-exit,iobase=0xf4,iosize=0x04",
                        "-qmp",
                        &qmp,
                    ])
                    .args(&args)
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("qemu-system-x86_64 is installed (scripts/setup)");
                (None, Some(child))
            }
            Vmm::Bulkhead => {
                args.extend_from_slice(&["-machine", "microvm,memory-backend=ram"]);
                (Some(Bulkhead::start(&args)), None)
            }
        };
        Vm {
            bulkhead,
            qemu,
            log,
            dir,
        }
    }

    /// A QMP client, capabilities negotiated.
    pub fn client(&self) -> Qmp {
        if let Some(b) = &self.bulkhead {
            return b.client();
        }
        let sock = self.dir.0.join("qmp.sock");
        let deadline = Instant::now() + GUEST_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "QEMU's QMP socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (mut q, _) = Qmp::connect(&sock);
        q.negotiate();
        q
    }

    /// The exit status of the VM (the guest's debug exit).
    pub fn exit_code(&mut self) -> Option<i32> {
        let child = match (&mut self.bulkhead, &mut self.qemu) {
            (Some(b), _) => b.child.as_mut().unwrap(),
            (None, Some(q)) => q,
            (None, None) => unreachable!("a VM is bulkhead or QEMU"),
        };
        wait_exit_within(child, GUEST_TIMEOUT).code()
    }
}
