//! QEMU's job status machine (`job.c`'s transition and verb tables), as
//! pure data: which status may follow which, and which verb a job in a
//! given status accepts, with QEMU's error message.

/// QEMU's `JobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Paused while running.
    Paused,
    /// Ready (a mirror in sync).
    Ready,
    /// Paused while ready.
    Standby,
    /// Work done, waiting for its transaction.
    Waiting,
    /// Waiting to be finalized.
    Pending,
    /// Being cancelled or failed.
    Aborting,
    /// Ended, waiting to be dismissed.
    Concluded,
    /// Gone.
    Null,
}

/// QEMU's `JobVerb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// cancel.
    Cancel,
    /// pause.
    Pause,
    /// resume.
    Resume,
    /// set-speed.
    SetSpeed,
    /// complete.
    Complete,
    /// finalize.
    Finalize,
    /// dismiss.
    Dismiss,
}

impl Status {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Ready => "ready",
            Status::Standby => "standby",
            Status::Waiting => "waiting",
            Status::Pending => "pending",
            Status::Aborting => "aborting",
            Status::Concluded => "concluded",
            Status::Null => "null",
        }
    }

    /// Whether `self` may be followed by `to` (QEMU's `JobSTT`).
    pub fn may_become(self, to: Status) -> bool {
        use Status::*;
        match self {
            Created => matches!(to, Running | Aborting),
            Running => matches!(to, Paused | Ready | Waiting | Aborting),
            Paused => matches!(to, Running),
            Ready => matches!(to, Standby | Waiting | Aborting),
            Standby => matches!(to, Ready),
            Waiting => matches!(to, Pending | Aborting),
            Pending => matches!(to, Aborting | Concluded),
            Aborting => matches!(to, Aborting | Concluded),
            Concluded => matches!(to, Null),
            Null => false,
        }
    }

    /// Whether a job in `self` accepts `verb` (QEMU's `JobVerbTable`).
    pub fn accepts(self, verb: Verb) -> bool {
        use Status::*;
        match verb {
            Verb::Cancel => matches!(
                self,
                Created | Running | Paused | Ready | Standby | Waiting | Pending
            ),
            Verb::Pause | Verb::Resume | Verb::SetSpeed => {
                matches!(self, Created | Running | Paused | Ready | Standby)
            }
            Verb::Complete => self == Ready,
            Verb::Finalize => self == Pending,
            Verb::Dismiss => self == Concluded,
        }
    }
}

impl Verb {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Cancel => "cancel",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::SetSpeed => "set-speed",
            Verb::Complete => "complete",
            Verb::Finalize => "finalize",
            Verb::Dismiss => "dismiss",
        }
    }
}

/// QEMU's refusal of `verb` for job `id` in `status`.
pub fn verb_error(id: &str, status: Status, verb: Verb) -> String {
    format!(
        "Job '{id}' in state '{}' cannot accept command verb '{}'",
        status.as_str(),
        verb.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_job_completes_and_only_a_concluded_one_is_dismissed() {
        for s in [
            Status::Created,
            Status::Running,
            Status::Paused,
            Status::Standby,
            Status::Pending,
            Status::Concluded,
        ] {
            assert!(!s.accepts(Verb::Complete), "{s:?}");
        }
        assert!(Status::Ready.accepts(Verb::Complete));
        assert!(Status::Concluded.accepts(Verb::Dismiss));
        assert!(!Status::Running.accepts(Verb::Dismiss));
        assert!(Status::Pending.accepts(Verb::Finalize));
        assert!(!Status::Running.accepts(Verb::Finalize));
        assert!(!Status::Concluded.accepts(Verb::Cancel));
        assert_eq!(
            verb_error("s1", Status::Running, Verb::Complete),
            "Job 's1' in state 'running' cannot accept command verb 'complete'"
        );
    }

    #[test]
    fn transitions_follow_qemus_table() {
        assert!(Status::Running.may_become(Status::Ready));
        assert!(Status::Ready.may_become(Status::Standby));
        assert!(!Status::Paused.may_become(Status::Ready));
        assert!(!Status::Running.may_become(Status::Concluded));
        assert!(Status::Pending.may_become(Status::Concluded));
        assert!(Status::Concluded.may_become(Status::Null));
        assert!(!Status::Null.may_become(Status::Running));
    }
}
