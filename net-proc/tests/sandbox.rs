//! net-proc's sandbox, end to end (as the broker spawns it for a TAP
//! netdev): the built worker is started as the broker's spawner does (a new
//! pid namespace, a socketpair control channel, the sandbox flags and a
//! death-note pipe), and after its handshake its `/proc` entries show the
//! sandbox; escape attempts sent as `TestEscape` requests (feature
//! `test-hooks`, never in release builds) fail, and seccomp's kill names
//! the syscall in the death note. Needs root.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};

use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::worker::BrokerChannel;
use ipc_proto::{BrokerMsg, FlatError, WorkerKind, WorkerMsg};
use sandbox::args::{DEFAULT_MAX_FDS, DEFAULT_MAX_THREADS};
use sandbox::escape::{Escape, Outcome};
use sandbox::{death_note, namespaces, SandboxArgs};

struct Worker {
    child: Child,
    channel: BrokerChannel<NetRequest, NetReply, NetEvent>,
    note: OwnedFd,
    next_id: u64,
}

impl Worker {
    /// Starts net-proc sandboxed and completes its handshake.
    fn start() -> Worker {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let (broker_end, worker_end) = UnixStream::pair().unwrap();
        let (note_r, note_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let control = worker_end.as_raw_fd();
        let note = note_w.as_raw_fd();
        let sandbox = SandboxArgs {
            uid: 61_077,
            gid: 61_077,
            max_fds: DEFAULT_MAX_FDS,
            max_threads: DEFAULT_MAX_THREADS,
            death_note_fd: Some(note),
            seccomp_log: false,
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_net-proc"));
        cmd.arg("--control-fd")
            .arg(control.to_string())
            .args(sandbox.to_args());
        // SAFETY: the closure only calls fcntl (async-signal-safe) on fd
        // numbers open in the parent at fork time.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [control, note] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = namespaces::spawn_in_new_pid_ns(&mut cmd).expect("spawn net-proc");
        drop((worker_end, note_w));
        let (channel, hello) = ipc_proto::worker::accept::<NetRequest, NetReply, NetEvent>(
            broker_end,
            WorkerKind::Net,
        )
        .expect("handshake");
        assert_eq!(hello.kind, WorkerKind::Net);
        let mut w = Worker {
            child,
            channel,
            note: note_r,
            next_id: 1,
        };
        // Served after the sandbox is entered.
        assert_eq!(w.request(NetRequest::Ping), Some(Ok(NetReply::Alive)));
        w
    }

    /// Sends `req`; `None` if the worker closed the channel instead of
    /// answering.
    fn request(&mut self, req: NetRequest) -> Option<Result<NetReply, FlatError>> {
        let id = self.next_id;
        self.next_id += 1;
        self.channel
            .send(&BrokerMsg::Request { id, body: req }, &[])
            .ok()?;
        match self.channel.recv() {
            Ok((WorkerMsg::Reply { id: got, result }, _)) => {
                assert_eq!(got, id);
                Some(result)
            }
            Ok((WorkerMsg::Event(e), _)) => panic!("unexpected event {e:?}"),
            Err(e) => {
                assert!(e.is_closed(), "channel error {e}");
                None
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn ns(pid: &str, which: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}")).unwrap()
}

#[test]
fn net_worker_is_sandboxed_after_its_handshake() {
    let w = Worker::start();
    let pid = w.pid();
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u != "0"),
        "net-proc runs as root: {uids}"
    );
    for which in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(
            ns(&pid.to_string(), which),
            ns("self", which),
            "net-proc shares the test's {which} namespace"
        );
    }
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(root.is_empty(), "net-proc's root is not empty: {root:?}");
}

/// Makes a fresh net-proc try `e`: it must be refused with an errno or
/// killed with SIGSYS, its death note naming `syscall`.
fn escape_fails(e: Escape, syscall: &str) {
    let mut w = Worker::start();
    match w.request(NetRequest::TestEscape(e)) {
        Some(Ok(NetReply::EscapeOutcome(Outcome::Blocked(errno)))) => assert!(errno > 0),
        None => {
            let status = w.child.wait().unwrap();
            assert_eq!(status.signal(), Some(libc::SIGSYS), "{e:?}: {status}");
            let note = death_note::read_note(&w.note).expect("no death note");
            assert_eq!(note.name(), Some(syscall), "{e:?}");
        }
        other => panic!("{e:?} was not stopped: {other:?}"),
    }
}

#[test]
fn net_worker_cannot_open_a_host_file() {
    escape_fails(Escape::OpenHostFile, "openat");
}

#[test]
fn net_worker_cannot_execve() {
    escape_fails(Escape::Execve, "execve");
}

#[test]
fn net_worker_cannot_open_an_inet_socket() {
    escape_fails(Escape::InetSocket, "socket");
}

#[test]
fn net_worker_cannot_ptrace_the_test_process() {
    let pid = i32::try_from(std::process::id()).unwrap();
    escape_fails(Escape::Ptrace { pid }, "ptrace");
}

#[test]
fn net_worker_forbidden_syscall_is_killed_and_named() {
    escape_fails(Escape::ForbiddenSyscall, "mount");
}
