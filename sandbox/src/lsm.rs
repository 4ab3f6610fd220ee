//! Landlock: a ruleset that handles every filesystem and TCP access right
//! the kernel knows and grants none, and scopes signals and abstract Unix
//! sockets to the worker's own domain. Best effort: on a kernel without
//! Landlock the worker goes on (the empty root and seccomp still hold) and
//! the outcome says so, for the worker to log loudly.

use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};

use super::{Result, SandboxError};

/// The newest Landlock ABI this code knows; older kernels get what they
/// support.
const ABI_TARGET: ABI = ABI::V6;

/// How much of the ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockOutcome {
    /// Every right is handled.
    Full,
    /// The kernel supports an older ABI: some rights are not handled.
    Partial,
    /// The kernel has no Landlock: nothing is enforced.
    Unsupported,
}

impl LandlockOutcome {
    /// A line for the worker's log; `None` when all is enforced.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            LandlockOutcome::Full => None,
            LandlockOutcome::Partial => Some("Landlock is only partly enforced (older kernel ABI)"),
            LandlockOutcome::Unsupported => {
                Some("Landlock is NOT enforced: this kernel has no Landlock")
            }
        }
    }
}

/// Restricts the calling thread (the only one) with the deny-all ruleset.
pub fn restrict_all() -> Result<LandlockOutcome> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_TARGET))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_TARGET)))
        .and_then(|r| r.scope(Scope::from_all(ABI_TARGET)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(SandboxError::Landlock)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockOutcome::Full,
        RulesetStatus::PartiallyEnforced => LandlockOutcome::Partial,
        RulesetStatus::NotEnforced => LandlockOutcome::Unsupported,
    })
}
