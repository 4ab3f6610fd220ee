//! What the broker keeps once its workers are up. It must still spawn and
//! restart sandboxed workers — new namespaces and mounts (CAP_SYS_ADMIN),
//! the per-VM uid/gid change (CAP_SETUID, CAP_SETGID), the workers' own
//! bounding-set drop (CAP_SETPCAP) — and signal them across that uid
//! (CAP_KILL). Every other capability is dropped for good, from every set.
//! The shipped systemd unit's `CapabilityBoundingSet=` is the same list.

/// The capabilities the running broker keeps (when it has them at all).
pub const KEPT: &[u32] = &[CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN];

// Capability numbers from linux/capability.h (libc does not export them).
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_ADMIN: u32 = 21;

/// Drops every capability but [`KEPT`]. A broker started without privilege
/// has nothing to drop and this does nothing harmful.
pub fn drop_unneeded() -> Result<(), sandbox::SandboxError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    sandbox::privileges::keep_only(KEPT)
}
