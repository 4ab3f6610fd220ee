//! `dump-guest-memory`: an ELF64 core of the guest, written by vcpu-proc
//! (it has the RAM and the vCPUs) to an fd the broker opened or received.
//! The VM is stopped (`save-vm`) while the registers are read and the
//! memory written, and resumed afterwards if it ran, as QEMU does.
//!
//! - [`cpu`]: one vCPU's registers as NT_PRSTATUS and QEMU's `QEMU` note.
//! - [`elf`]: the file's layout (headers, notes, which RAM goes where).
//! - [`pagewalk`]: `paging: true`, the guest's virtual mappings.
//! - [`writer`]: the writes, from the RAM mapping, holes as zeros.

pub mod cpu;
pub mod elf;
pub mod pagewalk;
pub mod writer;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipc_proto::vcpu::{DumpRequest, VcpuEvent, VcpuReply};
use ipc_proto::FlatError;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::control::{Controller, EventSink};
use crate::runstate::Input;
use crate::vm::FdTable;
use cpu::CpuState;
use elf::{Block, Layout, Mapping, Note};

/// Why a dump could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A register read failed.
    #[error("dump: cannot read the vCPU registers ({0})")]
    Registers(&'static str, #[source] kvm_ioctls::Error),
    /// The MSR list could not be built.
    #[error("dump: cannot build the MSR list")]
    MsrList,
    /// The output could not be written (QEMU's message).
    #[error("{0}")]
    Write(String),
}

/// QEMU's message while another dump runs.
pub const IN_PROGRESS: &str = "There is a dump in process, please wait.";

/// The dump of this process: at most one at a time.
#[derive(Debug, Default, Clone)]
pub struct Dumps {
    running: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
}

type Shared = Arc<Mutex<Controller>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Controller> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears `running` when the dump thread ends, however it ends.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Dumps {
    /// Bytes of guest memory the current (or last) dump wrote.
    pub fn progress(&self) -> VcpuReply {
        VcpuReply::DumpProgress {
            completed: self.progress.load(Ordering::Relaxed),
        }
    }

    /// Starts a dump: checks the range, stops the VM, reads the registers
    /// and the page tables, then writes on a thread of its own, which
    /// emits [`VcpuEvent::DumpCompleted`] and resumes the VM.
    pub fn start(
        &self,
        controller: &Shared,
        req: DumpRequest,
        fds: Vec<std::os::fd::OwnedFd>,
        sink: Arc<dyn EventSink>,
    ) -> Result<VcpuReply, FlatError> {
        let file = FdTable::new(fds)
            .take(req.fd)
            .map(File::from)
            .map_err(|e| FlatError::generic(e.to_string()))?;
        // The controller's lock first: a dump that just ended releases it
        // only once it has resumed the VM and cleared `running`.
        let mut c = lock(controller);
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(FlatError::generic(IN_PROGRESS));
        }
        let guard = Running(self.running.clone());
        let filter = req.filter.map(|f| (f.begin, f.length));
        // Stopped first, as QEMU: its range errors come between STOP and
        // RESUME.
        c.handle(Input::DumpBegin)
            .map_err(|e| FlatError::generic(e.to_string()))?;
        let prepared = (|| {
            if matches!(filter, Some((_, 0))) {
                return Err("parameter 'length' expects a non-zero size".to_string());
            }
            let ram: Vec<Block> = c
                .vm()
                .mem
                .iter()
                .map(|r| Block {
                    gpa: r.start_addr().raw_value(),
                    len: r.len(),
                })
                .collect();
            let blocks = elf::filter_blocks(&ram, filter);
            if blocks.is_empty() {
                return Err("dump: no guest memory to dump".to_string());
            }
            prepare(&c, &ram, blocks, req.paging, filter)
        })();
        let layout = match prepared {
            Ok(layout) => layout,
            Err(e) => {
                if let Err(e) = c.handle(Input::DumpEnd) {
                    tracing::warn!("cannot resume after a failed dump: {e}");
                }
                return Err(FlatError::generic(e));
            }
        };
        let mem = c.vm().mem.clone();
        drop(c);
        let total = layout.total();
        self.progress.store(0, Ordering::SeqCst);
        let progress = self.progress.clone();
        let shared = controller.clone();
        let controller = controller.clone();
        let spawned = std::thread::Builder::new()
            .name("dump".into())
            .spawn(move || {
                let mut out = writer::Output::new(file);
                let result = writer::write_core(&mut out, &layout, &mem, &progress);
                drop(out);
                // Under the controller's lock: QEMU's order (DUMP_COMPLETED,
                // then RESUME), and the next dump starts after both.
                let mut c = lock(&controller);
                sink.emit(VcpuEvent::DumpCompleted {
                    completed: progress.load(Ordering::SeqCst),
                    total,
                    error: result.err().map(|e| e.to_string()),
                });
                if let Err(e) = c.handle(Input::DumpEnd) {
                    tracing::warn!("cannot resume after the dump: {e}");
                }
                drop(guard);
            });
        if let Err(e) = spawned {
            // The closure (and the slot guard) is gone; resume the VM.
            if let Err(e) = lock(&shared).handle(Input::DumpEnd) {
                tracing::warn!("cannot resume after a failed dump: {e}");
            }
            return Err(FlatError::generic(format!("cannot start the dump: {e}")));
        }
        Ok(VcpuReply::DumpStarted { total })
    }
}

/// Reads the registers (the VM is stopped) and lays the file out.
fn prepare(
    c: &Controller,
    ram: &[Block],
    blocks: Vec<Block>,
    paging: bool,
    filter: Option<(i64, i64)>,
) -> Result<Layout, String> {
    let cpus: Vec<CpuState> = c
        .vm()
        .vcpus
        .iter()
        .map(|v| CpuState::capture(&v.view))
        .collect::<Result<_, _>>()
        .map_err(|e| ipc_proto::envelope::error_chain(&e))?;
    let maps = if paging && cpus.iter().any(CpuState::paging) {
        virtual_mappings(c, ram, &cpus)?
    } else {
        // No paging (or no vCPU uses it): virtual = physical, as QEMU.
        ram.iter()
            .map(|b| Mapping {
                vaddr: 0,
                paddr: b.gpa,
                len: b.len,
            })
            .collect()
    };
    let maps = elf::filter_mappings(&maps, filter);
    let mut notes: Vec<Note> = cpus
        .iter()
        .zip(0u32..)
        .map(|(s, i)| Note {
            name: "CORE",
            kind: cpu::NT_PRSTATUS,
            desc: s.prstatus(i),
        })
        .collect();
    notes.extend(cpus.iter().map(|s| Note {
        name: "QEMU",
        kind: 0,
        desc: s.qemu_state(),
    }));
    Ok(Layout::new(blocks, &maps, &notes))
}

/// The mappings of every paging vCPU's tables (4-level long mode only).
fn virtual_mappings(
    c: &Controller,
    ram: &[Block],
    cpus: &[CpuState],
) -> Result<Vec<Mapping>, String> {
    let mut maps = Vec::new();
    let mut seen = Vec::new();
    for s in cpus.iter().filter(|s| s.paging()) {
        if !s.long_mode() || s.sregs.cr4 & (1 << 12) != 0 {
            return Err(
                "dump: paging is supported for guests in 64-bit mode with 4-level page tables only"
                    .into(),
            );
        }
        if seen.contains(&s.sregs.cr3) {
            continue;
        }
        seen.push(s.sregs.cr3);
        pagewalk::walk_4level(&c.vm().mem, ram, s.sregs.cr3, &mut maps)
            .map_err(|_| "dump: the guest's page tables map too much to walk".to_string())?;
    }
    Ok(pagewalk::finish(maps))
}
