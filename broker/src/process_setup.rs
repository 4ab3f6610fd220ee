//! What QEMU's process options do to the broker process itself, applied
//! before any thread starts: `-D` (stderr of every process to a file),
//! `-msg timestamp=` (passed to the workers through the environment),
//! `-name process=`, `-daemonize` (QEMU's semantics: the parent exits,
//! with the child's status, once the VM is set up and its sockets exist;
//! a start-up error is printed by the parent) and `-pidfile` (locked,
//! removed at exit).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::cli::{Config, SerialSpec};

/// Errors of the process set-up (QEMU's messages).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `-D` could not be opened.
    #[error("could not open log file '{0}'")]
    LogFile(PathBuf, #[source] std::io::Error),
    /// `-daemonize` with stdio in use.
    #[error("-serial stdio: cannot use stdio with -daemonize")]
    StdioDaemon,
    /// fork/pipe/setsid failed.
    #[error("cannot daemonize")]
    Daemonize(#[source] std::io::Error),
    /// `-pidfile` could not be created or locked.
    #[error("cannot create PID file: {0}")]
    PidFile(String),
}

/// The write end of the pipe to the waiting parent (`-daemonize`).
static PARENT: Mutex<Option<File>> = Mutex::new(None);

/// Environment variable telling workers to put timestamps on log lines.
pub const TIMESTAMP_ENV: &str = ipc_proto::logging::TIMESTAMP_ENV;

/// The pid file, removed when dropped.
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Applies the process options; call before any thread starts.
pub fn apply(cfg: &Config) -> Result<Option<PidFile>, ProcessError> {
    if cfg.daemonize && cfg.serial == SerialSpec::Stdio {
        return Err(ProcessError::StdioDaemon);
    }
    if let Some(path) = &cfg.log_file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ProcessError::LogFile(path.clone(), e))?;
        // Workers inherit stderr: their lines go to the file too.
        dup_onto(&f, 2).map_err(|e| ProcessError::LogFile(path.clone(), e))?;
    }
    // No thread runs yet, so the environment may change.
    if cfg.msg_timestamp {
        std::env::set_var(TIMESTAMP_ENV, "on");
    } else {
        std::env::remove_var(TIMESTAMP_ENV);
    }
    if let Some(name) = &cfg.process_name {
        set_process_name(name);
    }
    if cfg.daemonize {
        daemonize(cfg.log_file.is_some())?;
    }
    cfg.pidfile.as_ref().map(pidfile).transpose()
}

/// Makes `target` (0, 1 or 2) a copy of `file`.
fn dup_onto(file: &File, target: i32) -> std::io::Result<()> {
    // SAFETY: dup2 of an open fd onto a standard stream number; the old
    // stream is closed by the kernel, and nothing holds it as owned.
    if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `PR_SET_NAME`: what `ps`/`top` show (QEMU's `-name process=`); the
/// kernel keeps 15 bytes.
fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    for (d, s) in buf.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes from `buf`, which is 16 bytes with a NUL at the end.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

fn daemonize(keep_stderr: bool) -> Result<(), ProcessError> {
    let err = |e: nix::Error| ProcessError::Daemonize(e.into());
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err)?;
    // SAFETY: no other thread exists yet (the caller's contract), so the
    // child may go on running arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(err)? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut pipe = File::from(r);
            let mut msg = Vec::new();
            let _ = pipe.read_to_end(&mut msg);
            match msg.split_first() {
                Some((0, _)) => std::process::exit(0),
                Some((code, text)) => {
                    let _ = std::io::stderr().write_all(text);
                    std::process::exit(i32::from(*code));
                }
                None => {
                    // The child died without a word: its status is ours.
                    let code = match nix::sys::wait::waitpid(child, None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                        _ => 1,
                    };
                    std::process::exit(code);
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::unistd::setsid().map_err(err)?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(ProcessError::Daemonize)?;
            let to = if keep_stderr {
                &[0, 1][..]
            } else {
                &[0, 1, 2][..]
            };
            for fd in to {
                dup_onto(&null, *fd).map_err(ProcessError::Daemonize)?;
            }
            *PARENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(File::from(w));
            Ok(())
        }
    }
}

/// Tells a waiting `-daemonize` parent that the VM is set up (it exits 0).
pub fn report_ready() {
    if let Some(mut p) = PARENT.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = p.write_all(&[0]);
    }
}

/// Hands a start-up failure to a waiting `-daemonize` parent (it prints
/// `message` and exits with `code`); false if there is no such parent.
pub fn report_failure(code: u8, message: &str) -> bool {
    match PARENT.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(mut p) => {
            let mut buf = vec![code.max(1)];
            buf.extend_from_slice(message.as_bytes());
            buf.push(b'\n');
            let _ = p.write_all(&buf);
            true
        }
        None => false,
    }
}

fn pidfile(path: &PathBuf) -> Result<PidFile, ProcessError> {
    let fail = |what: &str, e: std::io::Error| {
        ProcessError::PidFile(format!("{what}: {}", qemu_strerror(&e)))
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| fail("Cannot open pid file", e))?;
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_SETLK with a valid flock struct on an open fd.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &lock) } != 0 {
        return Err(fail(
            "Cannot lock pid file",
            std::io::Error::last_os_error(),
        ));
    }
    f.set_len(0)
        .map_err(|e| fail("Failed to write pid file", e))?;
    writeln!(f, "{}", std::process::id()).map_err(|e| fail("Failed to write pid file", e))?;
    Ok(PidFile {
        path: path.clone(),
        _file: f,
    })
}

/// An errno's text as glibc's strerror (and so QEMU) words it.
fn qemu_strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}
