//! Test fixture: starts the real `bulkhead` binary (and its workers) with a
//! QMP socket in a private directory, and a small QMP client.

#![allow(dead_code)]

pub mod locks;
pub mod migration;
pub mod qemu;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any single wait in these tests may take before failing.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The worker executables live beside `bulkhead`, but `cargo test -p broker`
/// builds only the broker: build them once per test binary.
pub fn build_workers() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin = Path::new(env!("CARGO_BIN_EXE_bulkhead"));
        let profile_dir = bin.parent().expect("bulkhead has a directory");
        let have = ["vcpu-proc", "block-proc", "net-proc"]
            .iter()
            .all(|w| profile_dir.join(w).exists());
        if std::env::var_os("BULKHEAD_TEST_NO_BUILD").is_some() && have {
            return;
        }
        let target_dir = profile_dir.parent().expect("profile dir has a parent");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-p",
            "vcpu-proc",
            "-p",
            "block-proc",
            "-p",
            "net-proc",
        ])
        .args(["--features", "test-hooks"])
        .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cannot run cargo to build the workers");
        assert!(status.success(), "building the workers failed");
    });
}

/// Fails the test clearly when KVM is missing.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (KVM) and it is missing"
    );
}

/// (pid, comm) of every child process of `pid` (the broker's workers).
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for k in s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()) {
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{k}/comm")) {
                out.push((k, c.trim().to_owned()));
            }
        }
    }
    out
}

/// SIGKILLs `b`'s worker `comm` (`block-proc`, `net-proc`; once it
/// runs) and waits for the broker's `__org.bulkhead_WORKER_RESTARTED`.
pub fn kill_worker_and_wait_restart(b: &Bulkhead, q: &mut Qmp, comm: &str) {
    let start = Instant::now();
    let pid = loop {
        if let Some((pid, _)) = children(broker_pid(b)).into_iter().find(|(_, c)| c == comm) {
            break pid;
        }
        assert!(start.elapsed() < TIMEOUT, "no {comm} runs");
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid = i32::try_from(pid).expect("a pid fits an i32");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    q.event("__org.bulkhead_WORKER_RESTARTED");
}

/// The pid of a running broker.
pub fn broker_pid(b: &Bulkhead) -> u32 {
    b.child.as_ref().unwrap().id()
}

/// The ELF of test guest `name` (built by vcpu-proc's build script).
pub fn guest(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-guests/x86_64-unknown-linux-gnu/release")
        .join(name);
    assert!(
        p.exists(),
        "test guest {} missing (build vcpu-proc or run scripts/build-guests)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// A private directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "bulkhead-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running broker; killed on drop.
pub struct Bulkhead {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub dir: TempDir,
}

impl Bulkhead {
    /// Starts `bulkhead -qmp unix:SOCK,server=on,wait=off [-serial null] EXTRA...`
    /// and waits until the socket accepts connections.
    pub fn start(extra: &[&str]) -> Self {
        require_kvm();
        build_workers();
        let dir = TempDir::new();
        let sock = dir.0.join("q.sock");
        let mut args = vec![
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", sock.display()),
        ];
        // One serial port: the test's, else none.
        if !extra
            .iter()
            .any(|a| *a == "-serial" || a.starts_with("isa-serial"))
        {
            args.extend(["-serial".to_owned(), "null".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(
            Command::new(env!("CARGO_BIN_EXE_bulkhead"))
                .args(&args)
                .stdin(Stdio::null()),
            sock,
            dir,
        )
    }

    /// Starts `cmd` (a bulkhead command line serving QMP on `sock`, in
    /// `dir`) and waits until the socket accepts connections.
    pub fn start_with(cmd: &mut Command, sock: PathBuf, dir: TempDir) -> Self {
        require_kvm();
        build_workers();
        let child = cmd.spawn().expect("cannot start bulkhead");
        let mut b = Bulkhead {
            child: Some(child),
            sock,
            dir,
        };
        let start = Instant::now();
        loop {
            if UnixStream::connect(&b.sock).is_ok() {
                break;
            }
            if let Some(status) = b.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("bulkhead exited during start-up: {status}");
            }
            assert!(start.elapsed() < TIMEOUT, "QMP socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    }

    /// Connects a new client and reads the greeting.
    pub fn connect(&self) -> (Qmp, Value) {
        Qmp::connect(&self.sock)
    }

    /// Connects, negotiates capabilities and waits for the end of
    /// start-up (the greeting comes before the workers are up;
    /// `query-status` waits for them), so a test begins with the VM
    /// started.
    pub fn client(&self) -> Qmp {
        let (mut q, _) = self.connect();
        q.negotiate();
        q.execute("query-status", Value::Null);
        q
    }

    /// Waits for the broker to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < TIMEOUT, "bulkhead did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Bulkhead {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A minimal QMP client that keeps events aside while waiting for replies.
pub struct Qmp {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
    pub events: VecDeque<Value>,
}

impl Qmp {
    /// Connects to `path` and returns the client and the greeting.
    pub fn connect(path: &Path) -> (Self, Value) {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut q = Qmp {
            stream,
            reader,
            events: VecDeque::new(),
        };
        let greeting = q.recv();
        (q, greeting)
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads the next message (reply or event); panics on EOF or timeout.
    pub fn recv(&mut self) -> Value {
        self.try_recv()
            .expect("connection closed while waiting for a message")
    }

    /// Reads the next message; None on EOF.
    pub fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("reading from bulkhead failed (timeout?)");
        if n == 0 {
            return None;
        }
        assert!(line.ends_with("\r\n"), "QMP lines end with CRLF: {line:?}");
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("bad JSON from bulkhead {line:?}: {e}")),
        )
    }

    /// Reads the next reply, keeping events aside.
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else {
                return v;
            }
        }
    }

    /// Sends `value` as one message and returns its reply.
    pub fn request(&mut self, value: Value) -> Value {
        self.send_raw(value.to_string().as_bytes());
        self.reply()
    }

    /// Runs `name` with `args` and returns the whole reply.
    pub fn execute(&mut self, name: &str, args: Value) -> Value {
        if args.is_null() {
            self.request(json!({"execute": name}))
        } else {
            self.request(json!({"execute": name, "arguments": args}))
        }
    }

    /// Runs `name` without arguments and returns `return`, failing on error.
    pub fn ok(&mut self, name: &str) -> Value {
        let r = self.execute(name, Value::Null);
        r.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{name} failed: {r}"))
    }

    /// `qmp_capabilities`.
    pub fn negotiate(&mut self) {
        assert_eq!(self.ok("qmp_capabilities"), json!({}));
    }

    /// Waits for event `name` (looking at events kept aside first).
    pub fn event(&mut self, name: &str) -> Value {
        self.event_where(name, |_| true)
    }

    /// Waits for event `name` whose `data` satisfies `pred` (looking at
    /// events kept aside first).
    pub fn event_where(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |e: &Value| e["event"] == name && pred(&e["data"]);
        if let Some(i) = self.events.iter().position(matches) {
            return self.events.remove(i).unwrap();
        }
        loop {
            let v = self.recv();
            if matches(&v) {
                return v;
            }
            assert!(
                v.get("event").is_some(),
                "unexpected reply while waiting for {name}: {v}"
            );
            self.events.push_back(v);
        }
    }

    /// The error `{class, desc}` of a reply, failing if it succeeded.
    pub fn error_of(reply: &Value) -> (String, String) {
        let e = reply
            .get("error")
            .unwrap_or_else(|| panic!("expected an error, got {reply}"));
        (
            e["class"].as_str().unwrap().to_owned(),
            e["desc"].as_str().unwrap().to_owned(),
        )
    }
}

impl Qmp {
    /// Writes `bytes` in one `sendmsg` with `fds` attached (SCM_RIGHTS).
    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [std::io::IoSlice::new(bytes)];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let n = nix::sys::socket::sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(n, bytes.len(), "short sendmsg");
    }

    /// Runs `name` with `args` (null for none), passing `fds` with the
    /// message, and returns the whole reply.
    pub fn execute_with_fds(
        &mut self,
        name: &str,
        args: Value,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Value {
        let msg = if args.is_null() {
            json!({"execute": name})
        } else {
            json!({"execute": name, "arguments": args})
        };
        self.send_with_fds(msg.to_string().as_bytes(), fds);
        self.reply()
    }
}
