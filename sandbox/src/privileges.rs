//! Credentials and limits: rlimits, the per-VM non-root uid/gid, no
//! capabilities in any set, locked securebits and `no_new_privs`.

use super::{Result, SandboxError};

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two words.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Securebits: no root privilege on exec, setuid fixups always on, no
/// keep-caps, no ambient raise; all of them locked.
const SECUREBITS: libc::c_ulong = (1 << 0) // SECBIT_NOROOT
    | (1 << 1) // SECBIT_NOROOT_LOCKED
    | (1 << 3) // SECBIT_NO_SETUID_FIXUP_LOCKED (fixup stays on)
    | (1 << 5) // SECBIT_KEEP_CAPS_LOCKED (keep-caps stays off)
    | (1 << 6) // SECBIT_NO_CAP_AMBIENT_RAISE
    | (1 << 7); // SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn setrlimit(resource: libc::__rlimit_resource_t, value: u64, step: &'static str) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the rlimit struct we pass, alive for the call.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(SandboxError::last_os(step));
    }
    Ok(())
}

/// No core files; at most `max_fds` open fds and `max_threads` tasks for
/// the uid. File sizes are not limited: block-proc writes images.
pub fn set_rlimits(max_fds: u64, max_threads: u64) -> Result<()> {
    setrlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    setrlimit(libc::RLIMIT_NOFILE, max_fds, "RLIMIT_NOFILE")?;
    setrlimit(libc::RLIMIT_NPROC, max_threads, "RLIMIT_NPROC")?;
    // No message queues: the worker has no use for them.
    setrlimit(libc::RLIMIT_MSGQUEUE, 0, "RLIMIT_MSGQUEUE")
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, step: &'static str) -> Result<libc::c_int> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        return Err(SandboxError::last_os(step));
    }
    Ok(rc)
}

/// Empties the bounding set (every capability the kernel knows).
fn clear_bounding_set() -> Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                // Past the last capability this kernel knows.
                return Ok(());
            }
            return Err(SandboxError::Sys("drop the bounding set", err));
        }
    }
    Ok(())
}

fn capget() -> Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData words (version 3) and reads the
    // header; both are ours and alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(SandboxError::last_os("capget"));
    }
    Ok(data)
}

fn capset_empty() -> Result<()> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads the header and two CapData words, all ours.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(SandboxError::last_os("capset"));
    }
    Ok(())
}

/// Narrows this process's capabilities to `keep` (capability numbers): every
/// other one leaves the bounding, ambient, inheritable, permitted and
/// effective sets. Used by the broker once its workers are up: it still
/// needs to spawn sandboxed workers (namespaces, uid change, signals to
/// them) but nothing else.
pub fn keep_only(keep: &[u32]) -> Result<()> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(SandboxError::Sys("drop the bounding set", err));
        }
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        "clear ambient capabilities",
    )?;
    let mask = keep.iter().fold([0u32; 2], |mut m, &c| {
        if let Some(w) = m.get_mut((c / 32) as usize) {
            *w |= 1 << (c % 32);
        }
        m
    });
    let mut data = capget()?;
    for (d, m) in data.iter_mut().zip(mask) {
        d.effective &= m;
        d.permitted &= m;
        d.inheritable = 0;
    }
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData words, all ours.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(SandboxError::last_os("capset"));
    }
    Ok(())
}

/// Becomes `uid`/`gid` with no supplementary groups and no capability in
/// any set (bounding, ambient, inheritable, permitted, effective).
pub fn drop_to(uid: u32, gid: u32) -> Result<()> {
    if uid == 0 || gid == 0 {
        return Err(SandboxError::RootTarget);
    }
    // Needs CAP_SETPCAP: before the uid change.
    clear_bounding_set()?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        "clear ambient capabilities",
    )?;
    prctl(libc::PR_SET_SECUREBITS, SECUREBITS, "lock securebits")?;
    // SAFETY: setgroups with an empty list (null pointer, length 0).
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(SandboxError::last_os("setgroups"));
    }
    // SAFETY: setresgid takes integers only. glibc applies it to every
    // thread (there is one).
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(SandboxError::last_os("setresgid"));
    }
    // SAFETY: setresuid takes integers only; leaving uid 0 with keep-caps
    // off clears the permitted and effective sets.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(SandboxError::last_os("setresuid"));
    }
    capset_empty()?;
    let left = capget()?;
    if left
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err(SandboxError::CapsRemain(format!(
            "effective {:08x}{:08x} permitted {:08x}{:08x}",
            left[1].effective, left[0].effective, left[1].permitted, left[0].permitted
        )));
    }
    Ok(())
}

/// Re-arms the parent-death signal (SIGKILL): the kernel clears it when the
/// credentials change, and no worker may outlive its broker.
pub fn rearm_parent_death_signal() -> Result<()> {
    prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "parent-death signal",
    )
    .map(|_| ())
}

/// Fixes glibc's malloc arena limit. Without it, the thread that would
/// create the ninth arena asks glibc for the CPU count, which opens
/// `/sys/devices/system/cpu/online`: inside the sandbox that `openat` is
/// refused by seccomp and kills the worker (seen with block-proc's I/O
/// thread pool at queue depth 16). 8 is glibc's own first limit.
pub fn bound_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called
    // while the process is single-threaded, before the sandbox.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}

/// Sets `no_new_privs`: no exec can ever grant privileges again.
pub fn set_no_new_privs() -> Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "no_new_privs").map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capget_reads_this_process_sets() {
        assert!(capget().is_ok());
    }

    #[test]
    fn drop_to_refuses_root_target() {
        assert!(matches!(drop_to(0, 1000), Err(SandboxError::RootTarget)));
    }
}
