//! The seccomp allowlists as reviewed data: one list per worker kind,
//! composed from [`COMMON`] plus the kind's own. Every rule says why it is
//! there. To amend a list, add a [`Rule`] with its reason; run the worker
//! with `--seccomp-log` to find what it needs (the kernel logs each
//! syscall outside the list as an audit record `type=1326 ... syscall=N`).
//!
//! Numbers come from `libc::SYS_*`; ioctl requests from the kernel headers
//! (`linux/kvm.h`, `linux/fs.h`, `linux/if_tun.h`) for x86_64.

use ipc_proto::WorkerKind;

/// Which calls of a syscall a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgMatch {
    /// Every call.
    Any,
    /// Calls whose 32-bit argument `index` is one of `values` (ioctl
    /// requests, fcntl and prctl commands).
    OneOf {
        /// Argument position (0-based).
        index: u8,
        /// Allowed values.
        values: &'static [u64],
    },
    /// Calls whose 64-bit argument `index` has every bit of `bits` set.
    HasBits {
        /// Argument position (0-based).
        index: u8,
        /// Bits that must be set.
        bits: u64,
    },
}

/// One allowlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The syscall number (x86_64).
    pub syscall: i64,
    /// Which of its calls are allowed.
    pub args: ArgMatch,
    /// Why a worker needs it.
    pub why: &'static str,
}

const fn any(syscall: i64, why: &'static str) -> Rule {
    Rule {
        syscall,
        args: ArgMatch::Any,
        why,
    }
}

const fn one_of(syscall: i64, index: u8, values: &'static [u64], why: &'static str) -> Rule {
    Rule {
        syscall,
        args: ArgMatch::OneOf { index, values },
        why,
    }
}

// ioctl requests.
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;

/// KVM ioctls vcpu-proc makes on the /dev/kvm, VM and vCPU fds.
pub const KVM_IOCTLS: &[u64] = &[
    0xae00,     // KVM_GET_API_VERSION
    0xae01,     // KVM_CREATE_VM
    0xae03,     // KVM_CHECK_EXTENSION
    0xae04,     // KVM_GET_VCPU_MMAP_SIZE
    0xc008ae05, // KVM_GET_SUPPORTED_CPUID
    0xc004ae02, // KVM_GET_MSR_INDEX_LIST
    0xc004ae0a, // KVM_GET_MSR_FEATURE_INDEX_LIST
    0xae41,     // KVM_CREATE_VCPU
    0x4020ae46, // KVM_SET_USER_MEMORY_REGION
    0xae47,     // KVM_SET_TSS_ADDR
    0x4008ae48, // KVM_SET_IDENTITY_MAP_ADDR
    0xae60,     // KVM_CREATE_IRQCHIP
    0x4040ae77, // KVM_CREATE_PIT2
    0x4008ae61, // KVM_IRQ_LINE
    0xc008ae67, // KVM_IRQ_LINE_STATUS
    0xc208ae62, // KVM_GET_IRQCHIP
    0x8208ae63, // KVM_SET_IRQCHIP
    0x8070ae9f, // KVM_GET_PIT2
    0x4070aea0, // KVM_SET_PIT2
    0x8030ae7c, // KVM_GET_CLOCK
    0x4030ae7b, // KVM_SET_CLOCK
    0x4040ae79, // KVM_IOEVENTFD
    0x4020ae76, // KVM_IRQFD
    0x4008ae6a, // KVM_SET_GSI_ROUTING
    0x4020aea5, // KVM_SIGNAL_MSI
    0x4068aea3, // KVM_ENABLE_CAP
    0xae78,     // KVM_SET_BOOT_CPU_ID
    0xae80,     // KVM_RUN
    0x8090ae81, // KVM_GET_REGS
    0x4090ae82, // KVM_SET_REGS
    0x8138ae83, // KVM_GET_SREGS
    0x4138ae84, // KVM_SET_SREGS
    0x81a0ae8c, // KVM_GET_FPU
    0x41a0ae8d, // KVM_SET_FPU
    0xc008ae88, // KVM_GET_MSRS
    0x4008ae89, // KVM_SET_MSRS
    0x4008ae90, // KVM_SET_CPUID2
    0xc008ae91, // KVM_GET_CPUID2
    0x8400ae8e, // KVM_GET_LAPIC
    0x4400ae8f, // KVM_SET_LAPIC
    0x8004ae98, // KVM_GET_MP_STATE
    0x4004ae99, // KVM_SET_MP_STATE
    0x8040ae9f, // KVM_GET_VCPU_EVENTS
    0x4040aea0, // KVM_SET_VCPU_EVENTS
    0x9000aea4, // KVM_GET_XSAVE
    0x5000aea5, // KVM_SET_XSAVE
    0x8188aea6, // KVM_GET_XCRS
    0x4188aea7, // KVM_SET_XCRS
    0x8080aea1, // KVM_GET_DEBUGREGS
    0x4080aea2, // KVM_SET_DEBUGREGS
    0xaead,     // KVM_KVMCLOCK_CTRL
    0x4010ae42, // KVM_GET_DIRTY_LOG: live migration's dirty pages per RAM slot
    0x4004ae8b, // KVM_SET_SIGNAL_MASK
    0xae9a,     // KVM_NMI
    0x4004ae86, // KVM_INTERRUPT
    0xc018ae85, // KVM_TRANSLATE: crash reports read the bytes at RIP
    0xaea3,     // KVM_GET_TSC_KHZ
    0xaea2,     // KVM_SET_TSC_KHZ
    FIONBIO,    // non-blocking serial/vhost-user sockets
    FIOCLEX,    // close-on-exec on received fds
];

/// Block-device ioctls block-proc makes on image fds that are devices.
pub const BLOCK_IOCTLS: &[u64] = &[
    0x80081272, // BLKGETSIZE64: size of a device image
    0x1268,     // BLKSSZGET: logical sector size
    0x127b,     // BLKPBSZGET: physical sector size
    0x1277,     // BLKDISCARD: discard on a device
    0x127f,     // BLKZEROOUT: write zeroes on a device
    FIONBIO,    // non-blocking sockets
    FIOCLEX,    // close-on-exec on received fds
];

/// TAP ioctls net-proc makes on the TAP fds it is given.
pub const TAP_IOCTLS: &[u64] = &[
    0x400454d0, // TUNSETOFFLOAD: offloads the guest negotiated
    0x400454d8, // TUNSETVNETHDRSZ: virtio-net header size
    0x800454d2, // TUNGETIFF: check the fd is a TAP
];

const FCNTL_CMDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];

const PRCTL_OPTIONS: &[u64] = &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64];

/// Syscalls every worker needs: the Rust runtime, the allocator, threads,
/// signals, the ipc-proto channel and event loops.
pub const COMMON: &[Rule] = &[
    any(libc::SYS_read, "channel, eventfd and pipe reads"),
    any(libc::SYS_write, "channel, eventfd writes; logs to stderr"),
    any(libc::SYS_readv, "vectored reads of std I/O"),
    any(libc::SYS_writev, "vectored writes of std I/O and logs"),
    any(libc::SYS_close, "dropping fds"),
    any(libc::SYS_recvmsg, "ipc-proto frames with SCM_RIGHTS fds"),
    any(libc::SYS_sendmsg, "ipc-proto frames with SCM_RIGHTS fds"),
    any(libc::SYS_recvfrom, "std UnixStream peek/recv"),
    any(libc::SYS_sendto, "std UnixStream send with MSG_NOSIGNAL"),
    any(libc::SYS_shutdown, "closing a channel in order"),
    any(libc::SYS_futex, "mutexes, condvars, thread join"),
    any(
        libc::SYS_sched_yield,
        "spin loops in std and crossbeam-style queues",
    ),
    any(libc::SYS_nanosleep, "thread::sleep"),
    any(libc::SYS_clock_nanosleep, "thread::sleep (glibc)"),
    any(
        libc::SYS_clock_gettime,
        "Instant/SystemTime when the vDSO falls back",
    ),
    any(
        libc::SYS_gettimeofday,
        "SystemTime when the vDSO falls back",
    ),
    any(libc::SYS_mmap, "allocator; guest memory and vring mappings"),
    any(libc::SYS_munmap, "allocator; unmapping guest memory"),
    any(libc::SYS_mremap, "allocator: growing large buffers"),
    any(
        libc::SYS_mprotect,
        "allocator arenas; thread stack guard pages",
    ),
    any(
        libc::SYS_madvise,
        "allocator returns memory; thread stacks freed",
    ),
    any(libc::SYS_brk, "allocator heap"),
    any(libc::SYS_rt_sigaction, "installing signal handlers"),
    any(
        libc::SYS_rt_sigprocmask,
        "blocking signals in threads; abort",
    ),
    any(libc::SYS_rt_sigreturn, "returning from any signal handler"),
    any(
        libc::SYS_sigaltstack,
        "std's stack-overflow handler per thread",
    ),
    any(libc::SYS_exit, "a thread ends"),
    any(libc::SYS_exit_group, "the worker ends"),
    any(libc::SYS_getpid, "logging; abort"),
    any(libc::SYS_gettid, "logging; abort"),
    any(libc::SYS_tgkill, "vCPU kicks; abort raises SIGABRT"),
    any(libc::SYS_getrandom, "HashMap keys of new threads"),
    one_of(
        libc::SYS_fcntl,
        1,
        FCNTL_CMDS,
        "cloexec and non-blocking flags",
    ),
    any(libc::SYS_epoll_create1, "event loops"),
    any(libc::SYS_epoll_ctl, "event loops"),
    any(libc::SYS_epoll_wait, "event loops"),
    any(libc::SYS_epoll_pwait, "event loops (glibc)"),
    any(libc::SYS_poll, "waiting on one fd"),
    any(libc::SYS_ppoll, "waiting on one fd (glibc)"),
    any(libc::SYS_eventfd2, "event loop wake-ups; ioeventfd/irqfd"),
    Rule {
        syscall: libc::SYS_clone,
        args: ArgMatch::HasBits {
            index: 0,
            bits: libc::CLONE_THREAD as u64,
        },
        why: "threads only (CLONE_THREAD): no new processes",
    },
    any(
        libc::SYS_clone3,
        "answered ENOSYS by a second filter, so glibc falls back to clone",
    ),
    any(libc::SYS_set_robust_list, "new threads (glibc)"),
    any(libc::SYS_rseq, "new threads (glibc)"),
    one_of(libc::SYS_prctl, 0, PRCTL_OPTIONS, "thread names"),
    any(libc::SYS_sched_getaffinity, "available_parallelism"),
    any(libc::SYS_fstat, "metadata of a received fd"),
    any(
        libc::SYS_newfstatat,
        "metadata of a received fd (AT_EMPTY_PATH)",
    ),
    any(libc::SYS_statx, "metadata of a received fd (std)"),
    any(libc::SYS_lseek, "file offsets of received fds"),
    any(libc::SYS_dup, "sharing a received fd between owners"),
    any(libc::SYS_dup3, "sharing a received fd between owners"),
    any(libc::SYS_restart_syscall, "interrupted sleeps resume"),
    any(
        libc::SYS_getcwd,
        "panic messages (std shortens backtrace paths)",
    ),
];

/// vcpu-proc: KVM, vCPU threads, the serial listener, vhost-user frontends.
pub const VCPU: &[Rule] = &[
    one_of(
        libc::SYS_ioctl,
        1,
        KVM_IOCTLS,
        "KVM on the fds the broker gave",
    ),
    any(
        libc::SYS_accept4,
        "serial console clients on the given listener",
    ),
    any(
        libc::SYS_rt_sigtimedwait,
        "vCPU threads wait for their kick signal",
    ),
    any(libc::SYS_timerfd_create, "PIT/RTC timers"),
    any(libc::SYS_timerfd_settime, "PIT/RTC timers"),
    any(
        libc::SYS_pread64,
        "reading kernel/initrd fds into guest memory; incoming migration checks zero pages in the RAM memfd",
    ),
    any(
        libc::SYS_pwrite64,
        "incoming migration writes pages into the RAM memfd (no page fault on the mapping)",
    ),
    any(
        libc::SYS_setsockopt,
        "vhost-user frontend: SO_RCVTIMEO/SO_SNDTIMEO on backend sockets (seccomp log of the disk tests)",
    ),
    one_of(
        libc::SYS_socketpair,
        0,
        &[libc::AF_UNIX as u64],
        "vhost-user frontend: the backend request channel (an anonymous AF_UNIX pair; reaches nothing)",
    ),
];

/// `io_uring_register` operations block-proc makes while it builds a
/// queue's ring (before the ring is enabled; afterwards the ring itself
/// refuses every registration).
pub const IO_URING_REGISTER_OPS: &[u64] = &[
    2,  // IORING_REGISTER_FILES: the image fd, slot 0
    11, // IORING_REGISTER_RESTRICTIONS: the ring's allowlist
    12, // IORING_REGISTER_ENABLE_RINGS: start the restricted ring
];

// io_uring and the sandbox's promise. Operations submitted through a ring
// are not system calls, so this seccomp filter never sees them: allowing
// io_uring_setup/io_uring_enter lets block-proc do through a ring what the
// kernel's io_uring opcodes can do. The promise (a worker reaches nothing
// but the fds the broker gave it) still holds because:
// - block-proc builds every ring disabled, registers the image fd, and
//   restricts it (IORING_REGISTER_RESTRICTIONS) to READV, WRITEV, FSYNC
//   and FALLOCATE on registered files only, with no registration allowed
//   once it is enabled (block-proc/src/block/aio/uring.rs; its tests
//   check that a ring refuses OPENAT, NOP, unregistered fds and
//   registration). Those four are the preadv/pwritev/fdatasync/fallocate
//   the list below allows as syscalls anyway, on the same fd.
// - io_uring_register is limited here to the three operations that build
//   such a ring: no buffers, personalities, eventfds or worker affinity.
// - A compromised block-proc could still set up an unrestricted ring of
//   its own. Whatever it asks of that ring runs as block-proc: io_uring's
//   workers are threads of the worker and share its credentials (no
//   capabilities), its empty root and mount namespace, its empty network
//   namespace and its Landlock domain, which denies every filesystem and
//   TCP access right. So an OPENAT finds nothing to open and a SOCKET or
//   CONNECT has no network to reach — the same walls that stand behind
//   seccomp for the syscalls it denies. What seccomp alone would add
//   (killing the worker and naming the syscall in its death note) is lost
//   for calls made through a ring; the access itself is not gained.
// vcpu-proc and net-proc get none of the three syscalls.

/// block-proc: image I/O through given fds, vhost-user-blk backends on
/// connections the broker hands over (no listener: no `accept4`).
pub const BLOCK: &[Rule] = &[
    any(
        libc::SYS_io_uring_setup,
        "aio=io_uring: one restricted ring per queue (see the io_uring note above)",
    ),
    any(
        libc::SYS_io_uring_enter,
        "aio=io_uring: submitting a queue's requests and waiting for them",
    ),
    one_of(
        libc::SYS_io_uring_register,
        1,
        IO_URING_REGISTER_OPS,
        "aio=io_uring: the image fd and the ring's restrictions",
    ),
    any(libc::SYS_pread64, "image reads"),
    any(libc::SYS_pwrite64, "image writes"),
    any(libc::SYS_preadv, "vectored image reads"),
    any(libc::SYS_pwritev, "vectored image writes"),
    any(libc::SYS_preadv2, "vectored image reads with flags"),
    any(libc::SYS_pwritev2, "vectored image writes with flags"),
    any(libc::SYS_fdatasync, "guest flush"),
    any(libc::SYS_fsync, "guest flush of metadata (qcow2)"),
    any(libc::SYS_fallocate, "discard and write-zeroes on files"),
    any(
        libc::SYS_ftruncate,
        "growing qcow2 images; sizing the inflight memfd",
    ),
    any(
        libc::SYS_memfd_create,
        "vhost-user GET_INFLIGHT_FD: the inflight region (strace of virtio_blk tests)",
    ),
    any(
        libc::SYS_fstatfs,
        "alignment and filesystem checks of images",
    ),
    one_of(libc::SYS_ioctl, 1, BLOCK_IOCTLS, "block devices as images"),
    any(libc::SYS_timerfd_create, "I/O throttling timers"),
    any(libc::SYS_timerfd_settime, "I/O throttling timers"),
];

/// net-proc: TAP fds and the vhost-user-net backend.
pub const NET: &[Rule] = &[one_of(
    libc::SYS_ioctl,
    1,
    TAP_IOCTLS,
    "TAP checks, vnet header size and offloads on given fds",
)];

/// The kind's own rules (without [`COMMON`]).
pub fn for_kind(kind: WorkerKind) -> &'static [Rule] {
    match kind {
        WorkerKind::Vcpu => VCPU,
        WorkerKind::Block => BLOCK,
        WorkerKind::Net => NET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall_names;

    fn all_rules() -> impl Iterator<Item = &'static Rule> {
        COMMON.iter().chain(VCPU).chain(BLOCK).chain(NET)
    }

    #[test]
    fn every_rule_names_a_known_syscall_and_says_why() {
        for r in all_rules() {
            assert!(syscall_names::name(r.syscall as u32).is_some(), "{r:?}");
            assert!(!r.why.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn no_rule_allows_process_creation_exec_or_new_sockets() {
        let banned = [
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_unshare,
            libc::SYS_setns,
        ];
        for r in all_rules() {
            assert!(!banned.contains(&r.syscall), "{r:?}");
        }
    }

    #[test]
    fn only_block_proc_may_use_io_uring() {
        let uring = [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ];
        for r in COMMON.iter().chain(VCPU).chain(NET) {
            assert!(!uring.contains(&r.syscall), "{r:?}");
        }
        for s in uring {
            assert!(BLOCK.iter().any(|r| r.syscall == s), "{s}");
        }
    }

    #[test]
    fn no_syscall_is_listed_twice_in_one_kind() {
        for kind in [WorkerKind::Vcpu, WorkerKind::Block, WorkerKind::Net] {
            let mut seen: Vec<i64> = COMMON
                .iter()
                .chain(for_kind(kind))
                .map(|r| r.syscall)
                .collect();
            let n = seen.len();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), n, "{kind:?}");
        }
    }
}
