//! Namespaces and the empty root: the worker's own mount, ipc, uts and net
//! namespaces, and a root pivoted into an empty read-only tmpfs. (No cgroup
//! namespace: with no /proc and no cgroupfs in the empty root it would hide
//! nothing, and the systemd unit need not allow it.)
//!
//! A pid namespace cannot be entered by the worker itself (`unshare` with
//! `CLONE_NEWPID` only moves future children), so the broker's spawner
//! calls [`spawn_in_new_pid_ns`]: the calling thread's namespace for
//! children is switched to a fresh pid namespace just for that one spawn,
//! which makes the worker pid 1 of its own namespace, then switched back.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command};

use ipc_proto::WorkerKind;

use super::{Result, SandboxError};

/// Where the empty tmpfs is mounted before it becomes the root. Only the
/// worker's private mount namespace sees the mount.
const NEW_ROOT: &str = "/tmp";

/// Counts the threads of this process (from `/proc/self/task`).
pub fn thread_count() -> Result<usize> {
    let dir = std::fs::read_dir("/proc/self/task")
        .map_err(|e| SandboxError::Sys("read /proc/self/task", e))?;
    Ok(dir.count())
}

/// Unshares every namespace a worker can leave on its own. Not the pid
/// namespace: a pending pid namespace for children makes the kernel refuse
/// new threads (EINVAL), and seccomp forbids new processes anyway.
pub fn unshare_all(kind: WorkerKind) -> Result<()> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare takes flags only; the process is single-threaded
    // (checked by the caller).
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(SandboxError::last_os("unshare"));
    }
    let host = format!("bulkhead-{}", kind.name());
    // SAFETY: the pointer and length describe `host`, alive for the call.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } != 0 {
        return Err(SandboxError::last_os("sethostname"));
    }
    Ok(())
}

fn mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    step: &'static str,
) -> Result<()> {
    let cstr = |s: &str| CString::new(s).map_err(|_| SandboxError::BadArgument(s.to_owned()));
    let src = src.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for
    // the call; mount reads them only.
    let rc = unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        return Err(SandboxError::last_os(step));
    }
    Ok(())
}

/// Makes every mount private, pivots the root into an empty tmpfs,
/// detaches the old root and remounts the new one read-only.
pub fn pivot_to_empty_root() -> Result<()> {
    mount(
        None,
        "/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "make mounts private",
    )?;
    mount(
        Some("bulkhead-empty"),
        NEW_ROOT,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("size=4k,nr_inodes=1,mode=0555"),
        "mount the empty tmpfs",
    )?;
    std::env::set_current_dir(NEW_ROOT).map_err(|e| SandboxError::Sys("chdir new root", e))?;
    let dot = c".";
    // SAFETY: pivot_root with two NUL-terminated paths; stacking the old
    // root under the new one at "." is the documented idiom.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(SandboxError::last_os("pivot_root"));
    }
    // SAFETY: umount2 with a NUL-terminated path and a flag.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(SandboxError::last_os("detach the old root"));
    }
    std::env::set_current_dir("/").map_err(|e| SandboxError::Sys("chdir /", e))?;
    mount(
        None,
        "/",
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
        "remount the root read-only",
    )
}

/// Spawns `cmd` as pid 1 of a new pid namespace (needs `CAP_SYS_ADMIN`).
///
/// Works from any thread of a multi-threaded broker: the calling thread's
/// namespace-for-children is set to a fresh pid namespace, `cmd` is
/// spawned, and the thread is put back to the broker's own pid namespace
/// whatever the outcome. Notes for the caller's `pre_exec`: inside the new
/// namespace `getppid()` returns 0, and a parent-death signal fires when
/// the *calling thread* ends, so spawn from a thread that lives as long as
/// the worker.
pub fn spawn_in_new_pid_ns(cmd: &mut Command) -> std::io::Result<Child> {
    let own = File::open("/proc/self/ns/pid")?;
    // SAFETY: unshare takes flags only; CLONE_NEWPID changes only where
    // this thread's future children go.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let spawned = cmd.spawn();
    // SAFETY: setns with an open pid-namespace fd of our own active
    // namespace, which always may be re-entered for children.
    let rc = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // The thread would put every later child in the worker's
        // namespace; that child is not ours to keep.
        if let Ok(mut child) = spawned {
            let _ = child.kill();
            let _ = child.wait();
        }
        return Err(err);
    }
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_sees_the_test_threads() {
        let n = thread_count().unwrap();
        assert!(n >= 1);
    }

    #[test]
    fn spawn_in_new_pid_ns_makes_the_child_pid_1_and_restores_the_thread() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test needs root (CAP_SYS_ADMIN)");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo $$"]);
        cmd.stdout(std::process::Stdio::piped());
        let out = spawn_in_new_pid_ns(&mut cmd)
            .unwrap()
            .wait_with_output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
        let own = std::fs::read_link("/proc/thread-self/ns/pid").unwrap();
        let kids = std::fs::read_link("/proc/thread-self/ns/pid_for_children").unwrap();
        assert_eq!(own, kids);
    }
}
