//! Interop with QEMU's vhost-user frontend: block-proc `--standalone` serves
//! `qemu-system-x86_64 -M microvm` (`vhost-user-blk` on a virtio-mmio
//! transport, guest RAM in a shared memfd) running the `blk` test guest,
//! which writes, flushes, reads back and verifies its pattern three times.
//! The image is then checked on the host: it holds the guest's last pass
//! and, for qcow2, `qemu-img check` passes.
//!
//! Needs /dev/kvm, `qemu-system-x86_64` (microvm, qboot) and `qemu-img`;
//! fails with a clear message when one is missing. The `blk` guest ELF is
//! built with `scripts/build-guests -p blk` (or named by
//! `BULKHEAD_BLK_GUEST`).

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// Guest code is slow on nested KVM; a passing run takes about a second.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Sectors the guest writes and the pass it leaves on disk
/// (`test-guests/blk`: `blk::SECTORS`, `PASSES`).
const SECTORS: u64 = 64;
const LAST_PASS: u64 = 3;
const IMAGE_SIZE: u64 = 4 << 20;
const QEMU: &str = "qemu-system-x86_64";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `blk` guest ELF, built once per test process.
fn blk_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        if let Some(p) = std::env::var_os("BULKHEAD_BLK_GUEST") {
            return PathBuf::from(p);
        }
        let script = repo().join("scripts/build-guests");
        let out = Command::new(&script)
            .args(["-p", "blk"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} -p blk failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8(out.stdout).unwrap();
        let elf = Path::new(dir.trim()).join("blk");
        assert!(elf.exists(), "no blk guest at {}", elf.display());
        elf
    })
}

fn require_host() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (QEMU runs the guest with -enable-kvm)"
    );
    let qemu = Command::new(QEMU).arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "this test needs {QEMU} in PATH (QEMU >= 7 with the microvm machine)"
    );
    assert!(
        Path::new(QBOOT).exists(),
        "this test needs QEMU's qboot firmware at {QBOOT}"
    );
}

/// The QEMU command line: microvm with the PVH entry, guest RAM in a
/// shared memfd (vhost-user maps it), the disk as `vhost-user-blk` on a
/// modern (non-legacy) virtio-mmio transport, serial to `serial`.
fn qemu_command(sock: &Path, serial: &Path) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off,memory-backend=mem",
        "-bios",
        QBOOT,
        "-enable-kvm",
        "-cpu",
        "qemu64,-pni",
        "-m",
        "64",
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-chardev",
    ])
    .arg(format!("socket,id=c0,path={}", sock.display()))
    .args(["-device", "vhost-user-blk,chardev=c0", "-serial"])
    .arg(format!("file:{}", serial.display()))
    .arg("-kernel")
    .arg(blk_guest())
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    cmd
}

/// What one QEMU run left behind.
struct Run {
    status: ExitStatus,
    serial: String,
    stderr: String,
}

/// Boots the `blk` guest against the vhost-user socket `sock` and waits
/// for QEMU to exit (killed after [`TIMEOUT`]); `name` tags its log files.
fn run_guest(name: &str, sock: &Path) -> Run {
    let serial = tmp(&format!("{name}-serial.log"));
    let stderr = tmp(&format!("{name}-qemu.err"));
    let mut child = qemu_command(sock, &serial)
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "QEMU did not exit within {TIMEOUT:?}\nserial:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default(),
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        serial: std::fs::read_to_string(&serial).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
    }
}

/// Asserts the guest passed: its verdict, debug-exit 0 (QEMU status 1),
/// the disk found on a microvm transport, and completions signalled by
/// interrupts (block-proc's call eventfd → QEMU → GSI), not only found by
/// the guest's fallback timer.
fn assert_guest_passed(run: &Run) {
    let ctx = format!("serial:\n{}\nQEMU stderr:\n{}", run.serial, run.stderr);
    assert!(run.serial.contains("VERDICT: PASS blk"), "{ctx}");
    assert_eq!(run.status.code(), Some(1), "debug-exit 0 expected; {ctx}");
    assert!(
        run.serial.contains("blk: virtio-blk at microvm transport"),
        "{ctx}"
    );
    assert!(run.serial.contains(" device interrupts"), "{ctx}");
    assert!(!run.serial.contains("blk: 0 device interrupts"), "{ctx}");
}

/// The guests' sector pattern, the very source the `blk` guests use.
#[path = "../../test-guests/blk/src/pattern.rs"]
#[allow(dead_code)]
mod pattern;

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

/// The raw file `image` holds the pattern of `pass` in sectors
/// `0..SECTORS` (checksum word included) and zeros in the next `SECTORS`.
fn assert_raw_holds_pass(image: &Path, pass: u64) {
    let f = File::open(image).unwrap();
    for s in 0..SECTORS {
        let words = read_sector_words(&f, s);
        assert_eq!(pattern::check(&words, s, pass), Ok(()), "sector {s}");
    }
    let mut rest = vec![0u8; (SECTORS * 512) as usize];
    f.read_exact_at(&mut rest, SECTORS * 512).unwrap();
    assert!(
        rest.iter().all(|&b| b == 0),
        "sectors past the guest's range were written"
    );
}

#[test]
fn qemu_microvm_runs_blk_guest_on_block_proc_raw_image() {
    const NAME: &str = "qemu-interop-raw";
    require_host();
    let img = raw_image(&format!("{NAME}.raw"), IMAGE_SIZE);
    let sock = tmp(&format!("{NAME}.sock"));
    let mut bp = start(&sock, &raw_json(&img), &[]);
    let run = run_guest(NAME, &sock);
    // SIGKILL: what the guest flushed must be on disk without any help
    // from an orderly shutdown.
    bp.kill();
    assert_guest_passed(&run);
    assert_raw_holds_pass(&img, LAST_PASS);
}

#[test]
fn qemu_microvm_runs_blk_guest_on_block_proc_qcow2_image() {
    const NAME: &str = "qemu-interop-qcow2";
    require_host();
    let img = qcow2_image(&format!("{NAME}.qcow2"), "4M");
    let sock = tmp(&format!("{NAME}.sock"));
    let mut bp = start(&sock, &qcow2_json(&img), &[]);
    let run = run_guest(NAME, &sock);
    // SIGKILL: what the guest flushed must be on disk without any help
    // from an orderly shutdown.
    bp.kill();
    assert_guest_passed(&run);
    assert!(
        qemu_img_check(&img),
        "qemu-img check failed on the qcow2 image"
    );
    let raw = tmp(&format!("{NAME}-converted.raw"));
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&*img)
        .arg(&*raw)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert failed");
    assert_raw_holds_pass(&raw, LAST_PASS);
}
