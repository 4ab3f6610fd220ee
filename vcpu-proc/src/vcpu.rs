//! vCPU threads: each owns its `VcpuFd`, runs `KVM_RUN`, dispatches port and
//! MMIO exits to the buses, and parks when the controller pauses the VM.
//!
//! Pausing is race-free: the controller clears `run` under the lock and
//! then signals every thread; the signal handler sets `immediate_exit` in
//! the thread's `kvm_run`, so a thread that is about to enter the guest
//! returns at once, and one inside the guest exits with `EINTR`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_lapic_state, kvm_mp_state, kvm_run, kvm_vcpu_events, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::bus::{Access, Bus};
use crate::devices::GuestAction;
use crate::memory::GuestMemoryMmap;
use crate::paging;
use crate::regs::{self, EntryPoint};
use crate::runstate::Input;
use crate::trace;
use ipc_proto::{trace_point, warn_limited};

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's mapped kvm_run, valid while the
            // thread owns its VcpuFd (it is cleared before the fd is dropped);
            // a volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    let r = ONCE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| e.errno())
    });
    match r {
        Ok(()) => Ok(()),
        Err(errno) => Err(std::io::Error::from_raw_os_error(*errno)),
    }
}

/// State shared between the controller and the vCPU threads.
#[derive(Debug)]
pub struct SyncState {
    /// vCPUs may run.
    pub run: bool,
    /// Threads currently parked.
    pub parked: usize,
    /// Threads that have ended.
    pub dead: usize,
    /// Bumped on every (re)boot; a thread reinitialises its vCPU when it
    /// sees a new value.
    pub epoch: u64,
    /// Where the boot CPU starts in this epoch.
    pub entry: EntryPoint,
    /// Slots whose vCPU state was restored from a VM-state file: their
    /// thread takes the mark on its next pass and resumes the vCPU as it
    /// is instead of booting it. Cleared by a new epoch (a reset boots).
    pub restored: Vec<u32>,
    /// Slots whose thread has taken this epoch (booted its vCPU or
    /// resumed a restored one). Cleared by a new epoch; a slot plugged
    /// again leaves it.
    pub taken: Vec<u32>,
}

/// The lock and condition variable around [`SyncState`].
#[derive(Debug)]
pub struct VcpuSync {
    state: Mutex<SyncState>,
    cv: Condvar,
}

impl VcpuSync {
    /// Parked vCPUs that will boot at `entry` when first resumed.
    pub fn new(entry: EntryPoint) -> Self {
        VcpuSync {
            state: Mutex::new(SyncState {
                run: false,
                parked: 0,
                dead: 0,
                epoch: 0,
                entry,
                restored: Vec::new(),
                taken: Vec::new(),
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forbids running; threads park at their next check.
    pub fn request_pause(&self) {
        self.lock().run = false;
    }

    /// Lets the threads run.
    pub fn resume(&self) {
        self.lock().run = true;
        self.cv.notify_all();
    }

    /// Starts a new boot epoch at `entry` (the threads are paused).
    pub fn new_epoch(&self, entry: EntryPoint) {
        let mut s = self.lock();
        s.epoch += 1;
        s.entry = entry;
        s.restored.clear();
        s.taken.clear();
    }

    /// The boot epoch (a machine reset starts a new one; a migration
    /// resends all RAM then, as the reset rewrote it from the host side,
    /// where KVM's dirty log does not see writes).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Marks the vCPUs of `slots` as restored (their threads are paused):
    /// they resume their state as it is rather than booting.
    pub fn mark_restored(&self, slots: &[u32]) {
        self.lock().restored = slots.to_vec();
    }

    /// Of `slots`, the vCPUs that will boot when their thread next runs
    /// (it has not taken this epoch, and no restored state waits for it),
    /// with the entry of this epoch.
    pub fn boot_pending(&self, slots: &[u32]) -> (Vec<u32>, EntryPoint) {
        let s = self.lock();
        let pending = slots
            .iter()
            .copied()
            .filter(|x| !s.taken.contains(x) && !s.restored.contains(x))
            .collect();
        (pending, s.entry)
    }

    /// Marks `slots` as restored as well (their boot state was written
    /// from outside their thread, which then resumes it as it is).
    pub fn add_restored(&self, slots: &[u32]) {
        let mut s = self.lock();
        for &x in slots {
            if !s.restored.contains(&x) {
                s.restored.push(x);
            }
        }
    }

    /// A vCPU thread for `slot` is about to start (CPU plug): it boots
    /// at its first run whatever the thread before it did.
    pub fn forget_taken(&self, slot: u32) {
        self.lock().taken.retain(|&x| x != slot);
    }

    /// Wakes parked threads so they see an unplug request.
    pub fn wake_all(&self) {
        let _s = self.lock();
        self.cv.notify_all();
    }

    /// Forgets a dead thread that was removed (CPU hot-unplug), so it no
    /// longer counts for [`VcpuSync::wait_parked`].
    pub fn forget_dead(&self) {
        let mut s = self.lock();
        s.dead = s.dead.saturating_sub(1);
    }

    /// Waits until all `n` threads are parked or dead; false on timeout.
    pub fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.parked + s.dead < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// A request from a vCPU thread to the controller.
pub type ActionSender = Sender<Input>;

/// Per-vCPU state captured at creation and restored on every boot.
#[derive(Clone, Copy)]
pub struct InitialState {
    /// The LAPIC with LINT0/LINT1 configured.
    pub lapic: kvm_lapic_state,
    /// No pending exceptions, interrupts or NMIs.
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for InitialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialState").finish_non_exhaustive()
    }
}

impl InitialState {
    /// Puts `vcpu` (of possible-CPU `slot`) in its boot state for `entry`:
    /// MSRs, LAPIC and events as at creation; the boot CPU runnable at
    /// `entry`, the others waiting for INIT/SIPI.
    pub fn boot(&self, vcpu: &VcpuFd, slot: u32, entry: EntryPoint) -> Result<(), regs::RegsError> {
        let kvm = |what| move |source| regs::RegsError::Kvm { what, source };
        regs::setup_msrs(vcpu)?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        if slot == 0 {
            regs::setup_boot_cpu(vcpu, entry)?;
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        } else {
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_UNINITIALIZED,
            })
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }
}

/// Everything a vCPU thread owns.
pub struct VcpuThread {
    /// Possible-CPU slot (`cpu-index`); slot 0 is the boot CPU.
    pub index: u32,
    /// The vCPU.
    pub vcpu: VcpuFd,
    /// Shared control.
    pub sync: Arc<VcpuSync>,
    /// Port-I/O bus.
    pub io: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest RAM (to read the instruction at RIP after a crash).
    pub mem: GuestMemoryMmap,
    /// Where requests go.
    pub actions: ActionSender,
    /// Boot state.
    pub initial: InitialState,
    /// Where this thread publishes its host tid.
    pub tid: Arc<AtomicI64>,
    /// Set to end the thread (CPU hot-unplug); it leaves its vCPU there.
    pub unplug: Arc<crate::hotplug::Unplug>,
}

enum Next {
    Continue,
    Action(Input),
}

struct DeadGuard(Arc<VcpuSync>);

impl Drop for DeadGuard {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        self.0.lock().dead += 1;
        self.0.cv.notify_all();
    }
}

impl VcpuThread {
    /// The thread body: runs until the process ends; a panic becomes a
    /// crash request.
    pub fn run(mut self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.tid.store(i64::from(tid), Ordering::SeqCst);
        let _guard = DeadGuard(self.sync.clone());
        let index = self.index;
        let actions = self.actions.clone();
        let sync = self.sync.clone();
        let result = catch_unwind(AssertUnwindSafe(|| self.run_loop()));
        if result.is_ok() {
            // Unplugged: the vCPU is kept for a later plug of this slot.
            KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
            self.unplug.park(self.vcpu, self.initial);
            return;
        }
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            sync.request_pause();
            // Ignoring the error: the controller is gone only at exit.
            let _ = actions.send(Input::Crash(format!("vCPU {index} thread panicked: {msg}")));
        }
    }

    /// Runs the vCPU until it is unplugged.
    fn run_loop(&mut self) {
        let run_ptr: *mut kvm_run = self.vcpu.get_kvm_run();
        KVM_RUN.with(|p| p.set(run_ptr));
        let mut epoch = None;
        loop {
            let entry = {
                let mut s = self.sync.lock();
                if !s.run {
                    s.parked += 1;
                    self.sync.cv.notify_all();
                    while !s.run && !self.unplug.is_requested() {
                        s = self.sync.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                    }
                    s.parked -= 1;
                }
                if self.unplug.is_requested() {
                    return;
                }
                let restored = match s.restored.iter().position(|&x| x == self.index) {
                    Some(i) => {
                        s.restored.swap_remove(i);
                        true
                    }
                    None => false,
                };
                let boot = epoch != Some(s.epoch) && !restored;
                epoch = Some(s.epoch);
                if !s.taken.contains(&self.index) {
                    s.taken.push(self.index);
                }
                boot.then_some(s.entry)
            };
            if let Some(entry) = entry {
                if let Err(e) = self.boot(entry) {
                    self.post(Input::Crash(format!(
                        "vCPU {} cannot be initialised: {}",
                        self.index,
                        ipc_proto::envelope::error_chain(&e)
                    )));
                    continue;
                }
            }
            match self.step() {
                Next::Continue => {}
                Next::Action(a) => self.post(a),
            }
        }
    }

    fn post(&self, input: Input) {
        self.sync.request_pause();
        // Ignoring the error: the controller is gone only at exit.
        let _ = self.actions.send(input);
    }

    fn boot(&mut self, entry: EntryPoint) -> Result<(), regs::RegsError> {
        self.initial.boot(&self.vcpu, self.index, entry)
    }

    fn step(&mut self) -> Next {
        let exit = match self.vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR => {
                self.vcpu.set_kvm_immediate_exit(0);
                return Next::Continue;
            }
            Err(e) if e.errno() == libc::EAGAIN => return Next::Continue,
            Err(e) => {
                let what = format!("KVM_RUN failed: {e}");
                return Next::Action(Input::Crash(self.describe(&what)));
            }
        };
        let what = match exit {
            VcpuExit::IoIn(port, data) => {
                trace_point!(trace::kvm_exit_io_in(self.index, port, data.len()));
                if self.io.read(u64::from(port), data) == Access::Unhandled {
                    data.fill(0xff);
                }
                return Next::Continue;
            }
            VcpuExit::IoOut(port, data) => {
                trace_point!(trace::kvm_exit_io_out(self.index, port, data));
                return action(self.io.write(u64::from(port), data));
            }
            VcpuExit::MmioRead(addr, data) => {
                trace_point!(trace::kvm_exit_mmio_read(self.index, addr, data.len()));
                if self.mmio.read(addr, data) == Access::Unhandled {
                    warn_limited!("guest read of unassigned MMIO {addr:#x}");
                    data.fill(0xff);
                }
                return Next::Continue;
            }
            VcpuExit::MmioWrite(addr, data) => {
                trace_point!(trace::kvm_exit_mmio_write(self.index, addr, data));
                let access = self.mmio.write(addr, data);
                if access == Access::Unhandled {
                    warn_limited!("guest write to unassigned MMIO {addr:#x}");
                }
                return action(access);
            }
            e @ (VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen) => {
                trace_point!(trace::kvm_exit_other(self.index, e));
                return Next::Continue;
            }
            VcpuExit::Shutdown => {
                trace_point!(trace::kvm_exit_shutdown(self.index));
                return Next::Action(Input::GuestReset);
            }
            VcpuExit::SystemEvent(kind, _) => {
                trace_point!(trace::kvm_exit_system_event(self.index, kind));
                match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => return Next::Action(Input::GuestShutdown),
                    KVM_SYSTEM_EVENT_RESET => return Next::Action(Input::GuestReset),
                    KVM_SYSTEM_EVENT_CRASH => "guest reported a crash".to_string(),
                    other => format!("unknown KVM system event {other}"),
                }
            }
            VcpuExit::FailEntry(reason, cpu) => {
                format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})")
            }
            VcpuExit::InternalError => {
                let run = self.vcpu.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // kernel filled the `internal` member of the union.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                format!("KVM_EXIT_INTERNAL_ERROR (suberror {suberror})")
            }
            other => format!("unexpected exit {other:?}"),
        };
        trace_point!(trace::kvm_exit_error(self.index, what));
        Next::Action(Input::Crash(self.describe(&what)))
    }

    /// "`what`: vCPU n, RIP ..., bytes at RIP ...".
    fn describe(&self, what: &str) -> String {
        let (Ok(r), Ok(s)) = (self.vcpu.get_regs(), self.vcpu.get_sregs()) else {
            return format!("{what} on vCPU {} (registers unavailable)", self.index);
        };
        let long_mode = s.efer & 0x400 != 0;
        let linear = if long_mode {
            r.rip
        } else {
            s.cs.base.wrapping_add(r.rip & 0xffff_ffff)
        };
        let paging = s.cr0 & 0x8000_0000 != 0;
        let phys = if !paging {
            Some(linear)
        } else {
            match self.vcpu.translate_gva(linear) {
                Ok(t) if t.valid != 0 => Some(t.physical_address),
                _ if long_mode => paging::translate(&self.mem, s.cr3, linear),
                _ => None,
            }
        };
        let bytes = phys
            .and_then(|p| {
                let mut b = [0u8; 16];
                self.mem.read_slice(&mut b, GuestAddress(p)).ok().map(|_| b)
            })
            .map(|b| {
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "unreadable".into());
        format!(
            "{what} on vCPU {}: RIP {:#x} CS {:#x} RSP {:#x} CR0 {:#x} CR3 {:#x} EFER {:#x}; bytes at RIP: {bytes}",
            self.index, r.rip, s.cs.selector, r.rsp, s.cr0, s.cr3, s.efer
        )
    }
}

fn action(access: Access) -> Next {
    match access {
        Access::Handled(Some(a)) => Next::Action(match a {
            GuestAction::Reset => Input::GuestReset,
            GuestAction::Shutdown => Input::GuestShutdown,
            GuestAction::DebugExit(code) => Input::DebugExit(code),
        }),
        Access::Handled(None) | Access::Unhandled => Next::Continue,
    }
}

/// Sends the kick signal to a vCPU thread.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live thread of this process (vCPU threads never
    // exit while the process runs) and the handler is installed.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        warn_limited!("cannot kick vCPU thread: error {rc}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync() -> Arc<VcpuSync> {
        Arc::new(VcpuSync::new(EntryPoint { rip: 0, rsi: 0 }))
    }

    #[test]
    fn boot_pending_lists_the_vcpus_that_have_not_taken_the_epoch() {
        let s = sync();
        s.new_epoch(EntryPoint { rip: 7, rsi: 9 });
        s.lock().taken.push(0);
        s.mark_restored(&[1]);
        let (pending, entry) = s.boot_pending(&[0, 1, 2, 3]);
        assert_eq!((pending.clone(), entry.rip, entry.rsi), (vec![2, 3], 7, 9));
        s.add_restored(&pending);
        assert!(s.boot_pending(&[0, 1, 2, 3]).0.is_empty());
        // A slot plugged again boots at its first run.
        s.forget_taken(0);
        assert_eq!(s.boot_pending(&[0, 1, 2, 3]).0, vec![0]);
        // A reset: every vCPU boots again.
        s.new_epoch(EntryPoint { rip: 8, rsi: 9 });
        assert_eq!(s.boot_pending(&[0, 1, 2, 3]).0, vec![0, 1, 2, 3]);
    }

    #[test]
    fn wait_parked_times_out_when_a_vcpu_never_parks() {
        assert!(!sync().wait_parked(1, Duration::from_millis(20)));
    }

    #[test]
    fn dead_threads_count_as_parked() {
        let s = sync();
        drop(DeadGuard(s.clone()));
        assert!(s.wait_parked(1, Duration::from_millis(20)));
    }

    #[test]
    fn a_new_epoch_forgets_restored_vcpus() {
        let s = sync();
        s.mark_restored(&[0, 1]);
        s.new_epoch(EntryPoint { rip: 7, rsi: 9 });
        assert!(s.lock().restored.is_empty());
    }

    #[test]
    fn new_epoch_carries_the_entry_point() {
        let s = sync();
        s.new_epoch(EntryPoint { rip: 7, rsi: 9 });
        let st = s.lock();
        assert_eq!((st.epoch, st.entry.rip, st.entry.rsi), (1, 7, 9));
    }
}
