//! Debian's stock cloud kernel under vcpu-proc. Linux cannot boot to
//! userspace on the nested KVM of the development machines (it dies on an
//! `int3` in its self-tests), so these tests check what it prints on the
//! way: banner, command line, e820 map, ACPI tables, CPU count.
//!
//! They need /dev/kvm and the kernel fetched by `scripts/fetch-linux`; they
//! are `#[ignore]`d so a plain `cargo test` skips them. CI runs:
//!
//! ```sh
//! BULKHEAD_LINUX_DIR="$(scripts/fetch-linux)" \
//!     cargo test -p vcpu-proc --test linux_boot -- --ignored --test-threads=1
//! ```
//!
//! Run without `BULKHEAD_LINUX_DIR`, they fail saying how to set it.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Kernel, Opts, Vmm};
use ipc_proto::vcpu::VcpuReply;

/// Kernel-mode code is ~1000x slower than native here.
/// Override with `BULKHEAD_LINUX_TIMEOUT_SECS`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn boot_timeout() -> Duration {
    std::env::var("BULKHEAD_LINUX_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(BOOT_TIMEOUT)
}
const MARKER: &str = "bulkhead.test=linux-boot-marker";

fn linux_dir() -> PathBuf {
    let dir = std::env::var_os("BULKHEAD_LINUX_DIR").unwrap_or_else(|| {
        panic!(
            "BULKHEAD_LINUX_DIR is not set: run `BULKHEAD_LINUX_DIR=\"$(scripts/fetch-linux)\" \
             cargo test -p vcpu-proc --test linux_boot -- --ignored`"
        )
    });
    PathBuf::from(dir)
}

fn boot(image: &str, cmdline: &str) -> Vmm {
    let path = linux_dir().join(image);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-linux {}",
        path.display(),
        linux_dir().display()
    );
    let mut opts = Opts::guest("unused");
    opts.kernel = Kernel::Path(path);
    opts.cpus = 4;
    opts.mem_mib = 256;
    opts.cmdline = cmdline.to_string();
    let vmm = Vmm::start(opts);
    assert_eq!(vmm.create_result, Ok(VcpuReply::Done));
    vmm
}

/// Waits until every needle has been printed (or the kernel stops printing
/// for good), then asserts them all, reporting the full console.
fn expect_all(vmm: &Vmm, needles: &[&str]) {
    let deadline = Instant::now() + boot_timeout();
    let mut events = Vec::new();
    loop {
        events.extend(vmm.drain_events());
        let out = vmm.serial_text();
        if needles.iter().all(|n| out.contains(n)) {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = needles.iter().filter(|n| !out.contains(**n)).collect();
            panic!("missing {missing:?}; events {events:?}; console output:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cmdline() -> String {
    format!("console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 {MARKER}")
}

#[test]
#[ignore = "needs BULKHEAD_LINUX_DIR from scripts/fetch-linux; run with --ignored"]
fn vmlinux_elf_prints_banner_cmdline_e820_acpi_tables_and_four_cpus() {
    let vmm = boot("vmlinux", &cmdline());
    expect_all(
        &vmm,
        &[
            "Linux version",
            MARKER,
            // 256 MiB: RAM from 1 MiB up to 256 MiB.
            "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
            "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
            "ACPI: RSDP 0x00000000000E0000",
            "ACPI: XSDT 0x",
            "ACPI: FACP 0x",
            "ACPI: DSDT 0x",
            "ACPI: APIC 0x",
            "Allowing 4 CPUs",
        ],
    );
}

/// Debian builds without `CONFIG_X86_VERBOSE_BOOTUP`, so the decompressor's
/// "Decompressing Linux..." is compiled out; the first thing it prints
/// unconditionally (through its own early serial console, set up from
/// `earlyprintk=serial`) is the KASLR warning that `nokaslr` triggers.
#[test]
#[ignore = "needs BULKHEAD_LINUX_DIR from scripts/fetch-linux; run with --ignored"]
fn bzimage_decompressor_runs_and_prints_on_its_early_console() {
    let vmm = boot("vmlinuz", &format!("{} nokaslr", cmdline()));
    expect_all(&vmm, &["KASLR disabled: 'nokaslr' on cmdline."]);
}
