//! The target of a live migration: reads the stream into guest RAM on a
//! thread of its own, loads the device state (checked whole before the
//! first KVM write, vCPUs marked restored), acknowledges on the same
//! socket when the source asked for it, and reports `completed`; the
//! broker then activates the disks and resumes. A bad stream or a hang-up
//! fails the migration (the process keeps running).

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc_proto::envelope::error_chain;
use ipc_proto::migration::MigrationStatus;
use ipc_proto::migstream::{Record, StreamError, StreamReader, ACK};
use ipc_proto::vcpu::RunState;
use ipc_proto::FlatError;

use super::dirty::{self, PAGE};
use super::progress::Progress;
use super::ram;
use super::{lock, Shared};
use crate::runstate::Input;

/// Bytes the stream's records are read in (a run's bytes larger than
/// that go from the fd to the run's buffer directly).
const BUFFER: usize = 64 << 10;
/// Bytes between two progress updates.
const UPDATE_EVERY: u64 = 1 << 20;
/// How long the vCPUs get to be parked for the load.
const PARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why an incoming migration failed.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// The stream is bad or broke.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A page could not be applied.
    #[error(transparent)]
    Ram(#[from] ram::RamError),
    /// The device state was refused (the VM is as it was before it).
    #[error("cannot load the VM state")]
    State(#[from] crate::state::StateError),
    /// The acknowledgement could not be sent.
    #[error("cannot acknowledge the migration to the source")]
    Ack(#[source] std::io::Error),
    /// The VM has run meanwhile.
    #[error("the VM was started during the incoming migration")]
    Started,
    /// A vCPU did not park.
    #[error("the vCPUs did not stop within 5 s")]
    NotParked,
}

/// Checks the VM can take an incoming migration and starts reading
/// `stream` on a thread of its own.
pub fn start(
    controller: &Shared,
    stream: OwnedFd,
    progress: Arc<Progress>,
) -> Result<(), FlatError> {
    {
        let c = lock(controller);
        let state = c.status().status;
        if !matches!(state, RunState::Prelaunch | RunState::Inmigrate) {
            return Err(FlatError::generic(format!(
                "an incoming migration needs a VM that has not run (this one is {})",
                state.as_str()
            )));
        }
    }
    let controller = controller.clone();
    progress.set_status(MigrationStatus::Setup, None);
    let p = progress.clone();
    std::thread::Builder::new()
        .name("migration-in".into())
        .spawn(move || {
            progress.set_status(MigrationStatus::Active, None);
            match receive(&controller, File::from(stream), &progress) {
                Ok(()) => {
                    let mut c = lock(&controller);
                    progress.set_status(MigrationStatus::Completed, None);
                    if let Err(e) = c.handle(Input::IncomingDone) {
                        tracing::warn!("cannot end the incoming run state: {e}");
                    }
                }
                Err(e) => {
                    let e = error_chain(&e);
                    tracing::warn!("incoming migration failed: {e}");
                    progress.set_status(MigrationStatus::Failed, Some(e));
                }
            }
        })
        .map_err(|e| {
            let e = format!("migration: cannot start its thread: {e}");
            p.set_status(MigrationStatus::Failed, Some(e.clone()));
            FlatError::generic(e)
        })?;
    Ok(())
}

/// Reads the whole stream into the VM.
fn receive(controller: &Shared, stream: File, p: &Progress) -> Result<(), IncomingError> {
    let (mem, ours) = {
        let c = lock(controller);
        (c.vm().mem.clone(), dirty::layout(&c.vm().mem))
    };
    let back = stream.try_clone().map_err(IncomingError::Ack)?;
    let mut r = StreamReader::open(BufReader::with_capacity(BUFFER, stream))?;
    if r.header().layout != ours {
        return Err(StreamError::LayoutMismatch {
            theirs: r.header().layout.to_string(),
            ours: ours.to_string(),
        }
        .into());
    }
    let mut buf = vec![0u8; PAGE as usize];
    let mut decoder = ram::PageDecoder::default();
    let (mut zero, mut whole) = (0u64, 0u64);
    let mut next_update = UPDATE_EVERY;
    loop {
        let rec = r.next(&mut buf)?;
        match rec {
            Record::ZeroPages { gpa, count } => {
                decoder.zero_pages(&mem, gpa, count)?;
                zero += u64::from(count);
            }
            Record::Pages { gpa, count } => {
                decoder.pages(&mem, &mut r, gpa, count)?;
                whole += u64::from(count);
            }
            Record::Xbzrle { gpa, len } => {
                let delta = buf.get(..len).ok_or(StreamError::Buffer {
                    have: buf.len(),
                    want: len,
                })?;
                decoder.xbzrle(&mem, gpa, delta)?;
            }
            // QEMU's target counts passes without MIGRATION_PASS events.
            Record::Pass { count } => p.update(|s| s.ram.dirty_sync_count = count),
            Record::EndOfRam => {}
            Record::DeviceState(state) => {
                let c = lock(controller);
                if c.status().running {
                    return Err(IncomingError::Started);
                }
                // A VM that does not run has its vCPUs parked; this waits
                // for a thread still on its way there.
                let vm = c.vm();
                if !vm.sync.wait_parked(vm.vcpus.len(), PARK_TIMEOUT) {
                    return Err(IncomingError::NotParked);
                }
                crate::state::load(vm, &state)?;
            }
            Record::End => break,
        }
        if r.offset() >= next_update {
            let read = r.offset();
            next_update = read + UPDATE_EVERY;
            p.update(|s| {
                s.ram.transferred = read;
                s.ram.duplicate = zero;
                s.ram.normal = whole;
                s.ram.normal_bytes = whole * PAGE;
            });
        }
    }
    let read = r.offset();
    p.update(|s| {
        s.ram.transferred = read;
        s.ram.remaining = 0;
        s.ram.duplicate = zero;
        s.ram.normal = whole;
        s.ram.normal_bytes = whole * PAGE;
    });
    if r.header().wants_ack() {
        let mut back = back;
        back.write_all(&[ACK]).map_err(IncomingError::Ack)?;
    }
    Ok(())
}
