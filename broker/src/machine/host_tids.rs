//! Host thread ids of a worker's threads. A sandboxed worker is pid 1 of
//! its own pid namespace, so the thread ids it sees (`gettid`) are not the
//! host's; `query-cpus-fast` must report the host's (pinning tools act on
//! them). `/proc/PID/task/TID/status`'s `NSpid:` line lists a thread's id
//! in every pid namespace from the host's outwards-in.

use std::path::Path;

/// The host thread id of the thread of process `pid` whose id in its own
/// (innermost) pid namespace is `ns_tid`, or `None` if it has no such
/// thread (it exited, or the id is stale).
pub fn host_tid(pid: u32, ns_tid: i64) -> Option<i64> {
    host_tid_in(Path::new("/proc"), pid, ns_tid)
}

fn host_tid_in(proc_root: &Path, pid: u32, ns_tid: i64) -> Option<i64> {
    let tasks = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")).ok()?;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        if let Some((host, inner)) = ns_pids(&status) {
            if inner == ns_tid {
                return Some(host);
            }
        }
    }
    None
}

/// (outermost, innermost) ids of an `NSpid:` line.
fn ns_pids(status: &str) -> Option<(i64, i64)> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ids: Vec<i64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some((*ids.first()?, *ids.last()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_line_gives_host_and_innermost_ids() {
        let s = "Name:\tvcpu-proc\nTgid:\t4242\nNSpid:\t4245\t3\nPPid:\t1\n";
        assert_eq!(ns_pids(s), Some((4245, 3)));
        assert_eq!(ns_pids("NSpid:\t77\n"), Some((77, 77)));
        assert_eq!(ns_pids("Name:\tx\n"), None);
        assert_eq!(ns_pids("NSpid:\tx\n"), None);
    }

    #[test]
    fn own_threads_map_to_themselves_without_a_pid_namespace() {
        // SAFETY: gettid has no preconditions.
        let tid = i64::from(unsafe { libc::gettid() });
        assert_eq!(host_tid(std::process::id(), tid), Some(tid));
        assert_eq!(host_tid(std::process::id(), -5), None);
    }
}
