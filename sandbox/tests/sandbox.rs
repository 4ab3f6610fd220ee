//! The worker sandbox, seen from outside and tried from inside. NEEDS ROOT
//! (namespaces, pivot_root, setuid); fails clearly without it.
//!
//! `harness = false`: entering the sandbox needs a single-threaded process,
//! so this binary is both the test driver and, re-executed with
//! `BULKHEAD_SANDBOX_PROBE` set, the probe: a stand-in worker that enters
//! the sandbox as a given kind, says `ready`, then obeys lines on stdin
//! (`exit`, or `escape NAME` to run one of the test-only escape attempts).
//! The driver spawns the probe the way the broker spawns workers (pid 1 of
//! a new pid namespace, a death-note pipe as fd 4) and inspects it through
//! /proc: status, namespaces, root.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use ipc_proto::WorkerKind;
use sandbox::escape::{self, Escape, Outcome};
use sandbox::{self, death_note, namespaces, SandboxConfig, SeccompMode};

const PROBE_ENV: &str = "BULKHEAD_SANDBOX_PROBE";
const NOTE_FD: i32 = 4;
const KINDS: [WorkerKind; 3] = [WorkerKind::Vcpu, WorkerKind::Block, WorkerKind::Net];

// ---- the probe -----------------------------------------------------------

fn kind_from(s: &str) -> WorkerKind {
    match s {
        "vcpu" => WorkerKind::Vcpu,
        "block" => WorkerKind::Block,
        _ => WorkerKind::Net,
    }
}

fn escape_from(s: &str) -> Escape {
    let mut it = s.split_whitespace();
    match it.next() {
        Some("open") => Escape::OpenHostFile,
        Some("execve") => Escape::Execve,
        Some("socket") => Escape::InetSocket,
        Some("ptrace") => Escape::Ptrace {
            pid: it.next().and_then(|p| p.parse().ok()).unwrap_or(1),
        },
        _ => Escape::ForbiddenSyscall,
    }
}

fn probe_main(spec: &str) -> ! {
    let (kind, mode) = spec.split_once(':').unwrap();
    let config = SandboxConfig {
        kind: kind_from(kind),
        uid: 61_000,
        gid: 61_000,
        max_fds: 64,
        max_threads: 16,
        seccomp: if mode == "off" {
            SeccompMode::Off
        } else {
            SeccompMode::Enforce
        },
        death_note_fd: Some(NOTE_FD),
    };
    let prepared = sandbox::prepare(config).unwrap();
    if let Err(e) = sandbox::enter(prepared) {
        println!("error {}", ipc_proto::envelope::error_chain(&e));
        std::process::exit(3);
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        if line == "exit" {
            std::process::exit(0);
        }
        if line == "thread" {
            let joined = std::thread::spawn(|| 7).join();
            writeln!(
                out,
                "{}",
                if joined.is_ok_and(|v| v == 7) {
                    "thread ok"
                } else {
                    "thread failed"
                }
            )
            .unwrap();
            out.flush().unwrap();
        }
        if let Some(what) = line.strip_prefix("escape ") {
            let reply = match escape::attempt(escape_from(what)) {
                Outcome::Blocked(errno) => format!("blocked {errno}"),
                Outcome::Escaped => "escaped".to_owned(),
            };
            writeln!(out, "{reply}").unwrap();
            out.flush().unwrap();
        }
    }
    std::process::exit(0)
}

// ---- the driver ----------------------------------------------------------

struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    note: OwnedFd,
}

impl Probe {
    fn start(kind: WorkerKind, seccomp: &str) -> Probe {
        let (note_r, note_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let w = note_w.as_raw_fd();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(PROBE_ENV, format!("{}:{seccomp}", kind.name()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: dup2 and fcntl are async-signal-safe; `w` stays open in the parent
        // until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let rc = if w == NOTE_FD {
                    libc::fcntl(w, libc::F_SETFD, 0)
                } else {
                    libc::dup2(w, NOTE_FD)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = namespaces::spawn_in_new_pid_ns(&mut cmd).unwrap();
        drop(note_w);
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "probe did not enter its sandbox");
        Probe {
            child,
            stdin,
            stdout,
            note: note_r,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        reply.trim().to_owned()
    }

    fn finish(mut self) -> std::process::ExitStatus {
        self.send("exit");
        self.child.wait().unwrap()
    }

    /// Sends a line that must kill the probe; returns its signal and note.
    fn killed_by(mut self, line: &str) -> (Option<i32>, Option<death_note::DeathNote>) {
        self.send(line);
        let status = self.child.wait().unwrap();
        (status.signal(), death_note::read_note(&self.note))
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in status"))
        .trim()
        .to_owned()
}

fn worker_status_shows_seccomp_nnp_no_caps_and_a_non_root_uid(kind: WorkerKind) {
    let p = Probe::start(kind, "enforce");
    let pid = p.pid();
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for caps in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    for ids in ["Uid", "Gid"] {
        let v = status_field(pid, ids);
        assert!(v.split_whitespace().all(|id| id == "61000"), "{ids}: {v}");
    }
    assert_eq!(status_field(pid, "Groups"), "");
    assert!(p.finish().success());
}

fn worker_starts_threads_under_its_filter(kind: WorkerKind) {
    let mut p = Probe::start(kind, "enforce");
    assert_eq!(p.ask("thread"), "thread ok");
    assert!(p.finish().success());
}

fn worker_namespaces_differ_from_the_parent(kind: WorkerKind) {
    let p = Probe::start(kind, "enforce");
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", p.pid())).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace is shared");
    }
    assert!(p.finish().success());
}

fn worker_root_is_empty(kind: WorkerKind) {
    let p = Probe::start(kind, "enforce");
    let entries: Vec<_> = std::fs::read_dir(format!("/proc/{}/root", p.pid()))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "root holds {entries:?}");
    assert!(p.finish().success());
}

fn escape_is_killed_by_seccomp_and_named(kind: WorkerKind, what: &str, syscall: &str) {
    let p = Probe::start(kind, "enforce");
    let line = format!("escape {what} {}", std::process::id());
    let (sig, note) = p.killed_by(&line);
    assert_eq!(sig, Some(libc::SIGSYS), "{what} did not die of SIGSYS");
    let note = note.unwrap_or_else(|| panic!("{what}: no death note"));
    assert_eq!(note.name(), Some(syscall), "{note}");
}

fn escape_fails_without_seccomp_too(what: &str) {
    let mut p = Probe::start(WorkerKind::Vcpu, "off");
    let reply = p.ask(&format!("escape {what} {}", std::process::id()));
    assert!(reply.starts_with("blocked "), "{what}: {reply}");
    assert!(p.finish().success());
}

// ---- runner --------------------------------------------------------------

fn main() {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        probe_main(&spec);
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the sandbox tests need root (namespaces, setuid)");
    let mut tests: Vec<(String, Box<dyn Fn()>)> = Vec::new();
    let escapes = [
        ("open", "openat"),
        ("execve", "execve"),
        ("socket", "socket"),
        ("ptrace", "ptrace"),
        ("mount", "mount"),
    ];
    for kind in KINDS {
        let k = kind.name();
        tests.push((
            format!("{k}_worker_status_shows_seccomp_nnp_no_caps_and_a_non_root_uid"),
            Box::new(move || worker_status_shows_seccomp_nnp_no_caps_and_a_non_root_uid(kind)),
        ));
        tests.push((
            format!("{k}_worker_starts_threads_under_its_filter"),
            Box::new(move || worker_starts_threads_under_its_filter(kind)),
        ));
        tests.push((
            format!("{k}_worker_namespaces_differ_from_the_parent"),
            Box::new(move || worker_namespaces_differ_from_the_parent(kind)),
        ));
        tests.push((
            format!("{k}_worker_root_is_empty"),
            Box::new(move || worker_root_is_empty(kind)),
        ));
        for (what, syscall) in escapes {
            tests.push((
                format!("{k}_escape_{what}_is_killed_by_seccomp_and_named_{syscall}"),
                Box::new(move || escape_is_killed_by_seccomp_and_named(kind, what, syscall)),
            ));
        }
    }
    for (what, _) in escapes {
        tests.push((
            format!("escape_{what}_fails_without_seccomp_too"),
            Box::new(move || escape_fails_without_seccomp_too(what)),
        ));
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in &tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(name.clone());
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
