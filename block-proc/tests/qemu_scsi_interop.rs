//! Interop with QEMU's vhost-user-scsi frontend: `qemu-system-x86_64 -M
//! microvm -device vhost-user-scsi` (virtio-mmio) against block-proc
//! `--standalone --scsi cd`. QEMU realizes the device only after the
//! vhost-user handshake (owner, features, protocol features, queue
//! count, the rings' call fds) with the backend succeeded; a QEMU asking
//! for more request queues than the backend serves has its extra rings
//! refused (QEMU goes on: it would only fail when the driver starts
//! them). The `cdrom` test guest, booted on QEMU's device, reads and
//! checks a whole disc through block-proc's backend, and sees a medium
//! change made by block-proc's `--scsi-next` changer (eject request,
//! the guest's unlock and eject, QEMU's two unit attentions, the new
//! disc).
//!
//! Needs /dev/kvm, `qemu-system-x86_64` with microvm and qboot, and the
//! test guests (built by vcpu-proc's build script or scripts/build-guests).

mod common;

/// The discs' content, the very source the `cdrom` guest checks.
#[allow(dead_code)]
#[path = "../../test-guests/cdrom/src/disc.rs"]
mod disc;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vhost_user_harness::process::Backend;

const QEMU: &str = "qemu-system-x86_64";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

fn require_host() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    assert!(
        Command::new(QEMU)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs {QEMU} in PATH"
    );
    assert!(Path::new(QBOOT).exists(), "this test needs {QBOOT}");
}

/// A read-only CD served on a fresh socket with `queues` request queues;
/// block-proc's debug log goes to the third file.
fn serve_cd(name: &str, queues: u16) -> (Backend, Tmp, Tmp, Tmp) {
    serve_cd_image(name, queues, &pattern(256 * 2048, 9))
}

/// [`serve_cd`] on a disc of content `data`.
fn serve_cd_image(name: &str, queues: u16, data: &[u8]) -> (Backend, Tmp, Tmp, Tmp) {
    let (bp, mut imgs, sock, log) = serve_cd_changer(name, queues, &[data]);
    (bp, imgs.remove(0), sock, log)
}

/// [`serve_cd`] with `discs[0]` in the drive and the others in
/// block-proc's `--scsi-next` changer.
fn serve_cd_changer(name: &str, queues: u16, discs: &[&[u8]]) -> (Backend, Vec<Tmp>, Tmp, Tmp) {
    let sock = tmp(&format!("{name}.sock"));
    let log = tmp(&format!("{name}.log"));
    let mut cmd = Command::new(bin());
    cmd.args(["--standalone", "--scsi", "cd", "--num-queues"])
        .arg(queues.to_string())
        .arg("--socket")
        .arg(&*sock)
        .env("BULKHEAD_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut imgs = Vec::new();
    for (i, data) in discs.iter().enumerate() {
        let img = tmp(&format!("{name}-{i}.iso"));
        std::fs::write(&img, data).unwrap();
        let json = format!(
            r#"{{"driver":"raw","node-name":"cd{i}","read-only":true,"file":{{"driver":"file","filename":"{}"}}}}"#,
            img.display()
        );
        cmd.arg(if i == 0 { "--blockdev" } else { "--scsi-next" })
            .arg(json);
        imgs.push(img);
    }
    let bp = Backend::spawn(cmd, &sock).unwrap();
    (bp, imgs, sock, log)
}

/// Starts QEMU paused with `vhost-user-scsi` on `sock`, lists its
/// peripherals over QMP and quits; QEMU's exit status, QMP output and
/// stderr.
fn qemu_realize(sock: &Path, num_queues: u16) -> (bool, String, String) {
    let mut child = Command::new(QEMU)
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,memory-backend=mem",
            "-bios",
            QBOOT,
            "-enable-kvm",
            "-m",
            "64",
            "-object",
            "memory-backend-memfd,id=mem,size=64M,share=on",
            "-nodefaults",
            "-display",
            "none",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-S",
            "-qmp",
            "stdio",
            "-chardev",
        ])
        .arg(format!("socket,id=c0,path={}", sock.display()))
        .arg("-device")
        .arg(format!(
            "vhost-user-scsi,chardev=c0,id=scsi0,num_queues={num_queues}"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let script = concat!(
        r#"{"execute":"qmp_capabilities"}"#,
        "\n",
        r#"{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}"#,
        "\n",
        r#"{"execute":"quit"}"#,
        "\n"
    );
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "QEMU hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn qemu_vhost_user_scsi_completes_the_handshake_with_block_proc() {
    require_host();
    let (mut bp, _img, sock, log) = serve_cd("qscsi-ok", 1);
    let (ok, out, err) = qemu_realize(&sock, 1);
    assert!(ok, "QEMU failed:\n{err}");
    assert!(
        out.contains(r#""name": "scsi0", "type": "child<vhost-user-scsi>""#),
        "device not realized:\n{out}"
    );
    bp.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("frontend connected"), "{log}");
    assert!(
        !log.contains("refused"),
        "a request of QEMU was refused:\n{log}"
    );
}

#[test]
fn rings_beyond_the_request_queues_block_proc_offers_are_refused() {
    require_host();
    let (mut bp, _img, sock, log) = serve_cd("qscsi-few", 1);
    let (ok, _, err) = qemu_realize(&sock, 2);
    assert!(ok, "QEMU failed:\n{err}");
    bp.kill();
    let log1 = std::fs::read_to_string(&log).unwrap();
    assert!(
        log1.contains("vhost-user request refused"),
        "queue 3 accepted:\n{log1}"
    );
    let (mut bp, _img, sock, log) = serve_cd("qscsi-two", 2);
    let (ok, _, err) = qemu_realize(&sock, 2);
    assert!(ok, "QEMU failed with a 2-queue backend:\n{err}");
    bp.kill();
    let log2 = std::fs::read_to_string(&log).unwrap();
    assert!(!log2.contains("refused"), "{log2}");
}

/// The image of a `cdrom` guest disc (`disc.rs`) of `blocks` blocks.
fn guest_disc(blocks: u64, tag: u64, flags: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks as usize * disc::BLOCK);
    let mut b = [0u64; disc::WORDS];
    for block in 0..blocks {
        disc::fill(&mut b, block, tag, flags);
        out.extend(b.iter().flat_map(|w| w.to_le_bytes()));
    }
    out
}

/// The `cdrom` test guest's kernel.
fn cdrom_guest() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-guests/x86_64-unknown-linux-gnu/release/cdrom");
    assert!(
        p.exists(),
        "test guest {} missing (build vcpu-proc or run scripts/build-guests)",
        p.display()
    );
    p
}

/// Boots the `cdrom` guest on QEMU's microvm with `vhost-user-scsi` on
/// `sock`; returns QEMU's exit code (the guest's debug-exit) and the
/// serial output.
fn qemu_cdrom_guest(sock: &Path, serial: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(QEMU)
        .args([
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
            "-kernel",
        ])
        .arg(cdrom_guest())
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-chardev")
        .arg(format!("socket,id=vus,path={}", sock.display()))
        .args([
            "-device",
            "vhost-user-scsi,chardev=vus,id=scsi0,num_queues=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    (status.code(), format!("{text}\n--- QEMU stderr:\n{err}"))
}

#[test]
fn cdrom_guest_on_qemus_vhost_user_scsi_reads_the_whole_disc_from_block_proc() {
    require_host();
    // 300 blocks (600 KiB): several READ(10)s beyond one page of guest
    // memory, every block checked word by word by the guest.
    let data = guest_disc(300, 77, disc::LAST);
    let (mut bp, _img, sock, log) = serve_cd_image("qscsi-guest", 1, &data);
    let serial = tmp("qscsi-guest.serial");
    let (code, out) = qemu_cdrom_guest(&sock, &serial);
    bp.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains("cdrom: disc 1: tag 77, 300 blocks ok"),
        "the guest did not read the disc:\n{out}\n--- block-proc:\n{log}"
    );
    assert!(out.contains("VERDICT: PASS cdrom"), "{out}");
    // PASS writes 0 to isa-debug-exit: status (0 << 1) | 1.
    assert_eq!(code, Some(1), "{out}");
    assert!(
        !log.contains("refused"),
        "a request of QEMU was refused:\n{log}"
    );
}

#[test]
fn cdrom_guest_on_qemus_vhost_user_scsi_sees_block_procs_medium_change_and_reads_the_new_disc() {
    require_host();
    // Disc 1: the guest reads it, locks the tray and polls media events;
    // the changer asks it to eject, it unlocks and ejects, disc 2 goes in
    // (unit attention + new-media event), the guest reads it and passes.
    let d1 = guest_disc(40, 11, 0);
    let d2 = guest_disc(90, 22, disc::LAST);
    let (mut bp, _imgs, sock, log) = serve_cd_changer("qscsi-change", 1, &[&d1, &d2]);
    let serial = tmp("qscsi-change.serial");
    let (code, out) = qemu_cdrom_guest(&sock, &serial);
    bp.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    let steps = [
        "cdrom: disc 1: tag 11, 40 blocks ok",
        "cdrom: tray locked",
        "cdrom: eject request",
        "cdrom: tray unlocked",
        "cdrom: ejected",
        "cdrom: new media",
        "cdrom: unit attention (asc 0x3a ascq 0x00)",
        "cdrom: unit attention (asc 0x28 ascq 0x00)",
        "cdrom: disc 2: tag 22, 90 blocks ok",
        "VERDICT: PASS cdrom",
    ];
    let mut at = 0;
    for step in steps {
        let Some(i) = out[at..].find(step) else {
            panic!("{step:?} missing (in order):\n{out}\n--- block-proc:\n{log}");
        };
        at += i + step.len();
    }
    assert_eq!(code, Some(1), "{out}");
    assert!(log.contains("changer: loaded cd1"), "{log}");
    assert!(
        !log.contains("refused"),
        "a request of QEMU or the changer was refused:\n{log}"
    );
}
