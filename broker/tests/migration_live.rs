//! Live migration end to end: two brokers as processes, real QMP clients,
//! the `timer` guest moved mid-run over `unix:`, `tcp:127.0.0.1` and
//! `fd:`; a peer that stalls (`migrate_cancel`) or hangs up (a target
//! killed mid-way, deterministically) leaves the source running. Needs
//! /dev/kvm.

mod common;
mod disk_common;

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::locks::held;
use common::migration::{serial_log, start_vm, status, wait_migration, wait_status, Guest};
use common::{Bulkhead, Qmp, TempDir, TIMEOUT};
use disk_common::SerialLog;
use serde_json::{json, Value};

/// A broker running the `timer` guest with 64 MiB, its serial output in
/// `dir/NAME.log`.
fn timer_vm(dir: &Path, name: &str, extra: &[&str]) -> (Bulkhead, SerialLog) {
    let b = start_vm(dir, name, Guest::Timer, extra);
    (b, SerialLog(serial_log(dir, name)))
}

/// `-object`/`-machine` for 64 MiB of RAM in a file of `dir` whose upper
/// half (above the `timer` guest) holds data: 32 MiB of stream, more than
/// the socket's buffers, so a peer that stalls keeps the migration in its
/// first pass (zero pages cost a few bytes per run of them).
fn busy_ram(dir: &Path) -> [String; 4] {
    use std::os::unix::fs::FileExt;
    let path = dir.join("ram");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&vec![0x5a; 32 << 20], 32 << 20).unwrap();
    [
        "-object".into(),
        format!(
            "memory-backend-file,id=ram,size=64M,mem-path={},share=on",
            path.display()
        ),
        "-machine".into(),
        "microvm,memory-backend=ram".into(),
    ]
}

/// A stopped (`-S`) `timer` guest over [`busy_ram`].
fn busy_timer_vm(dir: &Path) -> (Bulkhead, SerialLog) {
    let ram = busy_ram(dir);
    let mut extra = vec!["-S"];
    extra.extend(ram.iter().map(String::as_str));
    timer_vm(dir, "src", &extra)
}

/// Moves a `timer` guest stopped mid-run from a source to a target
/// listening at `incoming` (reached at `uri`), then checks it finishes on
/// the target without booting again and the source ends in postmigrate.
fn migrate_timer_guest(incoming: &str, uri: impl Fn(&mut Qmp) -> String) {
    let dir = TempDir::new();
    let (src, src_log) = timer_vm(&dir.0, "src", &[]);
    // -S: the target stays paused after the migration (QEMU's autostart
    // off), and its guest never runs before it.
    let (dst, dst_log) = timer_vm(&dir.0, "dst", &["-incoming", incoming, "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    src_log.wait_for("lapic timer: periodic");
    // Stopped mid-run: it must finish on the target, not here.
    s.ok("stop");
    let uri = uri(&mut d);
    assert_eq!(
        s.execute("migrate", json!({"uri": uri})),
        json!({"return": {}})
    );
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(status(&mut s), "postmigrate");
    assert_eq!(info["ram"]["total"], 64 << 20);
    assert!(info["ram"]["duplicate"].as_u64().unwrap() > 0, "{info}");
    assert!(info["ram"]["normal"].as_u64().unwrap() > 0, "{info}");
    assert!(
        info["downtime"].is_u64() && info["total-time"].is_u64(),
        "{info}"
    );
    assert!(info.get("expected-downtime").is_none(), "{info}");
    // What went out before the switchover (pass 1 at least) and the RAM
    // sent in the downtime (at least the end of RAM) hold every page sent
    // whole; the device state is in neither.
    let ram = &info["ram"];
    let n = |k: &str| ram[k].as_u64().unwrap_or_else(|| panic!("{k}: {info}"));
    assert!(n("precopy-bytes") > 0 && n("downtime-bytes") >= 1, "{info}");
    assert!(
        n("precopy-bytes") + n("downtime-bytes") > n("normal-bytes"),
        "{info}"
    );
    assert!(
        n("precopy-bytes") + n("downtime-bytes") < n("transferred"),
        "{info}"
    );
    assert!(ram["pages-per-second"].is_u64(), "{info}");
    assert_eq!(n("postcopy-bytes"), 0, "{info}");
    let di = wait_migration(&mut d, &["completed"]);
    assert_eq!(di, json!({"status": "completed"}));
    wait_status(&mut d, "paused");
    d.ok("cont");
    dst_log.wait_for("VERDICT: PASS timer");
    let out = dst_log.text();
    assert!(
        !out.contains("Bulkhead test guest"),
        "the target booted: {out}"
    );
    assert!(!src_log.has("VERDICT"), "{}", src_log.text());
    // A second migrate from postmigrate is QEMU's error.
    let again = s.execute("migrate", json!({"uri": "unix:/nowhere"}));
    assert_eq!(
        Qmp::error_of(&again).1,
        "Can't migrate the vm that was paused due to previous migration"
    );
}

#[test]
fn a_timer_guest_moves_over_unix_and_finishes_on_the_target() {
    let dir = TempDir::new();
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    migrate_timer_guest(&incoming, |_| incoming.clone());
}

#[test]
fn a_timer_guest_moves_over_tcp_and_finishes_on_the_target() {
    migrate_timer_guest("tcp:127.0.0.1:0", |d| {
        let r = d.ok("query-migrate");
        let port = r["socket-address"][0]["port"].as_str().unwrap().to_owned();
        format!("tcp:127.0.0.1:{port}")
    });
}

#[test]
fn a_paused_timer_guest_moves_over_getfd_fds_and_stays_paused_despite_cont_during_the_migration() {
    let dir = TempDir::new();
    let (src, src_log) = timer_vm(&dir.0, "src", &["-S"]);
    let (dst, dst_log) = timer_vm(&dir.0, "dst", &["-incoming", "defer", "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    let (a, b) = UnixStream::pair().unwrap();
    let r = d.execute_with_fds("getfd", json!({"fdname": "in"}), &[b.as_fd()]);
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(
        d.execute("migrate-incoming", json!({"uri": "fd:in"})),
        json!({"return": {}})
    );
    // `cont` while the incoming migration runs sets QEMU's autostart,
    // which a paused source's run state overrides (below).
    assert_eq!(d.execute("cont", Value::Null), json!({"return": {}}));
    assert_ne!(status(&mut d), "running");
    let r = s.execute_with_fds("getfd", json!({"fdname": "out"}), &[a.as_fd()]);
    assert_eq!(r["return"], json!({}), "{r}");
    drop((a, b));
    // The guest runs, then is stopped mid-run and moved: `timer` ends
    // within a fraction of a second, so a migration racing it would be a
    // flaky test (the `dirty` guest is the one for live dirtying).
    s.ok("cont");
    src_log.wait_for("lapic timer: periodic");
    s.ok("stop");
    assert_eq!(
        s.execute("migrate", json!({"uri": "fd:out"})),
        json!({"return": {}})
    );
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    // QEMU 10 (two microvm instances, the same steps): a paused source's
    // target takes its run state and stays paused despite the `cont`
    // during the migration; a `cont` now runs it.
    wait_migration(&mut d, &["completed"]);
    wait_status(&mut d, "paused");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut d), "paused");
    assert!(!dst_log.has("VERDICT"), "{}", dst_log.text());
    d.ok("cont");
    assert_eq!(status(&mut d), "running");
    dst_log.wait_for("VERDICT: PASS timer");
    assert!(!dst_log.text().contains("Bulkhead test guest"));
    assert!(!src_log.has("VERDICT"), "{}", src_log.text());
}

/// A peer that accepts the stream and reads `limit` bytes of it, then
/// stalls (holds the connection without reading) until `hang_up` is sent.
fn stalling_peer(path: &Path, limit: usize) -> std::sync::mpsc::Sender<()> {
    let l = UnixListener::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while rx.try_recv().is_err() && Instant::now() < deadline {
            if read < limit {
                let want = (limit - read).min(buf.len());
                if let Ok(n) = c.read(&mut buf[..want]) {
                    read += n;
                }
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(c);
    });
    tx
}

#[test]
fn migrate_cancel_mid_way_leaves_the_source_running() {
    let dir = TempDir::new();
    let (src, src_log) = busy_timer_vm(&dir.0);
    let mut s = src.client();
    let path = dir.0.join("stall.sock");
    let _peer = stalling_peer(&path, 64 << 10);
    let uri = format!("unix:{}", path.display());
    assert_eq!(
        s.execute("migrate", json!({"uri": uri})),
        json!({"return": {}})
    );
    let info = wait_migration(&mut s, &["active"]);
    assert!(info["ram"]["transferred"].is_u64(), "{info}");
    assert!(info["expected-downtime"].is_u64(), "{info}");
    // Still pre-copying: every byte so far went out while the guest could
    // run, none in a downtime.
    assert_eq!(info["ram"]["downtime-bytes"], 0, "{info}");
    assert_eq!(
        info["ram"]["precopy-bytes"], info["ram"]["transferred"],
        "{info}"
    );
    // One at a time, as QEMU.
    let again = s.execute("migrate", json!({"uri": uri}));
    assert_eq!(
        Qmp::error_of(&again).1,
        "There's a migration process in progress"
    );
    assert_eq!(
        s.execute("migrate_cancel", Value::Null),
        json!({"return": {}})
    );
    let info = wait_migration(&mut s, &["cancelled", "failed"]);
    assert_eq!(info, json!({"status": "cancelled"}));
    // The guest was never started (-S); it starts now and passes here.
    assert_eq!(status(&mut s), "prelaunch");
    s.ok("cont");
    src_log.wait_for("VERDICT: PASS timer");
}

#[test]
fn a_target_that_hangs_up_mid_way_fails_the_migration_and_the_source_runs_on() {
    let dir = TempDir::new();
    let (src, src_log) = busy_timer_vm(&dir.0);
    let mut s = src.client();
    let path = dir.0.join("stall.sock");
    let hang_up = stalling_peer(&path, 64 << 10);
    let uri = format!("unix:{}", path.display());
    assert_eq!(
        s.execute("migrate", json!({"uri": uri})),
        json!({"return": {}})
    );
    wait_migration(&mut s, &["active"]);
    hang_up.send(()).unwrap();
    let info = wait_migration(&mut s, &["failed", "cancelled", "completed"]);
    assert_eq!(info["status"], "failed", "{info}");
    assert!(info["error-desc"].is_string(), "{info}");
    assert_eq!(status(&mut s), "prelaunch");
    s.ok("cont");
    src_log.wait_for("VERDICT: PASS timer");
}

/// A `blk-loop` guest on shared storage (one raw image, the same path on
/// both sides): its passes go on across the switch, the source's
/// block-proc is SIGKILLed mid-migration (the broker replays it; the
/// disks' state is unchanged), the image lock moves to the target.
#[test]
fn a_blk_loop_guest_on_shared_storage_keeps_verifying_across_the_switch() {
    let dir = TempDir::new();
    let img = disk_common::raw_image(&dir.0);
    let src_log = SerialLog(dir.0.join("src.log"));
    let dst_log = SerialLog(dir.0.join("dst.log"));
    let src = disk_common::start_with_disk(&[], "blk-loop", "raw", &img, &src_log);
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let dst = disk_common::start_with_disk(
        &["-incoming", &incoming, "-S"],
        "blk-loop",
        "raw",
        &img,
        &dst_log,
    );
    let mut s = src.client();
    let mut d = dst.client();
    src_log.wait_passes(2);
    // The source holds the write lock; the waiting target does not
    // collide with it.
    assert!(held(&img, 101));
    assert_eq!(
        s.execute("migrate", json!({"uri": incoming})),
        json!({"return": {}})
    );
    if let Some(pid) = disk_common::block_proc_pid(src.child.as_ref().unwrap().id()) {
        disk_common::sigkill(pid);
    }
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(status(&mut s), "postmigrate");
    wait_status(&mut d, "paused");
    d.ok("cont");
    let at_switch = src_log.passes();
    dst_log.wait_passes(at_switch + 2);
    assert!(!dst_log.has("Bulkhead test guest"), "{}", dst_log.text());
    // The target holds the image now; the source let go at the switch.
    assert!(held(&img, 101));
    drop(dst);
    let start = Instant::now();
    while held(&img, 101) {
        assert!(
            start.elapsed() < TIMEOUT,
            "the source still holds the image"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With the `events` capability both sides report every status change
/// (QEMU's order: setup, active, device, completed on the source; setup,
/// active, completed on the target) and the source each dirty pass.
#[test]
fn migration_events_follow_both_sides_with_the_events_capability() {
    let dir = TempDir::new();
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let (src, _src_log) = timer_vm(&dir.0, "src", &["-S"]);
    let (dst, _dst_log) = timer_vm(&dir.0, "dst", &["-incoming", "defer", "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    let events = json!({"capabilities": [{"capability": "events", "state": true}]});
    for q in [&mut s, &mut d] {
        let r = q.execute("migrate-set-capabilities", events.clone());
        assert_eq!(r, json!({"return": {}}));
    }
    let r = d.execute("migrate-incoming", json!({"uri": incoming}));
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(
        s.execute("migrate", json!({"uri": incoming})),
        json!({"return": {}})
    );
    for status in ["setup", "active", "device", "completed"] {
        let e = s.event("MIGRATION");
        assert_eq!(e["data"]["status"], status);
    }
    assert_eq!(s.event("MIGRATION_PASS")["data"]["pass"], 1);
    for status in ["setup", "active", "completed"] {
        let e = d.event("MIGRATION");
        assert_eq!(e["data"]["status"], status);
    }
}
