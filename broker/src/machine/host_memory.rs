//! Whether the host can provide the guest RAM `-m` asks for. Guest RAM is
//! a memfd, which the kernel never refuses up front (pages are allocated
//! on first touch), so without this check a too-large `-m` would start and
//! the guest would be killed later by the OOM killer. QEMU's anonymous
//! mapping is refused by the kernel's overcommit rules at start-up; this
//! applies the same rules (`Documentation/mm/overcommit-accounting.rst`)
//! and answers with QEMU's message.

/// The guest RAM is more than the host's overcommit rules allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot set up guest memory 'microvm.ram': Cannot allocate memory")]
pub struct TooLarge;

/// Checks `size` bytes of guest RAM against the host's overcommit policy.
pub fn check(size: u64) -> Result<(), TooLarge> {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if allowed(mode.trim(), &meminfo, size) {
        Ok(())
    } else {
        Err(TooLarge)
    }
}

/// The kernel's rules: mode 1 allows everything; mode 2 allows what fits
/// under `CommitLimit - Committed_AS`; mode 0 (the default heuristic)
/// refuses one allocation larger than RAM plus swap.
fn allowed(mode: &str, meminfo: &str, size: u64) -> bool {
    let kib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k.saturating_mul(1024))
    };
    match mode {
        "1" => true,
        "2" => match (kib("CommitLimit"), kib("Committed_AS")) {
            (Some(limit), Some(used)) => size <= limit.saturating_sub(used),
            _ => true,
        },
        _ => match (kib("MemTotal"), kib("SwapTotal")) {
            (Some(ram), Some(swap)) => size <= ram.saturating_add(swap),
            _ => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "MemTotal:        1000 kB\nMemFree:  10 kB\nSwapTotal:  24 kB\n\
                        CommitLimit:     524 kB\nCommitted_AS:    200 kB\n";

    #[test]
    fn heuristic_mode_refuses_more_than_ram_plus_swap() {
        assert!(allowed("0", INFO, 1024 * 1024));
        assert!(!allowed("0", INFO, 1024 * 1024 + 1));
    }

    #[test]
    fn strict_mode_uses_the_commit_limit_and_mode_1_allows_all() {
        assert!(allowed("2", INFO, 324 * 1024));
        assert!(!allowed("2", INFO, 325 * 1024));
        assert!(allowed("1", INFO, u64::MAX));
    }

    #[test]
    fn this_host_refuses_an_exabyte() {
        let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
        if mode.trim() != "1" {
            assert_eq!(check(1 << 60), Err(TooLarge));
        }
        assert_eq!(check(2 << 20), Ok(()));
    }
}
