//! Linux (Debian's cloud kernel) booted through the broker with a disk:
//! the kernel is told where the virtio-mmio device is on its command line
//! (`virtio_mmio.device=`, for kernels built with
//! `VIRTIO_MMIO_CMDLINE_DEVICES`) besides the DSDT's `LNRO0005` entry.
//! Linux cannot get past early boot on the development machines, so this
//! checks what early boot prints. Needs /dev/kvm and the kernel from
//! `scripts/fetch-linux`; ignored by default, CI runs it with
//! `BULKHEAD_LINUX_DIR="$(scripts/fetch-linux)" cargo test -p broker --test linux_disk -- --ignored`.

mod common;
mod disk_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Bulkhead;
use disk_common::SerialLog;

fn vmlinux() -> String {
    let dir = std::env::var_os("BULKHEAD_LINUX_DIR").unwrap_or_else(|| {
        panic!(
            "BULKHEAD_LINUX_DIR is not set: run `BULKHEAD_LINUX_DIR=\"$(scripts/fetch-linux)\" \
             cargo test -p broker --test linux_disk -- --ignored`"
        )
    });
    let p = PathBuf::from(dir).join("vmlinux");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-linux",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

#[test]
#[ignore = "needs BULKHEAD_LINUX_DIR from scripts/fetch-linux; run with --ignored"]
fn linux_command_line_names_the_virtio_mmio_disk() {
    let kernel = vmlinux();
    let dir = common::TempDir::new();
    let log = SerialLog(dir.0.join("serial.log"));
    let serial = format!("file:{}", log.0.display());
    let b = Bulkhead::start(&[
        "-kernel",
        &kernel,
        "-append",
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1",
        "-m",
        "256M",
        "-serial",
        &serial,
        "-blockdev",
        r#"{"driver":"null-co","node-name":"d0","size":1048576}"#,
        "-device",
        "virtio-blk-device,drive=d0,id=vda",
    ]);
    let mut c = b.client();
    let want = "virtio_mmio.device=4K@0xd0000000:5";
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = log.text();
        // Only whole lines: the guest may be in the middle of printing one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let cmdline = whole.lines().find(|l| l.contains("Command line:"));
        if let Some(line) = cmdline {
            assert!(line.contains(want), "{line}");
            assert!(line.contains("console=ttyS0"), "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no command line printed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.ok("query-block").as_array().is_some_and(|a| a.len() == 1));
}
