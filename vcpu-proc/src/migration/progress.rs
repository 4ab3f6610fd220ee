//! The statistics of one migration (`query-migrate`) and its status
//! changes (QMP `MIGRATION`), shared by its thread and the dispatcher.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ipc_proto::migration::{MigrationEvent, MigrationStats, MigrationStatus, RamStats};
use ipc_proto::vcpu::VcpuEvent;

use crate::control::EventSink;

/// One migration's statistics.
pub struct Progress {
    inner: Mutex<Inner>,
    sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("status", &self.lock().stats.status)
            .finish_non_exhaustive()
    }
}

struct Inner {
    stats: MigrationStats,
    start: Instant,
    end: Option<Instant>,
}

/// True for the statuses a migration ends in.
pub fn is_final(s: MigrationStatus) -> bool {
    matches!(
        s,
        MigrationStatus::None
            | MigrationStatus::Completed
            | MigrationStatus::Failed
            | MigrationStatus::Cancelled
    )
}

impl Progress {
    /// A migration starting now over `total` bytes of RAM; its events go
    /// to `sink`.
    pub fn new(total: u64, page_size: u64, sink: Arc<dyn EventSink>) -> Self {
        Progress {
            inner: Mutex::new(Inner {
                stats: MigrationStats {
                    status: MigrationStatus::None,
                    total_time_ms: 0,
                    setup_time_ms: 0,
                    downtime_ms: None,
                    expected_downtime_ms: None,
                    ram: RamStats {
                        total,
                        remaining: total,
                        page_size,
                        ..RamStats::default()
                    },
                    xbzrle: None,
                    error: None,
                },
                start: Instant::now(),
                end: None,
            }),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The statistics now (`total-time` runs until the end).
    pub fn snapshot(&self) -> MigrationStats {
        let g = self.lock();
        let mut s = g.stats.clone();
        let until = g.end.unwrap_or_else(Instant::now);
        s.total_time_ms = ms(until.duration_since(g.start));
        s
    }

    /// The status now.
    pub fn status(&self) -> MigrationStatus {
        self.lock().stats.status
    }

    /// Milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        ms(self.lock().start.elapsed())
    }

    /// Changes the statistics.
    pub fn update(&self, f: impl FnOnce(&mut MigrationStats)) {
        f(&mut self.lock().stats);
    }

    /// Moves to `status` and emits `MIGRATION` (not when it is already
    /// there); a final status stops the clock. A final status other than
    /// `none` (where every migration starts) is never left.
    pub fn set_status(&self, status: MigrationStatus, error: Option<String>) {
        {
            let mut g = self.lock();
            let was = g.stats.status;
            if was == status || (was != MigrationStatus::None && is_final(was)) {
                return;
            }
            g.stats.status = status;
            if status == MigrationStatus::Failed {
                g.stats.error = error.clone();
            }
            if is_final(status) {
                g.end = Some(Instant::now());
                g.stats.expected_downtime_ms = None;
            }
        }
        self.sink.emit(VcpuEvent::Migration(MigrationEvent::Status {
            status,
            error,
        }));
    }

    /// Emits an event that is not a status change.
    pub fn emit(&self, event: MigrationEvent) {
        self.sink.emit(VcpuEvent::Migration(event));
    }
}

/// Whole milliseconds of `d`.
pub fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
