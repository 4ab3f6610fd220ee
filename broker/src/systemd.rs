//! Fitting systemd as a well-behaved daemon does, with no library beyond
//! std and libc (the protocol is a few datagrams and environment
//! variables):
//! - [`Notifier`]: `sd_notify` over `NOTIFY_SOCKET` (path or abstract):
//!   `READY=1` once QMP is served, `STATUS=` on state changes,
//!   `STOPPING=1` at shutdown, `WATCHDOG=1` pings;
//! - [`Watchdog`]: pings at half of `WATCHDOG_USEC` while a health check
//!   passes, so a wedged broker stops pinging and systemd restarts it;
//! - [`listen_fds`]: socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//!   `LISTEN_FDNAMES`): the QMP listening sockets systemd passed;
//! - [`JournalFormat`]: log lines with `<N>` syslog-priority prefixes and no
//!   timestamps or colours when stderr is the journal ([`logs_to_journal`]).

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Errors of the systemd integration.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@abstract`.
    #[error("NOTIFY_SOCKET '{0}' is not an absolute path or an abstract name")]
    BadNotifySocket(String),
    /// The notification could not be sent.
    #[error("cannot notify systemd")]
    Send(#[source] std::io::Error),
    /// A `LISTEN_*` variable is malformed.
    #[error("malformed {0}: '{1}'")]
    BadListenEnv(&'static str, String),
    /// A passed fd is not a listening Unix stream socket.
    #[error("socket-activation fd {0} is not a listening Unix stream socket")]
    NotUnixListener(RawFd),
    /// A system call on a passed fd failed.
    #[error("socket-activation fd {0}")]
    Fd(RawFd, #[source] std::io::Error),
    /// The watchdog thread could not start.
    #[error("cannot start the watchdog thread")]
    Thread(#[source] std::io::Error),
}

/// Result of systemd operations.
pub type Result<T> = std::result::Result<T, SystemdError>;

// ---- notifications ---------------------------------------------------------

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `None` when not started by
    /// systemd with `Type=notify`.
    pub fn from_env() -> Result<Option<Notifier>> {
        Notifier::from_value(std::env::var_os("NOTIFY_SOCKET"))
    }

    /// The notifier for a `NOTIFY_SOCKET` value.
    pub fn from_value(value: Option<OsString>) -> Result<Option<Notifier>> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let text = value.to_string_lossy().into_owned();
        let bad = || SystemdError::BadNotifySocket(text.clone());
        let addr = if let Some(name) = text.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())?
        } else if text.starts_with('/') {
            SocketAddr::from_pathname(&text).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        let sock = UnixDatagram::unbound().map_err(SystemdError::Send)?;
        Ok(Some(Notifier { sock, addr }))
    }

    /// Sends one notification (`KEY=VALUE` lines).
    pub fn notify(&self, state: &str) -> Result<()> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
            .map_err(SystemdError::Send)
    }

    /// `READY=1`: QMP is being served.
    pub fn ready(&self) -> Result<()> {
        self.notify("READY=1")
    }

    /// `STATUS=text` (one line: newlines become spaces).
    pub fn status(&self, text: &str) -> Result<()> {
        self.notify(&format!("STATUS={}", text.replace('\n', " ")))
    }

    /// `STOPPING=1`: orderly shutdown has begun.
    pub fn stopping(&self) -> Result<()> {
        self.notify("STOPPING=1")
    }

    /// `WATCHDOG=1`: the broker is alive.
    pub fn watchdog(&self) -> Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// A second handle on the same notification socket (for other threads).
    pub fn try_clone(&self) -> Result<Notifier> {
        Ok(Notifier {
            sock: self.sock.try_clone().map_err(SystemdError::Send)?,
            addr: self.addr.clone(),
        })
    }
}

// ---- watchdog ----------------------------------------------------------------

/// The ping interval: half of `WATCHDOG_USEC`, if the watchdog is on and
/// meant for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from the variables' values.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// A thread that pings `WATCHDOG=1` every interval while `health()` holds.
/// Stopped (and joined) on drop.
pub struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging through `notifier` every `interval`. A failed health
    /// check skips the ping (logged once per failure streak), so systemd's
    /// watchdog fires if the broker stays wedged.
    pub fn start(
        notifier: &Notifier,
        interval: Duration,
        health: impl Fn() -> bool + Send + 'static,
    ) -> Result<Watchdog> {
        let notifier = notifier.try_clone()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || ping_loop(&notifier, interval, &health, &stop2))
            .map_err(SystemdError::Thread)?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

fn ping_loop(
    notifier: &Notifier,
    interval: Duration,
    health: &dyn Fn() -> bool,
    stop: &(Mutex<bool>, Condvar),
) {
    let mut unhealthy = false;
    loop {
        if health() {
            unhealthy = false;
            if let Err(e) = notifier.watchdog() {
                tracing::warn!("watchdog ping failed: {e}");
            }
        } else if !unhealthy {
            unhealthy = true;
            tracing::error!("broker health check failed: watchdog pings stopped");
        }
        let guard = stop.0.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = stop
            .1
            .wait_timeout_while(guard, interval, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        if *guard {
            return;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- socket activation -------------------------------------------------------

/// A listening socket systemd passed.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The listener (close-on-exec).
    pub listener: UnixListener,
    /// Its `FileDescriptorName=` (`qmp` in the shipped unit), if given.
    pub name: Option<String>,
}

/// How many fds were passed and their names, from the `LISTEN_*` values.
/// `None` when the fds are not for this process (no `LISTEN_PID`, or
/// another pid's).
pub fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<Option<String>>>> {
    let Some(pid) = pid else { return Ok(None) };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| SystemdError::BadListenEnv("LISTEN_PID", pid.to_owned()))?;
    if pid != our_pid {
        return Ok(None);
    }
    let fds = fds.unwrap_or("0");
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| SystemdError::BadListenEnv("LISTEN_FDS", fds.to_owned()))?;
    if n > 1024 {
        return Err(SystemdError::BadListenEnv("LISTEN_FDS", fds.to_owned()));
    }
    let mut out: Vec<Option<String>> = match names {
        Some(s) if !s.is_empty() => s
            .split(':')
            .map(|n| (!n.is_empty()).then(|| n.to_owned()))
            .collect(),
        _ => Vec::new(),
    };
    out.resize(n, None);
    Ok(Some(out))
}

fn check_unix_listener(fd: RawFd) -> Result<()> {
    let get = |opt: libc::c_int| -> Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, ours.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(SystemdError::NotUnixListener(fd));
        }
        Ok(v)
    };
    if get(libc::SO_DOMAIN)? != libc::AF_UNIX
        || get(libc::SO_TYPE)? != libc::SOCK_STREAM
        || get(libc::SO_ACCEPTCONN)? == 0
    {
        return Err(SystemdError::NotUnixListener(fd));
    }
    Ok(())
}

/// Takes the sockets systemd passed to this process (all of them are QMP
/// listeners for the broker), marks them close-on-exec and removes the
/// `LISTEN_*` variables. Empty when not socket-activated. Call once, before
/// other threads start (it edits the environment).
pub fn listen_fds() -> Result<Vec<ActivatedSocket>> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let Some(names) = parsed? else {
        return Ok(Vec::new());
    };
    take_fds(LISTEN_FDS_START, names)
}

/// Takes ownership of fds `first..first+names.len()` as listeners.
fn take_fds(first: RawFd, names: Vec<Option<String>>) -> Result<Vec<ActivatedSocket>> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let fd = first + i as RawFd;
        // SAFETY: fcntl with integer arguments on an fd number.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(SystemdError::Fd(fd, std::io::Error::last_os_error()));
        }
        check_unix_listener(fd)?;
        // SAFETY: systemd passed this fd to this process (LISTEN_PID is
        // ours) and nothing else in the broker owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        out.push(ActivatedSocket {
            listener: UnixListener::from(owned),
            name,
        });
    }
    Ok(out)
}

// ---- journald-friendly logs ---------------------------------------------------

pub use ipc_proto::logging::{logs_to_journal, syslog_priority, JournalFormat};

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::process::Command;

    use super::*;
    use tracing::Level;

    fn recv_all(sock: &UnixDatagram, n: usize) -> Vec<String> {
        let mut buf = [0u8; 512];
        (0..n)
            .map(|_| {
                let len = sock.recv(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..len]).into_owned()
            })
            .collect()
    }

    #[test]
    fn notifier_sends_ready_status_stopping_and_watchdog_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("bulkhead-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_value(Some(path.clone().into()))
            .unwrap()
            .unwrap();
        n.ready().unwrap();
        n.status("running\nguest").unwrap();
        n.stopping().unwrap();
        n.watchdog().unwrap();
        let got = recv_all(&sock, 4);
        assert_eq!(
            got,
            [
                "READY=1",
                "STATUS=running guest",
                "STOPPING=1",
                "WATCHDOG=1"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn notifier_reaches_an_abstract_socket() {
        let name = format!("bulkhead-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_value(Some(format!("@{name}").into()))
            .unwrap()
            .unwrap();
        n.ready().unwrap();
        assert_eq!(recv_all(&sock, 1), ["READY=1"]);
    }

    #[test]
    fn no_notify_socket_means_no_notifier_and_relative_paths_are_refused() {
        assert!(Notifier::from_value(None).unwrap().is_none());
        assert!(Notifier::from_value(Some("".into())).unwrap().is_none());
        assert!(matches!(
            Notifier::from_value(Some("relative/path".into())),
            Err(SystemdError::BadNotifySocket(_))
        ));
    }

    #[test]
    fn watchdog_interval_is_half_the_period_and_only_for_our_pid() {
        let d = watchdog_interval_from(Some("4000000"), None, 7);
        assert_eq!(d, Some(Duration::from_secs(2)));
        assert_eq!(watchdog_interval_from(Some("4000000"), Some("7"), 7), d);
        assert_eq!(watchdog_interval_from(Some("4000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
    }

    #[test]
    fn watchdog_pings_while_healthy_and_stops_on_drop() {
        let name = format!("bulkhead-test-wd-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_value(Some(format!("@{name}").into()))
            .unwrap()
            .unwrap();
        let wd = Watchdog::start(&n, Duration::from_millis(5), || true).unwrap();
        assert_eq!(recv_all(&sock, 3), ["WATCHDOG=1"; 3]);
        drop(wd);
    }

    #[test]
    fn unhealthy_broker_sends_no_watchdog_ping() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let name = format!("bulkhead-test-wd-sick-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_nonblocking(true).unwrap();
        let n = Notifier::from_value(Some(format!("@{name}").into()))
            .unwrap()
            .unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let c = checks.clone();
        let wd = Watchdog::start(&n, Duration::from_millis(1), move || {
            c.fetch_add(1, Ordering::SeqCst);
            false
        })
        .unwrap();
        while checks.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        drop(wd);
        let mut buf = [0u8; 64];
        assert!(sock.recv(&mut buf).is_err(), "a sick broker pinged");
    }

    #[test]
    fn listen_env_is_parsed_only_for_our_pid() {
        let r = parse_listen_env(Some("42"), Some("2"), Some("qmp:other"), 42).unwrap();
        assert_eq!(r, Some(vec![Some("qmp".into()), Some("other".into())]));
        let r = parse_listen_env(Some("42"), Some("2"), None, 42).unwrap();
        assert_eq!(r, Some(vec![None, None]));
        assert_eq!(
            parse_listen_env(Some("41"), Some("1"), None, 42).unwrap(),
            None
        );
        assert_eq!(parse_listen_env(None, Some("1"), None, 42).unwrap(), None);
        assert!(parse_listen_env(Some("42"), Some("x"), None, 42).is_err());
        assert!(parse_listen_env(Some("x"), Some("1"), None, 42).is_err());
    }

    #[test]
    fn passed_fds_become_cloexec_listeners_with_their_names() {
        let dir = std::env::temp_dir().join(format!("bulkhead-lfd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        // Simulate systemd: an fd without close-on-exec.
        let raw = OwnedFd::from(l);
        // SAFETY: F_DUPFD on our own open fd returns a new fd we own.
        let dup = unsafe { libc::fcntl(raw.as_raw_fd(), libc::F_DUPFD, 100) };
        assert!(dup >= 100);
        let got = take_fds(dup, vec![Some("qmp".into())]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name.as_deref(), Some("qmp"));
        // SAFETY: F_GETFD on the fd the listener owns.
        let flags = unsafe { libc::fcntl(got[0].listener.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(got[0].listener.accept().is_ok());
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_passed_fd_that_is_not_a_listener_is_refused() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = OwnedFd::from(f);
        // SAFETY: F_DUPFD on our own open fd returns a new fd we own.
        let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 100) };
        let r = take_fds(dup, vec![None]);
        assert!(matches!(r, Err(SystemdError::NotUnixListener(_))));
        // SAFETY: `dup` was not taken (the check failed before ownership).
        drop(unsafe { OwnedFd::from_raw_fd(dup) });
    }

    /// Runs in a child process (the env is process-wide): the real
    /// `from_env`, `watchdog_interval` and `listen_fds` with systemd's
    /// variables set.
    #[test]
    fn from_env_reads_notify_socket_and_watchdog_in_a_child() {
        if std::env::var_os("BULKHEAD_SYSTEMD_CHILD").is_some() {
            let n = Notifier::from_env().unwrap().unwrap();
            let d = watchdog_interval().unwrap();
            n.status(&format!("interval {}ms", d.as_millis())).unwrap();
            n.ready().unwrap();
            assert!(listen_fds().unwrap().is_empty());
            assert!(std::env::var_os("LISTEN_PID").is_none());
            return;
        }
        let name = format!("bulkhead-test-env-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "systemd::tests::from_env_reads_notify_socket_and_watchdog_in_a_child",
                "--test-threads=1",
            ])
            .env("BULKHEAD_SYSTEMD_CHILD", "1")
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .env("WATCHDOG_USEC", "3000000")
            .env("LISTEN_PID", "1")
            .env("LISTEN_FDS", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(recv_all(&sock, 2), ["STATUS=interval 1500ms", "READY=1"]);
    }

    #[test]
    fn journal_format_writes_priority_target_and_message() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let b2 = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JournalFormat)
            .with_writer(move || b2.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "bulkhead::qmp", "client gone");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "<4>bulkhead::qmp: client gone\n");
    }

    #[test]
    fn journal_format_prefixes_syslog_priorities() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::TRACE), 7);
    }
}
