//! The shipped systemd units: `systemd-analyze security --offline=true`
//! on `scripts/systemd/bulkhead@.service` (as instance `bulkhead@test`)
//! must rate its exposure 2.0 or lower, and the socket unit must pass the
//! QMP socket under the name the broker expects. Needs `systemd-analyze`
//! (Debian package `systemd`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd")
}

/// Copies the templates into a fresh directory as instance `test`.
fn instance_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulkhead-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ext in ["service", "socket"] {
        std::fs::copy(
            units_dir().join(format!("bulkhead@.{ext}")),
            dir.join(format!("bulkhead@test.{ext}")),
        )
        .unwrap();
    }
    dir
}

fn exposure(dir: &Path) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=true",
            "--no-pager",
            "bulkhead@test.service",
        ])
        .current_dir(dir)
        .output()
        .expect("systemd-analyze is needed (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure line; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned();
    let value = line
        .rsplit(':')
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in '{line}'"));
    (value, line)
}

#[test]
fn service_unit_exposure_is_at_most_2_0() {
    let dir = instance_dir();
    let (value, line) = exposure(&dir);
    println!("{line}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(value <= 2.0, "{line}");
}

#[test]
fn service_unit_is_type_notify_with_a_watchdog_and_socket_activation() {
    let unit = std::fs::read_to_string(units_dir().join("bulkhead@.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "Requires=bulkhead@%i.socket",
        "EnvironmentFile=/etc/bulkhead/%i.conf",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
}

#[test]
fn socket_unit_passes_the_qmp_socket_named_qmp() {
    let unit = std::fs::read_to_string(units_dir().join("bulkhead@.socket")).unwrap();
    assert!(unit
        .lines()
        .any(|l| l == "ListenStream=/run/bulkhead/%i.qmp"));
    assert!(unit.lines().any(|l| l == "FileDescriptorName=qmp"));
    assert!(unit.lines().any(|l| l == "Service=bulkhead@%i.service"));
}
