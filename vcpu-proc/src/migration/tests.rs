//! Live migration between two real KVM VMs in this test process, joined by
//! a socketpair; the test plays the broker (fds, switchover, `cont`).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use ipc_proto::migration::{
    dirty_log_size, MigrationEvent, MigrationParams, MigrationRequest, MigrationStats,
    MigrationStatus,
};
use ipc_proto::vcpu::{FdSlot, RunState, VcpuEvent, VcpuReply};

use super::*;
use crate::control::Controller;
use crate::runstate::{Input, RunStateMachine};
use crate::virtio::dirty_log::VhostLog;

const TIMEOUT: Duration = Duration::from_secs(60);
const RAM: u64 = 64 << 20;

#[derive(Clone)]
struct Sink(Arc<Mutex<Sender<VcpuEvent>>>);

impl EventSink for Sink {
    fn emit(&self, event: VcpuEvent) {
        let _ = self.0.lock().unwrap().send(event);
    }
}

/// One VM with its controller, as vcpu-proc's server holds it.
struct Side {
    c: Shared,
    m: Migrations,
    sink: Sink,
    events: Receiver<VcpuEvent>,
    seen_events: Vec<VcpuEvent>,
    ram: File,
    serial: Receiver<u8>,
    out: Vec<u8>,
}

/// A VM of `guest`: running, or never run (`prelaunch`, a target).
fn side(guest: &str, running: bool) -> Side {
    let r = crate::state::tests::built(guest, 1);
    let (tx, events) = channel();
    let sink = Sink(Arc::new(Mutex::new(tx)));
    let rsm = RunStateMachine::new(!running, false, false);
    let c = Arc::new(Mutex::new(Controller::start(
        r.vm,
        rsm,
        Box::new(sink.clone()),
    )));
    Side {
        c,
        m: Migrations::default(),
        sink,
        events,
        seen_events: Vec::new(),
        ram: r.ram,
        serial: r.serial,
        out: r.seen,
    }
}

fn params(downtime_limit_ms: u64, max_bandwidth: u64) -> MigrationParams {
    MigrationParams {
        downtime_limit_ms,
        max_bandwidth,
        xbzrle: false,
        xbzrle_cache_size: 64 << 20,
    }
}

/// A memfd sized for the vhost-user log, and the log mapped over a dup
/// (what a backend writes).
fn log_fd() -> (OwnedFd, VhostLog) {
    let size = dirty_log_size(RAM);
    let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    let mine = VhostLog::map(fd.try_clone().unwrap(), size).unwrap();
    (fd, mine)
}

impl Side {
    fn serve(&self, req: MigrationRequest, fds: Vec<OwnedFd>) -> Result<VcpuReply, FlatError> {
        self.m
            .serve(Some(&self.c), req, fds, Arc::new(self.sink.clone()))
    }

    fn start(&self, stream: UnixStream, log: OwnedFd, p: MigrationParams) {
        self.serve(
            MigrationRequest::Start {
                fd: FdSlot(0),
                log: FdSlot(1),
                params: p,
            },
            vec![stream.into(), log],
        )
        .expect("migration started");
    }

    fn incoming(&self, stream: UnixStream) {
        self.serve(
            MigrationRequest::Incoming { fd: FdSlot(0) },
            vec![stream.into()],
        )
        .expect("incoming migration started");
    }

    fn stats(&self) -> MigrationStats {
        match self.serve(MigrationRequest::Query, Vec::new()) {
            Ok(VcpuReply::Migration(s)) => *s,
            other => panic!("query: {other:?}"),
        }
    }

    fn run_state(&self) -> RunState {
        lock(&self.c).status().status
    }

    /// Waits for a migration event matching `want`; returns it.
    fn wait_event(&mut self, want: impl Fn(&MigrationEvent) -> bool) -> MigrationEvent {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("event not seen; got {:?}", self.seen_events));
            self.seen_events.push(e.clone());
            if let VcpuEvent::Migration(m) = e {
                if want(&m) {
                    return m;
                }
            }
        }
    }

    fn wait_status(&mut self, s: MigrationStatus) -> Option<String> {
        match self
            .wait_event(|e| matches!(e, MigrationEvent::Status { status, .. } if *status == s))
        {
            MigrationEvent::Status { error, .. } => error,
            _ => unreachable!(),
        }
    }

    fn wait_serial(&mut self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !String::from_utf8_lossy(&self.out).contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.serial.recv_timeout(left) {
                Ok(b) => self.out.push(b),
                Err(_) => panic!(
                    "no {text:?} on the serial port; got {:?}",
                    String::from_utf8_lossy(&self.out)
                ),
            }
        }
    }

    /// What the serial port printed so far.
    fn output(&mut self) -> String {
        while let Ok(b) = self.serial.try_recv() {
            self.out.push(b);
        }
        String::from_utf8_lossy(&self.out).into_owned()
    }

    fn ram(&self) -> Vec<u8> {
        let mut v = vec![0u8; RAM as usize];
        self.ram.read_exact_at(&mut v, 0).unwrap();
        v
    }
}

/// Both sides report `completed`, without an error.
fn both_complete(src: &mut Side, dst: &mut Side) {
    assert_eq!(src.wait_status(MigrationStatus::Completed), None);
    assert_eq!(dst.wait_status(MigrationStatus::Completed), None);
}

/// The broker's part whatever happens: switchover when asked; returns
/// how the migration ended.
fn until_the_end(src: &mut Side) -> (MigrationStatus, Option<String>) {
    loop {
        match src.wait_event(|e| {
            matches!(e, MigrationEvent::ReadyForSwitchover)
                || matches!(e, MigrationEvent::Status { status, .. } if progress::is_final(*status))
        }) {
            MigrationEvent::ReadyForSwitchover => {
                src.serve(MigrationRequest::Switchover, Vec::new())
                    .expect("switchover");
            }
            MigrationEvent::Status { status, error } => return (status, error),
            MigrationEvent::Pass { .. } => unreachable!(),
        }
    }
}

#[test]
fn a_running_timer_guest_migrates_and_finishes_on_the_target_without_rebooting() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("test guest: timer");
    // The guest runs during the migration's passes with KVM's dirty log
    // on, inside a window the test controls (wall-clock pacing is
    // useless on a loaded 2-core host): it waits out pass 1 paused (a
    // downtime limit of 0 waits for a clean pass), 500 pages a backend
    // wrote (marked in the log before the start, so pass 1's sync finds
    // them however fast pass 1 is) make pass 2 last ~1 s at 2 MiB/s, the
    // guest runs from the start of pass 2 until it has started its timer
    // test, is paused there, and the raised limits let the migration
    // converge.
    lock(&src.c).handle(Input::Stop).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    dst.incoming(b);
    let (log, backend) = log_fd();
    scribble(&src, &backend, 1024, 500, 0x77);
    src.start(a, log, params(0, 2 << 20));
    src.wait_event(|e| *e == MigrationEvent::Pass { count: 2 });
    lock(&src.c).handle(Input::Cont).unwrap();
    src.wait_serial("lapic timer: periodic");
    lock(&src.c).handle(Input::Stop).unwrap();
    src.serve(MigrationRequest::SetParams(params(300, 0)), Vec::new())
        .unwrap();
    src.wait_event(|e| *e == MigrationEvent::ReadyForSwitchover);
    assert_eq!(src.run_state(), RunState::FinishMigrate);
    assert_eq!(src.stats().status, MigrationStatus::Device);
    src.serve(MigrationRequest::Switchover, Vec::new())
        .expect("switchover");
    both_complete(&mut src, &mut dst);
    assert_eq!(src.run_state(), RunState::Postmigrate);
    // Loaded, not running: `prelaunch` here (an `inmigrate` VM would
    // follow QEMU's autostart); the broker's `cont` resumes it.
    assert!(!lock(&dst.c).status().running);
    let before = src.output();
    assert!(
        !before.contains("VERDICT"),
        "finished on the source: {before:?} {:?} {:?}",
        src.seen_events,
        src.stats()
    );
    let stopped = src
        .seen_events
        .iter()
        .filter(|e| **e == VcpuEvent::Stopped)
        .count();
    assert_eq!(stopped, 2, "stopped by the test twice");

    let s = src.stats();
    assert_eq!(s.status, MigrationStatus::Completed);
    assert!(s.ram.dirty_sync_count >= 2, "{s:?}");
    assert!(s.ram.duplicate > 0 && s.ram.normal > 0, "{s:?}");
    assert_eq!(s.ram.total, RAM);
    assert!(s.downtime_ms.is_some() && s.total_time_ms >= s.setup_time_ms);
    assert!(s.ram.mbps > 0.0, "{s:?}");
    // QEMU's split: the bytes sent while the guest ran (the 500 pages
    // twice), the RAM bytes sent while it was stopped (at least the end
    // of RAM); the device state is in neither.
    assert!(s.ram.precopy_bytes >= 2 * 500 * 4096, "{s:?}");
    assert!(s.ram.downtime_bytes >= 1, "{s:?}");
    assert!(
        s.ram.precopy_bytes + s.ram.downtime_bytes < s.ram.transferred,
        "{s:?}"
    );
    // Pass 2 lasted windows of 100 ms.
    assert!(s.ram.pages_per_second > 0, "{s:?}");
    let d = dst.stats();
    assert_eq!(d.status, MigrationStatus::Completed);
    assert_eq!(
        d.ram.transferred, s.ram.transferred,
        "every byte sent was read"
    );

    lock(&dst.c).handle(Input::Cont).unwrap();
    dst.wait_serial("VERDICT: PASS timer");
    let out = dst.output();
    assert!(
        !out.contains("Bulkhead test guest"),
        "the target booted: {out:?}"
    );
}

/// Writes a recognisable pattern into `pages` pages from `first` of the
/// source's RAM, as a backend would, and logs them.
fn scribble(src: &Side, log: &VhostLog, first: u64, pages: u64, tag: u8) {
    for p in first..first + pages {
        let mut page = [tag; 4096];
        page[..8].copy_from_slice(&p.to_le_bytes());
        src.ram.write_all_at(&page, p * 4096).unwrap();
        log.mark(p);
    }
}

#[test]
fn pages_written_during_the_migration_arrive_byte_for_byte() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("timer");
    let (a, b) = UnixStream::pair().unwrap();
    dst.incoming(b);
    let (log, backend) = log_fd();
    // Slow enough that the scribbles below keep it from converging for
    // a few passes: 4 MiB high in RAM (away from the guest), a new
    // pattern every pass, the first marked in the log before the start
    // (pass 1, mostly holes, may be over before this thread wakes up).
    scribble(&src, &backend, 8192, 1024, 1);
    src.start(a, log, params(50, 16 << 20));
    for pass in 2..=4u64 {
        src.wait_event(|e| *e == MigrationEvent::Pass { count: pass });
        scribble(&src, &backend, 8192, 1024, pass as u8);
    }
    src.wait_event(|e| *e == MigrationEvent::ReadyForSwitchover);
    // A backend's last writes, while the broker flushes the disks.
    scribble(&src, &backend, 12000, 16, 0xee);
    src.serve(MigrationRequest::Switchover, Vec::new())
        .expect("switchover");
    assert_eq!(src.wait_status(MigrationStatus::Completed), None);
    assert_eq!(dst.wait_status(MigrationStatus::Completed), None);
    assert!(src.stats().ram.dirty_sync_count >= 5);
    // The running VM was stopped by the migration and stays stopped.
    assert!(src.seen_events.contains(&VcpuEvent::Stopped));
    assert_eq!(src.run_state(), RunState::Postmigrate);
    // The source is stopped (postmigrate), so its RAM is final.
    let (s, d) = (src.ram(), dst.ram());
    let differ = s.chunks(4096).zip(d.chunks(4096)).position(|(x, y)| x != y);
    assert_eq!(differ, None, "first differing page");
    assert_eq!(&d[12000 * 4096 + 8..12000 * 4096 + 16], &[0xee; 8]);
}

#[test]
fn a_cancelled_migration_leaves_the_source_running_without_dirty_logging() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("lapic timer: periodic");
    let (a, b) = UnixStream::pair().unwrap();
    dst.incoming(b);
    let (log, _) = log_fd();
    src.start(a, log, params(300, 1 << 20));
    src.wait_event(|e| *e == MigrationEvent::Pass { count: 1 });
    let (again, _) = UnixStream::pair().unwrap();
    let (log2, _) = log_fd();
    let err = src
        .serve(
            MigrationRequest::Start {
                fd: FdSlot(0),
                log: FdSlot(1),
                params: params(300, 0),
            },
            vec![again.into(), log2],
        )
        .unwrap_err();
    assert_eq!(err.desc, IN_PROGRESS);
    src.serve(MigrationRequest::Cancel, Vec::new()).unwrap();
    src.wait_status(MigrationStatus::Cancelling);
    src.wait_status(MigrationStatus::Cancelled);
    assert_eq!(src.stats().status, MigrationStatus::Cancelled);
    assert_eq!(src.run_state(), RunState::Running);
    // KVM refuses the dirty log of a slot that does not log any more.
    assert!(lock(&src.c).vm().fd.get_dirty_log(0, RAM as usize).is_err());
    assert!(dst.wait_status(MigrationStatus::Failed).is_some());
    src.wait_serial("VERDICT: PASS timer");
    // Nothing runs now: cancel and set-parameters are no-ops, a
    // switchover has nothing to switch.
    src.serve(MigrationRequest::Cancel, Vec::new()).unwrap();
    src.serve(MigrationRequest::SetParams(params(1, 1)), Vec::new())
        .unwrap();
    assert!(src.serve(MigrationRequest::Switchover, Vec::new()).is_err());
}

#[test]
fn a_target_that_hangs_up_fails_the_migration_and_the_source_runs_on() {
    let mut src = side("timer", true);
    src.wait_serial("lapic timer: periodic");
    let (a, mut b) = UnixStream::pair().unwrap();
    let (log, _) = log_fd();
    src.start(a, log, params(300, 0));
    let mut head = [0u8; 4096];
    std::io::Read::read_exact(&mut b, &mut head).unwrap();
    drop(b);
    let (status, error) = until_the_end(&mut src);
    assert_eq!(status, MigrationStatus::Failed);
    let error = error.expect("an error");
    assert!(
        error.starts_with("migration stream I/O failed")
            || error == "the target closed the connection before loading the VM",
        "{error}"
    );
    assert_eq!(src.stats().error.as_deref(), Some(error.as_str()));
    assert_eq!(src.run_state(), RunState::Running);
    src.wait_serial("VERDICT: PASS timer");
}

/// Copies `from` to `to`, replacing byte `at` with `with`.
fn corrupting_proxy(mut from: UnixStream, mut to: UnixStream, at: usize, with: u8) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = 0usize;
        loop {
            let n = match std::io::Read::read(&mut from, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if (pos..pos + n).contains(&at) {
                buf[at - pos] = with;
            }
            pos += n;
            if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                return;
            }
        }
    });
}

#[test]
fn a_corrupt_stream_fails_the_target_and_the_source_runs_on() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("lapic timer: periodic");
    let (a, a2) = UnixStream::pair().unwrap();
    let (b2, b) = UnixStream::pair().unwrap();
    // Header (24 + 16) and the pass record (9): byte 49 is the first
    // page record's kind.
    corrupting_proxy(a2, b2, 49, 0xee);
    dst.incoming(b);
    let (log, _) = log_fd();
    src.start(a, log, params(300, 0));
    let error = dst.wait_status(MigrationStatus::Failed).expect("an error");
    assert_eq!(error, "unknown migration stream record 238 at byte 49");
    assert_eq!(dst.run_state(), RunState::Prelaunch);
    let (status, error) = until_the_end(&mut src);
    assert_eq!(status, MigrationStatus::Failed, "{error:?}");
    assert_eq!(src.run_state(), RunState::Running);
    src.wait_serial("VERDICT: PASS timer");
}

/// A stream by hand: `records` after a header of `layout`.
fn handmade(layout: &ipc_proto::migstream::Layout, records: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut w = ipc_proto::migstream::StreamWriter::start(
        Vec::new(),
        &ipc_proto::migstream::Header {
            flags: 0,
            layout: layout.clone(),
        },
    )
    .unwrap();
    let mut v = std::mem::take(w.get_mut());
    records(&mut v);
    v
}

fn feed(bytes: Vec<u8>) -> (Side, Option<String>) {
    let mut dst = side("timer", false);
    let (a, b) = UnixStream::pair().unwrap();
    dst.incoming(b);
    std::thread::spawn(move || {
        let mut a = a;
        let _ = std::io::Write::write_all(&mut a, &bytes);
    });
    let e = dst.wait_status(MigrationStatus::Failed);
    (dst, e)
}

#[test]
fn a_stream_of_another_ram_layout_is_refused_by_the_target() {
    let mut other = dirty::layout(&lock(&side("timer", false).c).vm().mem);
    other.regions[0].len *= 2;
    let (dst, e) = feed(handmade(&other, |_| {}));
    assert_eq!(
        e.as_deref(),
        Some(
            "the source's guest RAM (page size 4096: 0x0+0x8000000) does not match \
             this VM's (page size 4096: 0x0+0x4000000)"
        )
    );
    assert_eq!(dst.stats().status, MigrationStatus::Failed);
}

#[test]
fn a_page_outside_guest_ram_and_a_bad_state_are_refused_by_the_target() {
    let ours = dirty::layout(&lock(&side("timer", false).c).vm().mem);
    let (_, e) = feed(handmade(&ours, |v| {
        v.push(2); // pages
        v.extend(RAM.to_le_bytes());
        v.extend(1u32.to_le_bytes());
    }));
    assert_eq!(
        e.as_deref(),
        Some(
            "migration stream pages 0x4000000+1 are not aligned pages of one guest RAM region \
             (at byte 40)"
        )
    );
    // A run that starts inside RAM and ends past it.
    let (_, e) = feed(handmade(&ours, |v| {
        v.push(1); // zero pages
        v.extend((RAM - 4096).to_le_bytes());
        v.extend(2u32.to_le_bytes());
    }));
    assert_eq!(
        e.as_deref(),
        Some(
            "migration stream pages 0x3fff000+2 are not aligned pages of one guest RAM region \
             (at byte 40)"
        )
    );
    let (dst, e) = feed(handmade(&ours, |v| {
        v.extend([5, 6]); // end of RAM, device state
        v.extend(4u64.to_le_bytes());
        v.extend(b"junk");
        v.push(7);
    }));
    let e = e.unwrap();
    assert!(e.starts_with("cannot load the VM state: "), "{e}");
    assert_eq!(dst.run_state(), RunState::Prelaunch, "nothing loaded");
    let (_, e) = feed(handmade(&ours, |v| v.extend([5, 6, 1])));
    assert_eq!(
        e.as_deref(),
        Some("the migration stream ended inside a device state length (at byte 42)")
    );
}

#[test]
fn an_incoming_migration_into_a_vm_that_ran_is_refused() {
    let src = side("timer", true);
    let (_a, b) = UnixStream::pair().unwrap();
    let err = src
        .serve(MigrationRequest::Incoming { fd: FdSlot(0) }, vec![b.into()])
        .unwrap_err();
    assert_eq!(
        err.desc,
        "an incoming migration needs a VM that has not run (this one is running)"
    );
    assert_eq!(src.stats().status, MigrationStatus::None);
}

#[test]
fn a_migration_asking_for_xbzrle_with_a_cache_below_a_page_is_refused_before_it_starts() {
    let src = side("timer", true);
    let (a, _b) = UnixStream::pair().unwrap();
    let (log, _) = log_fd();
    let mut p = params(300, 0);
    p.xbzrle = true;
    p.xbzrle_cache_size = 100;
    let err = src
        .serve(
            MigrationRequest::Start {
                fd: FdSlot(0),
                log: FdSlot(1),
                params: p,
            },
            vec![a.into(), log],
        )
        .unwrap_err();
    assert_eq!(
        err.desc,
        "migration: cannot set up XBZRLE: XBZRLE cache of 100 bytes is smaller than a page (4096)"
    );
    assert_eq!(src.stats().status, MigrationStatus::None);
    assert_eq!(src.run_state(), RunState::Running);
}

#[test]
fn a_paused_vm_migrated_into_a_file_loads_from_it_into_a_fresh_vm() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("test guest: timer");
    lock(&src.c).handle(Input::Stop).unwrap();
    let path = std::env::temp_dir().join(format!("bulkhead-migstream-{}", std::process::id()));
    let out = File::create(&path).unwrap();
    let (log, _) = log_fd();
    src.serve(
        MigrationRequest::Start {
            fd: FdSlot(0),
            log: FdSlot(1),
            params: params(300, 0),
        },
        vec![out.into(), log],
    )
    .unwrap();
    // No way back from a file: no acknowledgement is waited for.
    let (status, error) = until_the_end(&mut src);
    assert_eq!((status, error), (MigrationStatus::Completed, None));
    // Paused before, so no STOP from the migration; postmigrate after.
    assert_eq!(src.run_state(), RunState::Postmigrate);

    let file = File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        src.stats().ram.transferred,
        "the file holds the whole stream"
    );
    dst.serve(
        MigrationRequest::Incoming { fd: FdSlot(0) },
        vec![file.into()],
    )
    .unwrap();
    assert_eq!(dst.wait_status(MigrationStatus::Completed), None);
    assert_eq!(src.ram(), dst.ram());
    lock(&dst.c).handle(Input::Cont).unwrap();
    dst.wait_serial("VERDICT: PASS timer");
    assert!(!dst.output().contains("Bulkhead test guest"));
}

#[test]
fn a_cancel_while_waiting_for_the_switchover_resumes_the_source() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("test guest: timer");
    let (a, b) = UnixStream::pair().unwrap();
    dst.incoming(b);
    let (log, _) = log_fd();
    src.start(a, log, params(300, 0));
    src.wait_event(|e| *e == MigrationEvent::ReadyForSwitchover);
    assert_eq!(src.run_state(), RunState::FinishMigrate);
    // The broker's disks failed to flush, say: it cancels.
    src.serve(MigrationRequest::Cancel, Vec::new()).unwrap();
    assert_eq!(src.wait_status(MigrationStatus::Cancelled), None);
    assert_eq!(src.run_state(), RunState::Running);
    // The controller emitted RESUME under the lock `run_state` waited for.
    src.seen_events.extend(src.events.try_iter());
    assert!(src.seen_events.contains(&VcpuEvent::Resumed));
    assert!(src.serve(MigrationRequest::Switchover, Vec::new()).is_err());
    assert!(dst.wait_status(MigrationStatus::Failed).is_some());
    src.wait_serial("VERDICT: PASS timer");
}

#[test]
fn a_migration_over_tcp_is_acknowledged_and_completes() {
    let mut src = side("timer", true);
    let mut dst = side("timer", false);
    src.wait_serial("test guest: timer");
    lock(&src.c).handle(Input::Stop).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    dst.serve(MigrationRequest::Incoming { fd: FdSlot(0) }, vec![b.into()])
        .unwrap();
    let (log, _) = log_fd();
    src.serve(
        MigrationRequest::Start {
            fd: FdSlot(0),
            log: FdSlot(1),
            params: params(300, 0),
        },
        vec![a.into(), log],
    )
    .unwrap();
    assert_eq!(until_the_end(&mut src), (MigrationStatus::Completed, None));
    assert_eq!(dst.wait_status(MigrationStatus::Completed), None);
    assert_eq!(src.ram(), dst.ram());
    lock(&dst.c).handle(Input::Cont).unwrap();
    dst.wait_serial("VERDICT: PASS timer");
}

#[path = "xbzrle/live_tests.rs"]
mod xbzrle_live;
