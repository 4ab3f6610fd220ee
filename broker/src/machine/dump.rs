//! The state of `dump-guest-memory` as `query-dump` reports it: one dump at
//! a time, written by vcpu-proc; its end comes as an event from there, or
//! as vcpu-proc's death (a failed dump). `DUMP_COMPLETED` is emitted here.

use std::sync::{Condvar, Mutex, MutexGuard};

use ipc_proto::vcpu::{VcpuReply, VcpuRequest};
use serde::Serialize;
use serde_json::json;

use super::Machine;
use crate::qmp::events::EventBus;

/// QEMU's message while a dump runs.
pub const IN_PROGRESS: &str = "There is a dump in process, please wait.";

/// QEMU's `DumpStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpStatus {
    /// No dump since start-up.
    None,
    /// A dump runs.
    Active,
    /// The last dump succeeded.
    Completed,
    /// The last dump failed.
    Failed,
}

/// QEMU's `DumpQueryResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DumpQueryResult {
    /// The state.
    pub status: DumpStatus,
    /// Guest memory bytes written.
    pub completed: u64,
    /// Guest memory bytes the dump covers.
    pub total: u64,
}

/// The broker's view of the one dump.
#[derive(Debug)]
pub struct DumpTracker {
    state: Mutex<(DumpQueryResult, Option<String>)>,
    changed: Condvar,
}

impl Default for DumpTracker {
    fn default() -> Self {
        DumpTracker {
            state: Mutex::new((
                DumpQueryResult {
                    status: DumpStatus::None,
                    completed: 0,
                    total: 0,
                },
                None,
            )),
            changed: Condvar::new(),
        }
    }
}

impl DumpTracker {
    fn lock(&self) -> MutexGuard<'_, (DumpQueryResult, Option<String>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while a dump runs.
    pub fn is_active(&self) -> bool {
        self.lock().0.status == DumpStatus::Active
    }

    /// Claims the one dump slot; QEMU's error if a dump runs.
    pub fn begin(&self) -> Result<(), &'static str> {
        let mut s = self.lock();
        if s.0.status == DumpStatus::Active {
            return Err(IN_PROGRESS);
        }
        *s = (
            DumpQueryResult {
                status: DumpStatus::Active,
                completed: 0,
                total: 0,
            },
            None,
        );
        Ok(())
    }

    /// vcpu-proc started writing `total` bytes of guest memory.
    pub fn started(&self, total: u64) {
        let mut s = self.lock();
        if s.0.status == DumpStatus::Active {
            s.0.total = total;
        }
    }

    /// vcpu-proc refused the dump before writing (QEMU: `failed`, nothing
    /// counted, no event).
    pub fn refused(&self) {
        let mut s = self.lock();
        if s.0.status == DumpStatus::Active {
            s.0 = DumpQueryResult {
                status: DumpStatus::Failed,
                completed: 0,
                total: 0,
            };
        }
        self.changed.notify_all();
    }

    /// A dump that failed at once without vcpu-proc (`win-dmp`): `failed`
    /// and `DUMP_COMPLETED`, as QEMU's.
    pub fn failed_at_once(&self, events: &EventBus, total: u64, error: &str) {
        self.finish(events, 0, total, Some(error.to_owned()));
    }

    /// The dump ended: records it and emits `DUMP_COMPLETED`; ignored when
    /// no dump runs (a late event).
    pub fn finish(&self, events: &EventBus, completed: u64, total: u64, error: Option<String>) {
        let result = {
            let mut s = self.lock();
            if s.0.status != DumpStatus::Active {
                return;
            }
            s.0 = DumpQueryResult {
                status: if error.is_some() {
                    DumpStatus::Failed
                } else {
                    DumpStatus::Completed
                },
                completed,
                total,
            };
            s.1 = error.clone();
            s.0
        };
        let mut data = json!({ "result": result });
        if let Some(e) = error {
            data["error"] = json!(e);
        }
        events.emit("DUMP_COMPLETED", Some(data));
        self.changed.notify_all();
    }

    /// vcpu-proc died: a running dump failed where it had got to.
    pub fn worker_died(&self, events: &EventBus) {
        let (completed, total) = {
            let s = self.lock();
            (s.0.completed, s.0.total)
        };
        self.finish(
            events,
            completed,
            total,
            Some("dump: the vCPU worker died during the dump".into()),
        );
    }

    /// Waits for the running dump to end; its error if it failed.
    pub fn wait(&self) -> Result<(), String> {
        let mut s = self.lock();
        while s.0.status == DumpStatus::Active {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        match s.0.status {
            DumpStatus::Failed => Err(s.1.clone().unwrap_or_else(|| "dump failed".into())),
            DumpStatus::None | DumpStatus::Active | DumpStatus::Completed => Ok(()),
        }
    }

    /// `query-dump`: the recorded state, with the progress asked of
    /// vcpu-proc while a dump runs.
    pub fn query(&self, m: &Machine) -> DumpQueryResult {
        let now = self.lock().0;
        if now.status != DumpStatus::Active {
            return now;
        }
        let completed = match m.vcpu_request(VcpuRequest::QueryDump) {
            Ok(VcpuReply::DumpProgress { completed }) => completed,
            Ok(
                VcpuReply::Done
                | VcpuReply::Status(_)
                | VcpuReply::Cpus(_)
                | VcpuReply::Trace(_)
                | VcpuReply::DumpStarted { .. }
                | VcpuReply::Migration(_),
            )
            | Err(_) => now.completed,
        };
        let mut s = self.lock();
        if s.0.status == DumpStatus::Active {
            s.0.completed = s.0.completed.max(completed.min(s.0.total));
        }
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dump_at_a_time_and_late_events_are_ignored() {
        let t = DumpTracker::default();
        let bus = EventBus::default();
        t.begin().unwrap();
        assert_eq!(t.begin(), Err(IN_PROGRESS));
        t.started(100);
        t.finish(&bus, 100, 100, None);
        assert_eq!(t.wait(), Ok(()));
        assert_eq!(
            t.lock().0,
            DumpQueryResult {
                status: DumpStatus::Completed,
                completed: 100,
                total: 100
            }
        );
        t.finish(&bus, 1, 1, Some("late".into()));
        assert_eq!(t.lock().0.status, DumpStatus::Completed);
    }

    #[test]
    fn an_end_before_the_start_reply_keeps_the_end() {
        let t = DumpTracker::default();
        let bus = EventBus::default();
        t.begin().unwrap();
        t.finish(
            &bus,
            0,
            50,
            Some("dump: failed to save memory: Broken pipe".into()),
        );
        t.started(50);
        assert_eq!(
            t.wait(),
            Err("dump: failed to save memory: Broken pipe".to_string())
        );
    }

    #[test]
    fn worker_death_fails_a_running_dump_only() {
        let t = DumpTracker::default();
        let bus = EventBus::default();
        t.worker_died(&bus);
        assert_eq!(t.lock().0.status, DumpStatus::None);
        t.begin().unwrap();
        t.started(10);
        t.worker_died(&bus);
        assert_eq!(t.lock().0.status, DumpStatus::Failed);
    }
}
