//! The `run-state` section: the run state the VM had when it was saved,
//! QEMU's migration global state. An outgoing migration writes the state
//! its VM was in before `finish-migrate`; a target that did not run then
//! takes it instead of autostarting (QEMU's
//! `process_incoming_migration_bh`). `xen-save-devices-state` writes
//! `running` (QEMU's `global_state_store_running`) and
//! `xen-load-devices-state` ignores the section, as QEMU does. A live
//! state (running, suspended) is not written at all: the target's
//! autostart rule applies to it exactly as to a file without the section,
//! and such a file also loads in a build that predates the section.

use std::sync::Mutex;

use ipc_proto::vcpu::RunState;
use ipc_proto::vmstate::{OwnedSection, Reader, Section, SectionId, Writer};

use super::Result;

/// The run state a capture writes and the one the last load read, shared
/// by the controller (which knows the run state) and the state code
/// (which captures and restores through the [`crate::vm::Vm`]).
#[derive(Debug)]
pub struct GlobalState {
    inner: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    to_save: RunState,
    loaded: Option<RunState>,
}

impl Default for GlobalState {
    fn default() -> Self {
        GlobalState {
            inner: Mutex::new(Slots {
                to_save: RunState::Running,
                loaded: None,
            }),
        }
    }
}

impl GlobalState {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next capture writes `state` (`running` until set).
    pub fn set_to_save(&self, state: RunState) {
        self.slots().to_save = state;
    }

    /// What a capture writes.
    pub fn to_save(&self) -> RunState {
        self.slots().to_save
    }

    /// A restore read `state` (`None`: the file had no `run-state`
    /// section).
    pub fn set_loaded(&self, state: Option<RunState>) {
        self.slots().loaded = state;
    }

    /// Takes what the last restore read.
    pub fn take_loaded(&self) -> Option<RunState> {
        self.slots().loaded.take()
    }
}

/// QEMU's `runstate_is_live`: a target autostarts (or pauses with `-S`)
/// after a source in one of these.
pub fn is_live(state: RunState) -> bool {
    matches!(state, RunState::Running | RunState::Suspended)
}

/// States a VM is only in during an operation; no saved VM is in one.
fn transient(state: RunState) -> bool {
    matches!(
        state,
        RunState::Inmigrate | RunState::FinishMigrate | RunState::SaveVm | RunState::RestoreVm
    )
}

/// The section: a blob holding the QAPI name of the run state.
pub fn encode(state: RunState) -> Result<OwnedSection> {
    let mut w = Writer::new();
    w.blob(state.as_str().as_bytes())?;
    Ok(OwnedSection {
        id: SectionId::RunState,
        payload: w.finish(),
    })
}

/// Reads a `run-state` section: an unknown name, or a state no saved VM
/// is in (`inmigrate`, `finish-migrate`, `save-vm`, `restore-vm`), is
/// malformed.
pub fn decode(s: &Section<'_>) -> Result<RunState> {
    let mut r = Reader::new(s.payload);
    let name = r.blob("run state")?;
    if r.remaining() != 0 {
        return Err(s
            .malformed(format!("{} bytes after its contents", r.remaining()))
            .into());
    }
    let name = std::str::from_utf8(name).map_err(|_| s.malformed("the run state is not UTF-8"))?;
    let state = RunState::ALL
        .into_iter()
        .find(|r| r.as_str() == name)
        .ok_or_else(|| s.malformed(format!("unknown run state '{name}'")))?;
    if transient(state) {
        return Err(s
            .malformed(format!("'{name}' is not a state a VM is saved in"))
            .into());
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(payload: &[u8]) -> Section<'_> {
        Section {
            id: SectionId::RunState,
            version: 1,
            payload,
        }
    }

    #[test]
    fn every_state_a_saved_vm_can_be_in_round_trips() {
        for state in RunState::ALL.into_iter().filter(|s| !transient(*s)) {
            let s = encode(state).unwrap();
            assert_eq!(decode(&section(&s.payload)).unwrap(), state);
        }
    }

    #[test]
    fn an_unknown_or_transient_state_or_trailing_bytes_are_malformed() {
        let mut w = Writer::new();
        w.blob(b"sleeping").unwrap();
        let err = decode(&section(&w.finish())).unwrap_err().to_string();
        assert!(err.contains("unknown run state 'sleeping'"), "{err}");
        let s = encode(RunState::FinishMigrate).unwrap();
        let err = decode(&section(&s.payload)).unwrap_err().to_string();
        assert!(err.contains("'finish-migrate' is not a state"), "{err}");
        let mut p = encode(RunState::Paused).unwrap().payload;
        p.push(0);
        let err = decode(&section(&p)).unwrap_err().to_string();
        assert!(err.contains("1 bytes after its contents"), "{err}");
        assert!(decode(&section(&[1, 0])).is_err());
    }

    #[test]
    fn the_loaded_state_is_taken_once_and_a_capture_writes_running_by_default() {
        let g = GlobalState::default();
        assert_eq!(g.to_save(), RunState::Running);
        g.set_loaded(Some(RunState::Paused));
        assert_eq!(g.take_loaded(), Some(RunState::Paused));
        assert_eq!(g.take_loaded(), None);
    }
}
