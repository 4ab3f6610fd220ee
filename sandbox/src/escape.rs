//! Escape attempts, for tests only (feature `test-hooks`, which release
//! builds never enable): each tries one thing a compromised worker would,
//! and reports whether the sandbox stopped it. With seccomp enforced most
//! attempts never return: the worker dies with SIGSYS and its death note
//! names the syscall. The messages that carry them are
//! `ipc_proto::escape`'s.

use std::ffi::CString;

pub use ipc_proto::escape::{Escape, Outcome};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `e` in the calling process.
pub fn attempt(e: Escape) -> Outcome {
    match e {
        Escape::OpenHostFile => open_host_file(),
        Escape::Execve => execve(),
        Escape::InetSocket => inet_socket(),
        Escape::Ptrace { pid } => ptrace(pid),
        Escape::ForbiddenSyscall => forbidden_syscall(),
    }
}

fn open_host_file() -> Outcome {
    let path = c"/etc/passwd";
    // SAFETY: open with a NUL-terminated path and flags.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Outcome::Blocked(errno());
    }
    // SAFETY: `fd` was just opened by us.
    unsafe { libc::close(fd) };
    Outcome::Escaped
}

fn execve() -> Outcome {
    let prog = c"/bin/sh";
    let arg1 = c"-c";
    let arg2 = c"true";
    let argv = [
        prog.as_ptr(),
        arg1.as_ptr(),
        arg2.as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NUL-terminated strings and null-terminated arrays, alive for
    // the call; execve returns only on failure.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Outcome::Blocked(errno())
}

fn inet_socket() -> Outcome {
    // SAFETY: socket with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Outcome::Blocked(errno());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 80u16.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([1, 1, 1, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect reads a sockaddr_in of the given size, alive here.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let out = if rc == 0 {
        Outcome::Escaped
    } else {
        Outcome::Blocked(errno())
    };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    out
}

fn ptrace(pid: i32) -> Outcome {
    // SAFETY: ptrace attach with integer arguments and null pointers.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc != 0 {
        return Outcome::Blocked(errno());
    }
    // SAFETY: detach from the process just attached.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    Outcome::Escaped
}

fn forbidden_syscall() -> Outcome {
    let src = CString::default();
    // SAFETY: mount with empty, NUL-terminated strings; it can only fail
    // or, unsandboxed, find nothing to mount.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            src.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Outcome::Blocked(errno());
    }
    Outcome::Escaped
}
