//! The seccomp filters: built once from [`rules`](super::rules) with
//! rust-vmm `seccompiler`, installed on every thread (TSYNC).
//!
//! Two filters are stacked: the kind's allowlist (mismatch: `Trap`, or
//! `Log` in discovery mode), and one that answers `clone3` with ENOSYS so
//! glibc creates threads with `clone`, whose flags the allowlist can check
//! (clone3 passes them in memory, out of BPF's reach).
//!
//! A trapped syscall runs [`on_sigsys`]: it writes a
//! [`DeathNote`](super::DeathNote) to the broker's pipe and a line to
//! stderr, then makes a second forbidden syscall while SIGSYS is blocked,
//! which makes the kernel kill the whole worker with SIGSYS (this works
//! even for pid 1 of a pid namespace, which ignores a plain `raise`).

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::death_note::DeathNote;
use super::rules::{self, ArgMatch, Rule};
use super::{syscall_names, Result, SandboxError, SeccompMode};
use ipc_proto::WorkerKind;

/// The death-note fd the SIGSYS handler writes to (-1: none).
static NOTE_FD: AtomicI32 = AtomicI32::new(-1);

/// The compiled BPF programs of one worker kind.
#[derive(Debug)]
pub struct CompiledFilters {
    allowlist: Option<BpfProgram>,
    no_clone3: Option<BpfProgram>,
    trap: bool,
}

fn condition(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    v: u64,
) -> Result<SeccompCondition> {
    SeccompCondition::new(index, len, op, v).map_err(SandboxError::SeccompRules)
}

fn to_seccomp_rules(rule: &Rule) -> Result<Vec<SeccompRule>> {
    match rule.args {
        ArgMatch::Any => Ok(Vec::new()),
        ArgMatch::OneOf { index, values } => values
            .iter()
            .map(|&v| {
                let c = condition(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
                SeccompRule::new(vec![c]).map_err(SandboxError::SeccompRules)
            })
            .collect(),
        ArgMatch::HasBits { index, bits } => {
            let c = condition(
                index,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(bits),
                bits,
            )?;
            Ok(vec![
                SeccompRule::new(vec![c]).map_err(SandboxError::SeccompRules)?
            ])
        }
    }
}

/// The allowlist map of `kind`: syscall → rules (empty = any call).
fn rule_map(kind: WorkerKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut unconditional: Vec<i64> = Vec::new();
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for rule in rules::COMMON.iter().chain(rules::for_kind(kind)) {
        let converted = to_seccomp_rules(rule)?;
        if converted.is_empty() {
            unconditional.push(rule.syscall);
        }
        map.entry(rule.syscall).or_default().extend(converted);
    }
    for nr in unconditional {
        map.insert(nr, Vec::new());
    }
    Ok(map)
}

fn compile_filter(
    map: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(map, mismatch, matched, TargetArch::x86_64)
        .map_err(SandboxError::SeccompRules)?;
    BpfProgram::try_from(filter).map_err(SandboxError::SeccompRules)
}

/// Compiles `kind`'s filters for `mode`.
pub fn compile(kind: WorkerKind, mode: SeccompMode) -> Result<CompiledFilters> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
        #[cfg(feature = "test-hooks")]
        SeccompMode::Off => {
            return Ok(CompiledFilters {
                allowlist: None,
                no_clone3: None,
                trap: false,
            })
        }
    };
    let allowlist = compile_filter(rule_map(kind)?, mismatch, SeccompAction::Allow)?;
    let no_clone3 = compile_filter(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    Ok(CompiledFilters {
        allowlist: Some(allowlist),
        no_clone3: Some(no_clone3),
        trap: mode == SeccompMode::Enforce,
    })
}

/// Installs the SIGSYS handler (when trapping) and the filters on every
/// thread.
pub fn install(filters: &CompiledFilters, note_fd: Option<RawFd>) -> Result<()> {
    if filters.trap {
        NOTE_FD.store(note_fd.unwrap_or(-1), Ordering::SeqCst);
        install_sigsys_handler()?;
    }
    // The clone3 filter first: once the allowlist is in, seccomp(2) itself
    // is forbidden.
    if let Some(p) = &filters.no_clone3 {
        seccompiler::apply_filter_all_threads(p).map_err(SandboxError::Seccomp)?;
    }
    if let Some(p) = &filters.allowlist {
        seccompiler::apply_filter_all_threads(p).map_err(SandboxError::Seccomp)?;
    }
    Ok(())
}

fn install_sigsys_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only makes async-signal-safe calls;
    // `act` is valid for the call and the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SandboxError::last_os("install the SIGSYS handler"));
    }
    Ok(())
}

/// The `_sigsys` member of `siginfo_t` on x86_64.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Formats "bulkhead: forbidden syscall N (name)\n" into `buf` without
/// allocating; returns the length.
fn format_line(buf: &mut [u8; 96], nr: u32) -> usize {
    let mut len = 0;
    let mut push = |b: &[u8], len: &mut usize| {
        for &c in b {
            if *len < buf.len() {
                buf[*len] = c;
                *len += 1;
            }
        }
    };
    push(b"bulkhead: forbidden syscall ", &mut len);
    let mut digits = [0u8; 10];
    let mut n = nr;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(&digits[i..], &mut len);
    if let Some(name) = syscall_names::name(nr) {
        push(b" (", &mut len);
        push(name.as_bytes(), &mut len);
        push(b")", &mut len);
    }
    push(b"\n", &mut len);
    len
}

/// The SIGSYS handler: async-signal-safe calls only (write, syscall).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // for SIGSYS from seccomp its union holds `_sigsys`, laid out as
    // `SigsysInfo`.
    let si = unsafe { &*(info as *const SigsysInfo) };
    let note = DeathNote {
        syscall: si.syscall as u32,
        arch: si.arch,
    };
    let rec = note.encode();
    let fd = NOTE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write of a stack buffer to an fd; async-signal-safe.
        unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
    }
    let mut line = [0u8; 96];
    let n = format_line(&mut line, note.syscall);
    // SAFETY: write of a stack buffer to stderr; async-signal-safe.
    unsafe { libc::write(2, line.as_ptr().cast(), n) };
    // A forbidden syscall while SIGSYS is blocked (we are in its handler):
    // the kernel resets SIGSYS to its default and kills the process. The
    // reboot magic is invalid, so it could do nothing even if allowed.
    // SAFETY: a syscall with integer arguments only.
    unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) };
    // Not reached while the filter is installed; end anyway.
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in [WorkerKind::Vcpu, WorkerKind::Block, WorkerKind::Net] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let f = compile(kind, mode).unwrap();
                assert!(f.allowlist.as_ref().is_some_and(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn ioctl_rules_of_common_and_kind_merge_into_one_entry() {
        let map = rule_map(WorkerKind::Vcpu).unwrap();
        let ioctl = map.get(&libc::SYS_ioctl).unwrap();
        assert_eq!(ioctl.len(), rules::KVM_IOCTLS.len());
        assert!(map.get(&libc::SYS_read).unwrap().is_empty());
        assert!(!map.contains_key(&libc::SYS_execve));
    }

    #[test]
    fn sigsys_line_names_the_syscall() {
        let mut buf = [0u8; 96];
        let n = format_line(&mut buf, 165);
        assert_eq!(&buf[..n], b"bulkhead: forbidden syscall 165 (mount)\n");
        let n = format_line(&mut buf, 9999);
        assert_eq!(&buf[..n], b"bulkhead: forbidden syscall 9999\n");
    }
}
