//! The VM's run-state machine, QEMU's rules without the machinery: each
//! input yields the events to emit, whether to reset the machine and
//! whether the vCPUs run afterwards.

use ipc_proto::vcpu::{RunState, ShutdownCause, VcpuEvent};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// QMP `stop`.
    Stop,
    /// QMP `cont`.
    Cont,
    /// QMP `system_reset`.
    SystemReset,
    /// QMP `system_powerdown` (the power button).
    Powerdown,
    /// The guest reset the machine.
    GuestReset,
    /// The guest powered off.
    GuestShutdown,
    /// The guest wrote to the debug-exit port.
    DebugExit(u32),
    /// The guest or a vCPU thread failed.
    Crash(String),
    /// `dump-guest-memory` starts: a running VM stops into `save-vm`.
    DumpBegin,
    /// The dump ended: a VM the dump stopped (`save-vm`) runs again.
    DumpEnd,
    /// `xen-save-devices-state` starts: a running VM stops into `save-vm`
    /// (QEMU's `vm_stop(RUN_STATE_SAVE_VM)`).
    SaveBegin,
    /// The state is written: a VM the save stopped runs again.
    SaveEnd,
    /// An outgoing migration converged: the VM stops into
    /// `finish-migrate` (from any state, as QEMU).
    MigrateBegin,
    /// The outgoing migration ended: `completed` → `postmigrate`;
    /// otherwise a VM in `finish-migrate` goes back to the state it had
    /// (running again if it ran).
    MigrateEnd {
        /// The target has the VM.
        completed: bool,
    },
    /// The VM's RAM and device state arrived (`xen-load-devices-state`
    /// or an incoming migration): an `inmigrate` VM leaves it as QEMU's
    /// incoming side does: it takes the source's run state when the
    /// source did not run ([`RunStateMachine::set_source_state`]), else it
    /// runs if autostart holds (no `-S`, or a `cont` while in
    /// `inmigrate`), else it is `paused`.
    IncomingDone,
}

/// What to do about an input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Events to emit, in order.
    pub events: Vec<VcpuEvent>,
    /// Reload the kernel and reset the vCPUs and devices.
    pub reset: bool,
    /// Press the power button.
    pub powerdown: bool,
    /// The vCPUs run after this input.
    pub run: bool,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunStateError {
    /// `cont` after a shutdown or crash.
    #[error("Resetting the Virtual Machine is required")]
    NeedsReset,
    /// `cont` while an outgoing migration holds the VM stopped (its
    /// device state is being sent; running it now would fork the guest).
    #[error("The VM is being migrated; wait for the migration to end or cancel it")]
    Migrating,
}

/// The run state and the options that steer it.
#[derive(Debug, Clone)]
pub struct RunStateMachine {
    state: RunState,
    no_shutdown: bool,
    no_reboot: bool,
    /// QEMU's `autostart`: run once the incoming state is in (`-S` clears
    /// it; `cont`/`stop` in `inmigrate` set/clear it).
    autostart: bool,
    /// The state an outgoing migration stopped the VM from.
    migrate_from: Option<RunState>,
    /// The source's run state for the next [`Input::IncomingDone`].
    incoming_source: Option<RunState>,
    /// The VM is in its source's run state since its incoming migration
    /// (not run or reset since).
    source_state: bool,
}

impl RunStateMachine {
    /// A new machine: `prelaunch` when `start_paused`, else `running`.
    pub fn new(start_paused: bool, no_shutdown: bool, no_reboot: bool) -> Self {
        RunStateMachine {
            state: if start_paused {
                RunState::Prelaunch
            } else {
                RunState::Running
            },
            no_shutdown,
            no_reboot,
            autostart: !start_paused,
            migrate_from: None,
            incoming_source: None,
            source_state: false,
        }
    }

    /// The same machine waiting in `inmigrate` (`-incoming`) when
    /// `incoming`; it leaves it on [`Input::IncomingDone`].
    pub fn with_incoming(mut self, incoming: bool) -> Self {
        if incoming {
            self.state = RunState::Inmigrate;
        }
        self
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// The run state QEMU's migration global state records: the state
    /// before `finish-migrate` during an outgoing migration, else the
    /// current one.
    pub fn global_state(&self) -> RunState {
        match (self.state, self.migrate_from) {
            (RunState::FinishMigrate, Some(from)) => from,
            (state, _) => state,
        }
    }

    /// The run state the incoming state carried (`None`: none, or one the
    /// load must not apply, as after `xen-load-devices-state`); the next
    /// [`Input::IncomingDone`] takes it when it is not live.
    pub fn set_source_state(&mut self, state: Option<RunState>) {
        self.incoming_source = state;
    }

    /// True while the VM is in its migration source's run state (it has
    /// not run nor been reset since): autostart does not apply, and its
    /// RAM is the migrated guest even in `prelaunch`.
    pub fn source_state(&self) -> bool {
        self.source_state
    }

    /// True when the vCPUs run.
    pub fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    fn needs_reset(&self) -> bool {
        matches!(
            self.state,
            RunState::Shutdown | RunState::InternalError | RunState::GuestPanicked
        )
    }

    fn stop_into(&mut self, state: RunState, out: &mut Outcome) {
        if self.state == RunState::Running {
            out.events.push(VcpuEvent::Stopped);
        }
        self.state = state;
        out.run = false;
    }

    fn shutdown(&mut self, reason: ShutdownCause, out: &mut Outcome) {
        out.events.push(VcpuEvent::Shutdown { reason });
        if self.no_shutdown {
            self.stop_into(RunState::Shutdown, out);
        } else {
            // The VM ends: the broker exits on this event.
            self.state = RunState::Shutdown;
            out.run = false;
        }
    }

    /// Applies `input`.
    pub fn step(&mut self, input: Input) -> Result<Outcome, RunStateError> {
        let mut out = Outcome {
            run: self.is_running(),
            ..Outcome::default()
        };
        let guest = matches!(
            input,
            Input::GuestReset | Input::GuestShutdown | Input::DebugExit(_) | Input::Crash(_)
        );
        if guest && self.needs_reset() {
            // A late request from another vCPU after the VM already ended.
            return Ok(out);
        }
        let before = self.state;
        let incoming_done = input == Input::IncomingDone;
        match input {
            // QEMU's qmp_stop/qmp_cont in INMIGRATE only set autostart.
            Input::Stop if self.state == RunState::Inmigrate => self.autostart = false,
            Input::Cont if self.state == RunState::Inmigrate => self.autostart = true,
            Input::Stop => {
                if self.is_running() {
                    self.stop_into(RunState::Paused, &mut out);
                }
            }
            Input::Cont => {
                if self.needs_reset() {
                    return Err(RunStateError::NeedsReset);
                }
                if self.state == RunState::FinishMigrate {
                    return Err(RunStateError::Migrating);
                }
                if !self.is_running() {
                    self.state = RunState::Running;
                    out.events.push(VcpuEvent::Resumed);
                }
                out.run = true;
            }
            Input::SystemReset => {
                out.events.push(VcpuEvent::Reset {
                    reason: ShutdownCause::HostQmpSystemReset,
                });
                out.reset = true;
                // QEMU keeps INMIGRATE (and RUNNING) across a reset.
                if !self.is_running() && self.state != RunState::Inmigrate {
                    self.state = RunState::Prelaunch;
                }
            }
            Input::Powerdown => {
                out.events.push(VcpuEvent::Powerdown);
                out.powerdown = true;
            }
            Input::GuestReset => {
                if self.no_reboot {
                    self.shutdown(ShutdownCause::GuestReset, &mut out);
                } else {
                    out.events.push(VcpuEvent::Reset {
                        reason: ShutdownCause::GuestReset,
                    });
                    out.reset = true;
                }
            }
            Input::GuestShutdown => self.shutdown(ShutdownCause::GuestShutdown, &mut out),
            Input::DebugExit(code) => {
                out.events.push(VcpuEvent::DebugExit { code });
                self.state = RunState::Shutdown;
                out.run = false;
            }
            Input::Crash(detail) => {
                out.events.push(VcpuEvent::GuestCrashed { detail });
                self.stop_into(RunState::InternalError, &mut out);
            }
            Input::DumpBegin | Input::SaveBegin => {
                if self.is_running() {
                    self.stop_into(RunState::SaveVm, &mut out);
                }
                out.run = false;
            }
            Input::IncomingDone => {
                let source = self.incoming_source.take();
                if self.state == RunState::Inmigrate {
                    if let Some(from) = source.filter(|s| !crate::state::run::is_live(*s)) {
                        self.state = from;
                        self.source_state = true;
                    } else if self.autostart {
                        self.state = RunState::Running;
                        out.events.push(VcpuEvent::Resumed);
                        out.run = true;
                    } else {
                        self.state = RunState::Paused;
                    }
                }
            }
            Input::DumpEnd | Input::SaveEnd => {
                if self.state == RunState::SaveVm {
                    self.state = RunState::Running;
                    out.events.push(VcpuEvent::Resumed);
                    out.run = true;
                }
            }
            Input::MigrateBegin => {
                if self.state != RunState::FinishMigrate {
                    self.migrate_from = Some(self.state);
                    self.stop_into(RunState::FinishMigrate, &mut out);
                }
                out.run = false;
            }
            Input::MigrateEnd { completed } => {
                if self.state == RunState::FinishMigrate {
                    let from = self.migrate_from.take().unwrap_or(RunState::Paused);
                    if completed {
                        self.state = RunState::Postmigrate;
                    } else if from == RunState::Running {
                        self.state = RunState::Running;
                        out.events.push(VcpuEvent::Resumed);
                        out.run = true;
                    } else {
                        self.state = from;
                    }
                }
            }
        }
        if !incoming_done && (self.state != before || out.reset) {
            self.source_state = false;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> RunStateMachine {
        RunStateMachine::new(false, false, false)
    }

    #[test]
    fn a_dump_stops_a_running_vm_into_save_vm_and_resumes_it() {
        let mut s = m();
        let o = s.step(Input::DumpBegin).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Stopped], false));
        assert_eq!(s.state(), RunState::SaveVm);
        let o = s.step(Input::DumpEnd).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Resumed], true));
        assert_eq!(s.state(), RunState::Running);
    }

    #[test]
    fn a_converged_migration_stops_into_finish_migrate_then_postmigrate() {
        let mut s = m();
        let o = s.step(Input::MigrateBegin).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Stopped], false));
        assert_eq!(s.state(), RunState::FinishMigrate);
        let o = s.step(Input::MigrateEnd { completed: true }).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Postmigrate);
    }

    #[test]
    fn cont_is_refused_while_a_migration_holds_the_vm_stopped() {
        let mut s = m();
        s.step(Input::MigrateBegin).unwrap();
        assert_eq!(s.step(Input::Cont), Err(RunStateError::Migrating));
        assert_eq!(s.state(), RunState::FinishMigrate);
        s.step(Input::MigrateEnd { completed: true }).unwrap();
        // After the migration QEMU lets the source run again.
        assert!(s.step(Input::Cont).unwrap().run);
    }

    #[test]
    fn a_failed_migration_resumes_a_vm_that_ran_and_leaves_a_paused_one_paused() {
        let mut s = m();
        s.step(Input::MigrateBegin).unwrap();
        let o = s.step(Input::MigrateEnd { completed: false }).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Resumed], true));
        assert_eq!(s.state(), RunState::Running);

        s.step(Input::Stop).unwrap();
        let o = s.step(Input::MigrateBegin).unwrap();
        assert!(o.events.is_empty());
        assert_eq!(s.state(), RunState::FinishMigrate);
        let o = s.step(Input::MigrateEnd { completed: false }).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Paused);
    }

    #[test]
    fn a_migration_that_fails_before_stopping_leaves_the_run_state_alone() {
        let mut s = m();
        let o = s.step(Input::MigrateEnd { completed: false }).unwrap();
        assert!(o.events.is_empty() && o.run);
        assert_eq!(s.state(), RunState::Running);
    }

    #[test]
    fn a_dump_leaves_a_paused_vm_paused() {
        let mut s = m();
        s.step(Input::Stop).unwrap();
        let o = s.step(Input::DumpBegin).unwrap();
        assert!(o.events.is_empty());
        assert_eq!(s.state(), RunState::Paused);
        let o = s.step(Input::DumpEnd).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Paused);
    }

    #[test]
    fn an_incoming_vm_waits_in_inmigrate_and_cont_only_sets_autostart() {
        let mut s = RunStateMachine::new(true, false, false).with_incoming(true);
        assert_eq!(s.state(), RunState::Inmigrate);
        let o = s.step(Input::Cont).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Inmigrate);
        let o = s.step(Input::SystemReset).unwrap();
        assert!(o.reset && !o.run);
        assert_eq!(s.state(), RunState::Inmigrate);
        let o = s.step(Input::IncomingDone).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Resumed], true));
        assert_eq!(s.state(), RunState::Running);
    }

    #[test]
    fn stop_in_inmigrate_clears_autostart_so_the_loaded_vm_is_paused() {
        let mut s = RunStateMachine::new(false, false, false).with_incoming(true);
        let o = s.step(Input::Stop).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Inmigrate);
        let o = s.step(Input::IncomingDone).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Paused);
        assert!(s.step(Input::Cont).unwrap().run);
    }

    #[test]
    fn a_target_takes_a_paused_source_s_state_and_does_not_autostart() {
        let mut s = RunStateMachine::new(false, false, false).with_incoming(true);
        s.step(Input::Cont).unwrap();
        s.set_source_state(Some(RunState::Paused));
        let o = s.step(Input::IncomingDone).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Paused);
        assert!(s.source_state());
        let o = s.step(Input::Cont).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Resumed], true));
        assert!(!s.source_state());
    }

    #[test]
    fn a_never_run_source_leaves_its_target_in_prelaunch_until_a_reset() {
        let mut s = RunStateMachine::new(true, false, false).with_incoming(true);
        s.set_source_state(Some(RunState::Prelaunch));
        let o = s.step(Input::IncomingDone).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Prelaunch);
        assert!(s.source_state());
        s.step(Input::Stop).unwrap();
        assert!(s.source_state(), "a stop that changes nothing keeps it");
        let o = s.step(Input::SystemReset).unwrap();
        assert!(o.reset);
        assert_eq!(s.state(), RunState::Prelaunch);
        assert!(!s.source_state());
    }

    #[test]
    fn a_running_source_or_none_leaves_autostart_in_charge() {
        for source in [Some(RunState::Running), None] {
            let mut s = RunStateMachine::new(false, false, false).with_incoming(true);
            s.set_source_state(source);
            let o = s.step(Input::IncomingDone).unwrap();
            assert!(o.run, "{source:?}");
            assert!(!s.source_state());
            let mut s = RunStateMachine::new(true, false, false).with_incoming(true);
            s.set_source_state(source);
            s.step(Input::IncomingDone).unwrap();
            assert_eq!(s.state(), RunState::Paused);
            assert!(!s.source_state());
        }
    }

    #[test]
    fn the_global_state_is_the_one_before_finish_migrate() {
        let mut s = RunStateMachine::new(true, false, false);
        assert_eq!(s.global_state(), RunState::Prelaunch);
        s.step(Input::MigrateBegin).unwrap();
        assert_eq!(s.state(), RunState::FinishMigrate);
        assert_eq!(s.global_state(), RunState::Prelaunch);
        s.step(Input::MigrateEnd { completed: true }).unwrap();
        assert_eq!(s.global_state(), RunState::Postmigrate);
        let mut s = m();
        s.step(Input::MigrateBegin).unwrap();
        assert_eq!(s.global_state(), RunState::Running);
    }

    #[test]
    fn a_source_state_is_used_once() {
        let mut s = RunStateMachine::new(false, false, false);
        s.set_source_state(Some(RunState::Paused));
        // Not in inmigrate: nothing changes, and the state is dropped.
        s.step(Input::IncomingDone).unwrap();
        assert_eq!(s.state(), RunState::Running);
        let mut s = s.with_incoming(true);
        assert!(s.step(Input::IncomingDone).unwrap().run);
    }

    #[test]
    fn incoming_done_outside_inmigrate_changes_nothing() {
        let mut s = RunStateMachine::new(true, false, false);
        let o = s.step(Input::IncomingDone).unwrap();
        assert!(o.events.is_empty() && !o.run);
        assert_eq!(s.state(), RunState::Prelaunch);
    }

    #[test]
    fn a_save_stops_a_running_vm_into_save_vm_and_resumes_it() {
        let mut s = m();
        let o = s.step(Input::SaveBegin).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Stopped], false));
        assert_eq!(s.state(), RunState::SaveVm);
        let o = s.step(Input::SaveEnd).unwrap();
        assert_eq!((o.events, o.run), (vec![VcpuEvent::Resumed], true));
    }

    #[test]
    fn stop_emits_once_and_pauses() {
        let mut s = m();
        assert_eq!(
            s.step(Input::Stop).unwrap().events,
            vec![VcpuEvent::Stopped]
        );
        assert_eq!(s.state(), RunState::Paused);
        let again = s.step(Input::Stop).unwrap();
        assert!(again.events.is_empty());
        assert!(!again.run);
    }

    #[test]
    fn cont_from_prelaunch_resumes_and_cont_while_running_is_silent() {
        let mut s = RunStateMachine::new(true, false, false);
        assert_eq!(s.state(), RunState::Prelaunch);
        let o = s.step(Input::Cont).unwrap();
        assert_eq!(o.events, vec![VcpuEvent::Resumed]);
        assert!(o.run);
        assert!(s.step(Input::Cont).unwrap().events.is_empty());
    }

    #[test]
    fn guest_shutdown_with_no_shutdown_emits_shutdown_then_stop() {
        let mut s = RunStateMachine::new(false, true, false);
        let o = s.step(Input::GuestShutdown).unwrap();
        assert_eq!(
            o.events,
            vec![
                VcpuEvent::Shutdown {
                    reason: ShutdownCause::GuestShutdown
                },
                VcpuEvent::Stopped
            ]
        );
        assert_eq!(s.state(), RunState::Shutdown);
        assert_eq!(s.step(Input::Cont), Err(RunStateError::NeedsReset));
    }

    #[test]
    fn guest_reset_with_no_reboot_is_a_shutdown() {
        let mut s = RunStateMachine::new(false, false, true);
        let o = s.step(Input::GuestReset).unwrap();
        assert_eq!(
            o.events,
            vec![VcpuEvent::Shutdown {
                reason: ShutdownCause::GuestReset
            }]
        );
        assert!(!o.reset);
    }

    #[test]
    fn guest_reset_keeps_running() {
        let mut s = m();
        let o = s.step(Input::GuestReset).unwrap();
        assert!(o.reset && o.run);
        assert_eq!(s.state(), RunState::Running);
    }

    #[test]
    fn system_reset_of_a_stopped_vm_goes_to_prelaunch() {
        let mut s = m();
        s.step(Input::Stop).unwrap();
        let o = s.step(Input::SystemReset).unwrap();
        assert!(o.reset && !o.run);
        assert_eq!(s.state(), RunState::Prelaunch);
    }

    #[test]
    fn crash_is_internal_error_and_later_guest_inputs_are_ignored() {
        let mut s = m();
        let o = s.step(Input::Crash("x".into())).unwrap();
        assert_eq!(o.events[0], VcpuEvent::GuestCrashed { detail: "x".into() });
        assert_eq!(s.state(), RunState::InternalError);
        assert!(s.step(Input::GuestReset).unwrap().events.is_empty());
    }

    #[test]
    fn system_reset_after_crash_allows_cont() {
        let mut s = m();
        s.step(Input::Crash("x".into())).unwrap();
        s.step(Input::SystemReset).unwrap();
        assert_eq!(s.state(), RunState::Prelaunch);
        assert!(s.step(Input::Cont).unwrap().run);
    }
}
