//! The snapshot table and transaction against qemu-img: what qemu-img
//! writes is read, what this writes qemu-img reads, checks clean and
//! restores; a kill at any step leaves an image qemu-img check accepts.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::commit::{self, Header};
use super::table::Snapshot;
use super::{Result, SnapshotError};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bulkhead-snapint-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn qemu_io(img: &Path, cmd: &str) {
    let (rc, out) = run(
        "qemu-io",
        &["-f", "qcow2", "-c", cmd, img.to_str().unwrap()],
    );
    assert_eq!(rc, 0, "{out}");
}

/// qemu-img check's exit code (0 clean, 3 leaks only, 2 corrupt).
fn check(img: &Path) -> (i32, String) {
    run("qemu-img", &["check", img.to_str().unwrap()])
}

/// An image with a pattern written over two L2 tables' worth of guest
/// space (small clusters), one compressed cluster and a zeroed range.
fn image(d: &Path) -> PathBuf {
    let img = d.join("a.qcow2");
    let (rc, out) = run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            img.to_str().unwrap(),
            "8M",
        ],
    );
    assert_eq!(rc, 0, "{out}");
    qemu_io(&img, "write -P 0x11 0 3M");
    qemu_io(&img, "write -P 0x22 6M 64k");
    qemu_io(&img, "write -z 1M 64k");
    qemu_io(&img, "write -c -P 0x33 7M 4k");
    img
}

fn open(img: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(img).unwrap()
}

fn snapshot(name: &str) -> Snapshot {
    Snapshot {
        l1_offset: 0,
        l1_size: 0,
        id: String::new(),
        name: name.into(),
        date_sec: 1_700_000_000,
        date_nsec: 0,
        vm_clock_nsec: 1_500_000_000,
        vm_state_size: 0,
        disk_size: None,
        icount: Some(u64::MAX),
        extra_rest: Vec::new(),
    }
}

fn no_hook(_: &'static str) -> Result<()> {
    Ok(())
}

fn table(img: &Path) -> Vec<Snapshot> {
    let f = open(img);
    commit::read_table(&f, &Header::read(&f).unwrap())
        .unwrap()
        .0
}

fn read(img: &Path, off: &str, len: &str, pattern: u8) -> bool {
    let cmd = format!("read -P {pattern:#x} {off} {len}");
    let (rc, out) = run(
        "qemu-io",
        &["-f", "qcow2", "-c", &cmd, img.to_str().unwrap()],
    );
    rc == 0 && !out.contains("Pattern verification failed")
}

#[test]
fn table_qemu_img_wrote_is_read() {
    let d = dir("read");
    let img = image(&d);
    for n in ["first", "second one"] {
        assert_eq!(
            run("qemu-img", &["snapshot", "-c", n, img.to_str().unwrap()]).0,
            0
        );
    }
    let t = table(&img);
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].id.as_str(), t[0].name.as_str()), ("1", "first"));
    assert_eq!((t[1].id.as_str(), t[1].name.as_str()), ("2", "second one"));
    assert_eq!(t[0].disk_size, Some(8 << 20));
    assert_eq!(t[0].info().icount, Some(0));
}

#[test]
fn created_snapshot_is_listed_clean_and_restores_its_content() {
    let d = dir("create");
    let img = image(&d);
    assert_eq!(
        run(
            "qemu-img",
            &["snapshot", "-c", "old", img.to_str().unwrap()]
        )
        .0,
        0
    );
    let sn = commit::create(&open(&img), snapshot("mine"), &mut no_hook).unwrap();
    assert_eq!(sn.id, "2");
    let (_, list) = run("qemu-img", &["snapshot", "-l", img.to_str().unwrap()]);
    assert!(list.contains("mine"), "{list}");
    let (rc, out) = check(&img);
    assert_eq!(rc, 0, "{out}");
    // QEMU writes after the snapshot (copying shared clusters), then the
    // snapshot brings the old content back.
    qemu_io(&img, "write -P 0x44 0 4M");
    qemu_io(&img, "write -P 0x44 7M 4k");
    assert_eq!(check(&img).0, 0);
    assert_eq!(
        run(
            "qemu-img",
            &["snapshot", "-a", "mine", img.to_str().unwrap()]
        )
        .0,
        0
    );
    assert!(read(&img, "0", "1M", 0x11));
    assert!(read(&img, "1M", "64k", 0));
    assert!(read(&img, "6M", "64k", 0x22));
    assert!(read(&img, "7M", "4k", 0x33));
    assert_eq!(check(&img).0, 0);
}

#[test]
fn deleted_snapshot_leaves_no_leak_and_the_active_image_intact() {
    let d = dir("delete");
    let img = image(&d);
    commit::create(&open(&img), snapshot("a"), &mut no_hook).unwrap();
    qemu_io(&img, "write -P 0x55 0 512k");
    commit::create(&open(&img), snapshot("b"), &mut no_hook).unwrap();
    let gone = commit::delete(&open(&img), 0, &mut no_hook).unwrap();
    assert_eq!(gone.name, "a");
    let (rc, out) = check(&img);
    assert_eq!(rc, 0, "{out}");
    assert!(read(&img, "0", "512k", 0x55));
    assert!(read(&img, "512k", "512k", 0x11));
    commit::delete(&open(&img), 0, &mut no_hook).unwrap();
    assert!(table(&img).is_empty());
    let (rc, out) = check(&img);
    assert_eq!(rc, 0, "{out}");
    // Every cluster is writable in place again (COPIED restored).
    assert!(!out.contains("OFLAG_COPIED"));
}

/// The steps of a transaction where a kill is simulated.
const STEPS: [&str; 5] = [
    "allocated",
    "tables written",
    "refcounts written",
    "switched",
    "freeing",
];

#[test]
fn a_kill_at_any_step_of_create_or_delete_leaves_no_corruption() {
    let d = dir("kill");
    let base = image(&d);
    commit::create(&open(&base), snapshot("keep"), &mut no_hook).unwrap();
    qemu_io(&base, "write -P 0x66 0 1M");
    for (k, step) in STEPS.iter().enumerate() {
        for delete in [false, true] {
            let img = d.join(format!("k{k}{delete}.qcow2"));
            std::fs::copy(&base, &img).unwrap();
            let mut hook = |s: &'static str| -> Result<()> {
                if s == *step {
                    Err(SnapshotError::Failed("killed".into()))
                } else {
                    Ok(())
                }
            };
            let r = if delete {
                commit::delete(&open(&img), 0, &mut hook).map(|_| ())
            } else {
                commit::create(&open(&img), snapshot("new"), &mut hook).map(|_| ())
            };
            assert!(r.is_err(), "{step}");
            let (rc, out) = check(&img);
            assert!(
                rc == 0 || rc == 3,
                "kill at '{step}' (delete {delete}): {out}"
            );
            let names: Vec<String> = table(&img).into_iter().map(|s| s.name).collect();
            let switched = k >= 3;
            let want: &[&str] = match (delete, switched) {
                (false, false) | (true, false) => &["keep"],
                (false, true) => &["keep", "new"],
                (true, true) => &[],
            };
            assert_eq!(names, want, "{step} delete {delete}");
            assert!(read(&img, "0", "1M", 0x66));
            assert!(read(&img, "1M", "64k", 0));
        }
    }
}

#[test]
fn refcounts_too_narrow_for_a_snapshot_fail_as_qemu_and_leave_the_image_as_it_was() {
    let d = dir("narrow");
    let img = d.join("n.qcow2");
    let (rc, out) = run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=1",
            img.to_str().unwrap(),
            "4M",
        ],
    );
    assert_eq!(rc, 0, "{out}");
    qemu_io(&img, "write -P 0x11 0 1M");
    let e = commit::create(&open(&img), snapshot("s"), &mut no_hook).unwrap_err();
    assert_eq!(e.to_string(), "Invalid argument");
    assert!(table(&img).is_empty());
    let (rc, out) = check(&img);
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn a_snapshot_entry_claiming_a_huge_l1_table_is_refused_not_allocated() {
    let d = dir("huge");
    let img = image(&d);
    commit::create(&open(&img), snapshot("s"), &mut no_hook).unwrap();
    let f = open(&img);
    let h = Header::read(&f).unwrap();
    // l1_size of the first entry: u32::MAX entries (32 GiB).
    crate::block::qcow2_repair::write_span(&f, h.snapshots_offset + 8, &u32::MAX.to_be_bytes())
        .unwrap();
    let e = commit::delete(&f, 0, &mut no_hook).unwrap_err();
    assert!(matches!(e, SnapshotError::Corrupt(_)), "{e}");
    assert_eq!(table(&img).len(), 1);
}

/// Damaged metadata (random bytes in the header, the refcount and L1
/// tables and the snapshot table) gives errors, never a panic.
#[test]
fn damaged_metadata_never_panics() {
    let d = dir("damaged");
    let base = image(&d);
    commit::create(&open(&base), snapshot("a"), &mut no_hook).unwrap();
    let clean = std::fs::read(&base).unwrap();
    let h = Header::read(&open(&base)).unwrap();
    let img = d.join("damaged.qcow2");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..150 {
        let mut bytes = clean.clone();
        for _ in 0..1 + next() % 8 {
            let region = if next() % 2 == 0 {
                0..64 * 1024
            } else {
                let t = h.snapshots_offset as usize;
                t..t + 512
            };
            let at = region.start + (next() as usize) % (region.end - region.start);
            if let Some(b) = bytes.get_mut(at) {
                *b = next() as u8;
            }
        }
        std::fs::write(&img, &bytes).unwrap();
        let f = open(&img);
        if let Ok(h) = Header::read(&f) {
            let _ = commit::read_table(&f, &h);
        }
        let _ = commit::create(&f, snapshot("b"), &mut no_hook);
        let _ = commit::delete(&f, 0, &mut no_hook);
    }
}
