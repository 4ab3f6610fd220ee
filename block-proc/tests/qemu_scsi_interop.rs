//! Interop with QEMU's vhost-user-scsi frontend: `qemu-system-x86_64 -M
//! microvm -device vhost-user-scsi` (virtio-mmio) against block-proc
//! `--standalone --scsi cd`. QEMU realizes the device only after the
//! vhost-user handshake (owner, features, protocol features, queue
//! count, the rings' call fds) with the backend succeeded; a QEMU asking
//! for more request queues than the backend serves has its extra rings
//! refused (QEMU goes on: it would only fail when the driver starts
//! them). Reads by a guest driver need the `cdrom` test guest (not part
//! of this test; the harness tests cover the I/O path).
//!
//! Needs /dev/kvm and `qemu-system-x86_64` with microvm and qboot.

mod common;

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
    let img = tmp(&format!("{name}.iso"));
    std::fs::write(&img, pattern(256 * 2048, 9)).unwrap();
    let sock = tmp(&format!("{name}.sock"));
    let json = format!(
        r#"{{"driver":"raw","node-name":"cd","read-only":true,"file":{{"driver":"file","filename":"{}"}}}}"#,
        img.display()
    );
    let log = tmp(&format!("{name}.log"));
    let mut cmd = Command::new(bin());
    cmd.args(["--standalone", "--scsi", "cd", "--num-queues"])
        .arg(queues.to_string())
        .arg("--socket")
        .arg(&*sock)
        .arg("--blockdev")
        .arg(json)
        .env("BULKHEAD_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap());
    let bp = Backend::spawn(cmd, &sock).unwrap();
    (bp, img, sock, log)
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
