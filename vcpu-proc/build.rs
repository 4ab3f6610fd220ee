//! Builds the test guests (`<repo>/test-guests`, a separate cargo workspace)
//! so that vcpu-proc can embed the `hello` guest as its default guest and
//! tests in any crate can find every guest at a fixed path.
//!
//! The nested build always runs `cargo build --release --target
//! x86_64-unknown-linux-gnu` with `test-guests/` as the current directory (its
//! `.cargo/config.toml` carries the linker script and code-generation flags)
//! and `CARGO_TARGET_DIR=<repo>/target/test-guests`, whatever the outer
//! build's profile, target dir or flags. The guests land in
//! `<repo>/target/test-guests/x86_64-unknown-linux-gnu/release/<guest>`.
//!
//! Exported to vcpu-proc's code:
//! - `BULKHEAD_TEST_GUEST_DIR`: the directory holding the guest ELFs;
//! - `BULKHEAD_HELLO_GUEST`: the path of the `hello` ELF
//!   (`include_bytes!(env!("BULKHEAD_HELLO_GUEST"))`).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Target triple the guests are built for (the host's: no extra toolchain).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Cargo settings from the user's environment that the nested build keeps
/// (registry access and output style); every other `CARGO_*` is dropped.
const KEPT_CARGO_PREFIXES: &[&str] = &[
    "CARGO_HOME",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRIES_",
    "CARGO_REGISTRY_",
    "CARGO_TERM_",
];

/// Variables outside `CARGO_*` that would change how the guests are compiled.
const DROPPED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "MAKEFLAGS",
    "MFLAGS",
];

fn fail(msg: &str) -> ! {
    eprintln!("error: building the test guests: {msg}");
    exit(1);
}

/// Whether the nested cargo must not see `name`.
fn dropped(name: &str) -> bool {
    if DROPPED_VARS.contains(&name) || name.starts_with("__CARGO") {
        return true;
    }
    name.starts_with("CARGO_") && !KEPT_CARGO_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Asks cargo to rerun this script when anything in the guest workspace
/// changes (its own `target/`, if someone built there, excluded).
fn watch(guests: &Path) {
    let entries = match fs::read_dir(guests) {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot read {}: {e}", guests.display())),
    };
    for entry in entries.flatten() {
        if entry.file_name() == "target" {
            continue;
        }
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    println!("cargo:rerun-if-changed={}", guests.display());
}

fn main() {
    let manifest_dir = match env::var_os("CARGO_MANIFEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => fail("CARGO_MANIFEST_DIR is not set"),
    };
    let Some(repo) = manifest_dir.parent() else {
        fail("vcpu-proc has no parent directory")
    };
    let guests = repo.join("test-guests");
    let target_dir = repo.join("target").join("test-guests");
    let out_dir = target_dir.join(GUEST_TARGET).join("release");
    watch(&guests);

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--target", GUEST_TARGET]);
    for (name, _) in env::vars_os() {
        if let Some(n) = name.to_str() {
            if dropped(n) {
                cmd.env_remove(&name);
            }
        }
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    if let Ok(jobs) = env::var("NUM_JOBS") {
        cmd.args(["-j", &jobs]);
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot run cargo: {e}")),
    };
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "`cargo build --release --target {GUEST_TARGET}` in {} failed ({})",
            guests.display(),
            output.status
        ));
    }

    let hello = out_dir.join("hello");
    if !hello.is_file() {
        fail(&format!("{} was not produced", hello.display()));
    }
    println!(
        "cargo:rustc-env=BULKHEAD_TEST_GUEST_DIR={}",
        out_dir.display()
    );
    println!("cargo:rustc-env=BULKHEAD_HELLO_GUEST={}", hello.display());
}
