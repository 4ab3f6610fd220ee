//! Worker supervision, end to end: the real `bulkhead` with its real
//! workers; workers are killed with SIGKILL and the broker must report it,
//! apply the worker's policy and keep answering QMP; no worker may outlive
//! the broker, whether it quits, is signalled or is itself SIGKILLed.
//! Needs /dev/kvm (vcpu-proc runs the default test guest).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// A running broker with a temporary directory for its sockets.
struct Broker {
    child: Child,
    dir: PathBuf,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-sup-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("qmp.sock");
        let child = Command::new(BIN)
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(["-m", "32M", "-serial", "null", "-sandbox", "off"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let b = Broker { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !b.sock().exists() || b.workers().len() < 2 {
            assert!(Instant::now() < deadline, "broker did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    fn client(&self) -> Client {
        Client::connect(&self.sock())
    }

    /// (pid, comm) of every child process of the broker.
    fn workers(&self) -> Vec<(u32, String)> {
        children(self.child.id())
    }

    fn worker_pid(&self, name: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((pid, _)) = self.workers().into_iter().find(|(_, c)| c == name) {
                return pid;
            }
            assert!(Instant::now() < deadline, "no {name} worker");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
}

fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let path = t.path().join("children");
        let Ok(s) = std::fs::read_to_string(path) else {
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

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal QMP client: negotiated on connect, events kept aside.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut c = Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
        };
        let greeting = c.read();
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        assert_eq!(c.cmd("qmp_capabilities", json!({})), json!({"return": {}}));
        c
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    fn cmd(&mut self, name: &str, args: Value) -> Value {
        let msg = json!({"execute": name, "arguments": args});
        writeln!(self.writer, "{msg}").unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    fn wait_event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self
            .events
            .iter()
            .position(|e| e["event"] == name && pred(&e["data"]))
        {
            return self.events.remove(i);
        }
        loop {
            let v = self.read();
            if v["event"] == name && pred(&v["data"]) {
                return v;
            }
            self.events.push(v);
        }
    }
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a pid we just read as our broker's child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

#[test]
fn killed_block_worker_is_reported_and_restarted_while_qmp_keeps_answering() {
    let b = Broker::start(&[]);
    let mut c = b.client();
    let old = b.worker_pid("block-proc");
    kill9(old);
    let exited = c.wait_event("__org.bulkhead_WORKER_EXITED", |d| d["worker"] == "block");
    assert_eq!(exited["data"]["pid"], json!(old));
    assert_eq!(exited["data"]["signal"], "SIGKILL");
    assert_eq!(exited["data"]["action"], "restart");
    let restarted = c.wait_event("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    let new = restarted["data"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(new, old);
    assert!(alive(new));
    assert!(c.cmd("query-version", json!({}))["return"]["qemu"].is_object());
    assert_eq!(
        c.cmd("query-status", json!({}))["return"]["status"],
        "running"
    );
}

#[test]
fn block_worker_survives_repeated_kills_with_backoff() {
    let b = Broker::start(&[]);
    let mut c = b.client();
    for i in 1..=5u64 {
        let pid = b.worker_pid("block-proc");
        kill9(pid);
        let r = c.wait_event("__org.bulkhead_WORKER_RESTARTED", |d| {
            d["restarts"] == json!(i)
        });
        assert_ne!(r["data"]["pid"], json!(pid));
    }
    assert!(c.cmd("query-version", json!({}))["return"].is_object());
}

#[test]
fn killed_vcpu_worker_is_a_guest_crash_and_broker_still_answers_and_quits() {
    let mut b = Broker::start(&[]);
    let mut c = b.client();
    let vcpu = b.worker_pid("vcpu-proc");
    let block = b.worker_pid("block-proc");
    kill9(vcpu);
    let exited = c.wait_event("__org.bulkhead_WORKER_EXITED", |d| d["worker"] == "vcpu");
    assert_eq!(exited["data"]["action"], "guest-crashed");
    let status = c.cmd("query-status", json!({}));
    assert_eq!(
        status["return"],
        json!({"running": false, "singlestep": false, "status": "internal-error"})
    );
    let cont = c.cmd("cont", json!({}));
    assert_eq!(cont["error"]["class"], "GenericError", "{cont}");
    assert!(c.cmd("query-version", json!({}))["return"].is_object());
    assert_eq!(c.cmd("quit", json!({})), json!({"return": {}}));
    assert_eq!(b.wait_exit(), 0);
    wait_dead(block);
    assert!(!b.sock().exists(), "QMP socket left behind");
}

#[test]
fn quit_leaves_no_worker_and_no_socket() {
    let mut b = Broker::start(&[]);
    let pids: Vec<u32> = b.workers().iter().map(|w| w.0).collect();
    assert!(pids.len() >= 2);
    let mut c = b.client();
    assert_eq!(c.cmd("quit", json!({})), json!({"return": {}}));
    assert_eq!(b.wait_exit(), 0);
    for p in pids {
        wait_dead(p);
    }
    assert!(!b.sock().exists());
}

#[test]
fn sigterm_stops_workers_and_removes_sockets() {
    let mut b = Broker::start(&[]);
    let pids: Vec<u32> = b.workers().iter().map(|w| w.0).collect();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(b.child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(b.wait_exit(), 0);
    for p in pids {
        wait_dead(p);
    }
    assert!(!b.sock().exists());
}

#[test]
fn workers_exit_by_themselves_when_the_broker_is_sigkilled() {
    let mut b = Broker::start(&[]);
    let pids: Vec<u32> = b.workers().iter().map(|w| w.0).collect();
    assert!(pids.len() >= 2);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    for p in pids {
        wait_dead(p);
    }
}

#[test]
fn restarted_block_worker_is_not_killed_when_its_spawning_thread_ends() {
    // PR_SET_PDEATHSIG fires when the forking *thread* exits; restarts run
    // on short-lived threads, so the broker must fork from a thread that
    // stays (regression test).
    let b = Broker::start(&[]);
    let mut c = b.client();
    kill9(b.worker_pid("block-proc"));
    let r = c.wait_event("__org.bulkhead_WORKER_RESTARTED", |d| {
        d["worker"] == "block"
    });
    let new = r["data"]["pid"].as_u64().unwrap() as u32;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(new),
        "restarted block-proc died with its spawning thread"
    );
}
