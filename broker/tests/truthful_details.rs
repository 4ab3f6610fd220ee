//! Details a QEMU user or tool relies on, checked against the host:
//! `query-cpus-fast` thread ids are host thread ids, every process logs
//! in the journal format under `JOURNAL_STREAM`, a `-m` the host cannot
//! provide is refused as QEMU refuses it, `query-status` is QEMU 10's.
//! Needs /dev/kvm.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::{broker_pid, children, Bulkhead, TempDir};
use serde_json::json;

#[test]
fn query_cpus_fast_thread_ids_are_host_thread_ids_of_vcpu_proc() {
    let b = Bulkhead::start(&["-smp", "2"]);
    let mut q = b.client();
    let cpus = q.ok("query-cpus-fast");
    let vcpu = children(broker_pid(&b))
        .into_iter()
        .find(|(_, comm)| comm == "vcpu-proc")
        .expect("vcpu-proc runs")
        .0;
    let tasks: Vec<i64> = std::fs::read_dir(format!("/proc/{vcpu}/task"))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    let ids: Vec<i64> = cpus
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["thread-id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert!(tasks.contains(id), "thread-id {id} not in {tasks:?}");
        // The host's own view of that thread: it belongs to vcpu-proc.
        let status = std::fs::read_to_string(format!("/proc/{id}/status")).unwrap();
        assert!(status.contains(&format!("Tgid:\t{vcpu}\n")), "{status}");
    }
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn every_process_logs_in_journal_format_when_journal_stream_is_set() {
    common::require_kvm();
    let dir = TempDir::new();
    let log_path = dir.0.join("stderr");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let sock = dir.0.join("q.sock");
    let mut b = Bulkhead::start_with(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(["-serial", "null"])
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env("BULKHEAD_LOG", "debug")
            .stdin(Stdio::null())
            .stderr(log),
        sock,
        dir,
    );
    let mut q = b.client();
    q.ok("quit");
    b.wait_exit();
    let text = std::fs::read_to_string(&log_path).unwrap();
    for target in ["broker::", "vcpu_proc", "block_proc"] {
        assert!(
            text.lines().any(|l| l.contains(&format!(">{target}"))),
            "no line from {target} in:\n{text}"
        );
    }
    for line in text.lines() {
        let prio = line.strip_prefix('<').and_then(|l| l.split_once('>'));
        assert!(
            matches!(prio, Some((p, _)) if ["3", "4", "6", "7"].contains(&p)),
            "not journal format: {line:?}"
        );
        assert!(!line.contains('\x1b'), "colour codes in {line:?}");
        assert!(!line.contains("Z "), "timestamp in {line:?}");
    }
}

#[test]
fn memory_the_host_cannot_provide_is_refused_like_qemu() {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
    if mode.trim() == "1" {
        eprintln!("overcommit_memory=1: the host allows any size; nothing to refuse");
        return;
    }
    // Just above RAM + swap (a memfd would accept it and die later), and
    // far above.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |k: &str| -> u64 {
        let l = meminfo.lines().find(|l| l.starts_with(k)).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let above = format!("{}M", (kib("MemTotal:") + kib("SwapTotal:")) / 1024 + 1024);
    for m in [above.as_str(), "100000G"] {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["-m", m, "-serial", "null"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "-m {m}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "bulkhead: cannot set up guest memory 'microvm.ram': Cannot allocate memory"
        );
        // QEMU 10, same input: same message after its program name.
        let qemu = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm",
                "-m",
                m,
                "-display",
                "none",
                "-nodefaults",
                "-S",
            ])
            .output()
            .expect("qemu-system-x86_64 is installed (scripts/setup)");
        assert_eq!(qemu.status.code(), Some(1), "qemu -m {m}");
        assert_eq!(
            String::from_utf8_lossy(&qemu.stderr).trim(),
            "qemu-system-x86_64: cannot set up guest memory 'microvm.ram': Cannot allocate memory"
        );
    }
}

#[test]
fn query_status_has_qemu_10_members_only() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    assert_eq!(
        q.ok("query-status"),
        json!({"status": "running", "running": true})
    );
}
