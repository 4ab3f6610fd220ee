//! The generated ACPI tables pass ACPICA: every table dumped by
//! `vcpu-proc --dump-acpi` disassembles with `iasl -d` without errors, and
//! the disassembled DSDT recompiles cleanly. Needs `iasl` (Debian package
//! `acpica-tools`); fails with a message saying so when it is missing.
//! Does not need /dev/kvm.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn require_iasl() {
    let ok = Command::new("iasl").arg("-v").output().is_ok();
    assert!(ok, "this test needs `iasl`: apt-get install acpica-tools");
}

fn dump(cpus: u8) -> PathBuf {
    dump_with(cpus, cpus)
}

fn dump_with(cpus: u8, maxcpus: u8) -> PathBuf {
    // One directory per call: tests run in parallel and remove their own.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "bulkhead-acpi-{}-{cpus}-{maxcpus}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let st = Command::new(env!("CARGO_BIN_EXE_vcpu-proc"))
        .arg("--dump-acpi")
        .arg(&dir)
        .arg("--cpus")
        .arg(cpus.to_string())
        .arg("--maxcpus")
        .arg(maxcpus.to_string())
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

fn iasl(dir: &Path, args: &[&str]) -> Output {
    Command::new("iasl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_table_disassembles_with_iasl_without_errors() {
    require_iasl();
    let dir = dump(4);
    for name in ["xsdt", "facp", "apic", "dsdt"] {
        let out = iasl(&dir, &["-d", &format!("{name}.dat")]);
        let t = text(&out);
        assert!(out.status.success(), "iasl -d {name}: {t}");
        assert!(!t.to_lowercase().contains("error"), "iasl -d {name}: {t}");
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        assert!(
            dsl.contains(&format!("[{}]", name.to_uppercase())) || name == "dsdt",
            "{dsl}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disassembled_dsdt_recompiles_without_errors_or_warnings() {
    require_iasl();
    let dir = dump(2);
    let out = iasl(&dir, &["-d", "dsdt.dat"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = iasl(&dir, &["dsdt.dsl"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("0 Errors, 0 Warnings"), "{t}");
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
    for needle in [
        "PNP0501",
        "PNP0C0C",
        "ACPI0013",
        "_EVT",
        "_S5",
        "LNRO0005",
        "0xD0100000",
    ] {
        assert!(
            dsl.contains(needle),
            "{needle} missing from the DSDT:\n{dsl}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    require_iasl();
    let dir = dump(1);
    let out = iasl(&dir, &["-d", "facp.dat"]);
    assert!(out.status.success(), "{}", text(&out));
    let dsl = std::fs::read_to_string(dir.join("facp.dsl")).unwrap();
    for needle in [
        "Hardware Reduced (V5) : 1",
        "Reset Register Supported (V2) : 1",
        "Value to cause reset : 0F",
        "Address : 0000000000000600",
        "Address : 0000000000000601",
        "Address : 0000000000000602",
    ] {
        assert!(
            dsl.contains(needle),
            "{needle} missing from the FADT:\n{dsl}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn madt_lists_each_cpu_the_ioapic_and_the_pit_override() {
    require_iasl();
    let dir = dump(3);
    let out = iasl(&dir, &["-d", "apic.dat"]);
    assert!(out.status.success(), "{}", text(&out));
    let dsl = std::fs::read_to_string(dir.join("apic.dsl")).unwrap();
    assert_eq!(dsl.matches("[Processor Local APIC]").count(), 3, "{dsl}");
    assert!(dsl.contains("[I/O APIC]"), "{dsl}");
    assert!(dsl.contains("[Interrupt Source Override]"), "{dsl}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rsdp_points_at_the_xsdt_and_checksums() {
    let dir = dump(1);
    let rsdp = std::fs::read(dir.join("rsdp.dat")).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "revision");
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    assert_eq!(sum(&rsdp[..20]), 0);
    assert_eq!(sum(&rsdp), 0);
    let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
    let tables =
        vcpu_proc::acpi::build_tables(&vcpu_proc::hotplug::PossibleCpus::flat(1), &[]).unwrap();
    let xsdt = tables.iter().find(|t| t.name == "XSDT").unwrap();
    assert_eq!(xsdt_addr, xsdt.addr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hotpluggable_cpus_are_online_capable_in_the_madt_and_scanned_by_the_dsdt() {
    require_iasl();
    let dir = dump_with(1, 4);
    let out = iasl(&dir, &["-d", "apic.dat", "dsdt.dat"]);
    assert!(out.status.success(), "{}", text(&out));
    let madt = std::fs::read_to_string(dir.join("apic.dsl")).unwrap();
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 4, "{madt}");
    assert_eq!(madt.matches("Processor Enabled : 1").count(), 1, "{madt}");
    assert_eq!(
        madt.matches("Runtime Online Capable : 1").count(),
        3,
        "{madt}"
    );
    let out = iasl(&dir, &["dsdt.dsl"]);
    let t = text(&out);
    assert!(t.contains("0 Errors, 0 Warnings"), "{t}");
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
    for needle in [
        "OperationRegion (PRST, SystemIO, 0x0CD8, 0x0C)",
        "\\_SB.CPUS.CSCN ()",
        "\"ACPI0010\"",
        "Device (C003)",
        "Notify (C003, Arg1)",
    ] {
        assert!(
            dsl.contains(needle),
            "{needle} missing from the DSDT:\n{dsl}"
        );
    }
    assert_eq!(
        dsl.matches("Method (_EJ0").count(),
        3,
        "no _EJ0 for the boot CPU"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
