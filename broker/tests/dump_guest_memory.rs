//! `dump-guest-memory` end to end: the real broker and vcpu-proc run the
//! `dump` test guest (a known page at guest-physical 0x6000000, known
//! values in R12-R14, halted at a known RIP); the cores are read back with
//! our own ELF reader, `readelf` and `gdb`. Also `fd:` pipes with
//! `detach`, `query-dump` progress, the one-dump-at-a-time rule, SIGKILL
//! of vcpu-proc during a dump, and QEMU 10's errors. Needs /dev/kvm.

mod common;
mod disk_common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{broker_pid, children, Bulkhead, Qmp, TIMEOUT};
use disk_common::start_guest;
use serde_json::{json, Value};

const MARKER_GPA: u64 = 0x0600_0000;
const R12: u64 = 0x1234_5678_9abc_def0;
const R13: u64 = 0x0bad_cafe_dead_beef;
const IN_PROGRESS: &str = "There is a dump in process, please wait.";

/// The marker page the guest writes.
fn marker_page() -> Vec<u8> {
    let banner = b"BULKHEAD DUMP MARKER 0123456789\n";
    (0..4096usize)
        .map(|i| {
            if i < banner.len() {
                banner[i]
            } else {
                (i.wrapping_mul(7).wrapping_add(3) & 0xff) as u8
            }
        })
        .collect()
}

/// A running `dump` guest with `mem` of RAM and `cpus` vCPUs, once it has
/// written its marker and halted; the halt loop's RIP range.
fn boot(mem: &str, cpus: &str) -> (Bulkhead, Qmp, (u64, u64)) {
    let dir = common::TempDir::new();
    let (b, log) = start_guest(&dir.0, "dump", &["-m", mem, "-smp", cpus]);
    std::mem::forget(dir);
    log.wait_for("halted");
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("halt loop at"))
        .unwrap();
    let range = line.split_whitespace().nth(3).unwrap();
    let (a, z) = range.split_once("..").unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let c = b.client();
    (b, c, (hex(a), hex(z)))
}

/// Reads an ELF64 core: the program headers and the notes.
struct Core {
    bytes: Box<dyn Fn(u64, usize) -> Vec<u8>>,
    loads: Vec<Load>,
    notes: Vec<(String, u32, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(d[at..at + 2].try_into().unwrap())
}
fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}
fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

impl Core {
    fn new(bytes: Box<dyn Fn(u64, usize) -> Vec<u8>>) -> Core {
        let h = bytes(0, 64);
        assert_eq!(&h[0..4], b"\x7fELF");
        assert_eq!((h[4], h[5]), (2, 1), "ELF64 little endian");
        assert_eq!(u16_at(&h, 16), 4, "ET_CORE");
        assert_eq!(u16_at(&h, 18), 62, "EM_X86_64");
        let phoff = u64_at(&h, 32);
        let phnum = u16_at(&h, 56) as usize;
        let ph = bytes(phoff, 56 * phnum);
        let mut loads = Vec::new();
        let mut notes = Vec::new();
        for i in 0..phnum {
            let p = &ph[56 * i..56 * (i + 1)];
            let (kind, offset, filesz) = (u32_at(p, 0), u64_at(p, 8), u64_at(p, 32));
            match kind {
                1 => loads.push(Load {
                    offset,
                    vaddr: u64_at(p, 16),
                    paddr: u64_at(p, 24),
                    filesz,
                    memsz: u64_at(p, 40),
                }),
                4 => {
                    let n = bytes(offset, filesz as usize);
                    let mut at = 0;
                    while at < n.len() {
                        let (namesz, descsz) =
                            (u32_at(&n, at) as usize, u32_at(&n, at + 4) as usize);
                        let kind = u32_at(&n, at + 8);
                        let name = String::from_utf8_lossy(&n[at + 12..at + 12 + namesz - 1]);
                        let d = at + 12 + namesz.div_ceil(4) * 4;
                        notes.push((name.into_owned(), kind, n[d..d + descsz].to_vec()));
                        at = d + descsz.div_ceil(4) * 4;
                    }
                }
                other => panic!("unexpected program header type {other}"),
            }
        }
        Core {
            bytes,
            loads,
            notes,
        }
    }

    fn from_file(path: &std::path::Path) -> Core {
        let f = File::open(path).unwrap();
        Core::new(Box::new(move |off, len| {
            let mut v = vec![0; len];
            f.read_exact_at(&mut v, off).unwrap();
            v
        }))
    }

    fn from_bytes(data: Vec<u8>) -> Core {
        Core::new(Box::new(move |off, len| {
            data[off as usize..off as usize + len].to_vec()
        }))
    }

    /// The bytes at guest-physical `gpa` through the PT_LOAD holding it.
    fn phys(&self, gpa: u64, len: usize) -> Vec<u8> {
        let l = self
            .loads
            .iter()
            .find(|l| gpa >= l.paddr && gpa + len as u64 <= l.paddr + l.filesz)
            .unwrap_or_else(|| panic!("no PT_LOAD holds {gpa:#x}: {:?}", self.loads));
        (self.bytes)(l.offset + gpa - l.paddr, len)
    }

    /// NT_PRSTATUS descriptors, in order.
    fn prstatus(&self) -> Vec<&Vec<u8>> {
        self.notes
            .iter()
            .filter(|(n, k, _)| n == "CORE" && *k == 1)
            .map(|(_, _, d)| d)
            .collect()
    }

    /// QEMU notes, in order.
    fn qemu(&self) -> Vec<&Vec<u8>> {
        self.notes
            .iter()
            .filter(|(n, k, _)| n == "QEMU" && *k == 0)
            .map(|(_, _, d)| d)
            .collect()
    }
}

/// user_regs_struct index of a register in NT_PRSTATUS.
fn pr_reg(d: &[u8], index: usize) -> u64 {
    u64_at(d, 112 + 8 * index)
}
const PR_R14: usize = 1;
const PR_R13: usize = 2;
const PR_R12: usize = 3;
const PR_RIP: usize = 16;

/// Checks vCPU 0's registers in both notes against the guest's.
fn check_registers(core: &Core, cpus: usize, rip: (u64, u64)) {
    let pr = core.prstatus();
    let qemu = core.qemu();
    assert_eq!(
        (pr.len(), qemu.len()),
        (cpus, cpus),
        "one note of each per vCPU"
    );
    for (i, d) in pr.iter().enumerate() {
        assert_eq!(d.len(), 336);
        assert_eq!(u32_at(d, 32) as usize, i + 1, "pr_pid is the cpu index + 1");
    }
    let d = pr[0];
    assert_eq!(
        (pr_reg(d, PR_R12), pr_reg(d, PR_R13), pr_reg(d, PR_R14)),
        (R12, R13, MARKER_GPA)
    );
    let r = pr_reg(d, PR_RIP);
    assert!(
        r >= rip.0 && r < rip.1,
        "RIP {r:#x} outside the halt loop {rip:x?}"
    );
    let q = qemu[0];
    assert_eq!(
        (u32_at(q, 0), u32_at(q, 4)),
        (1, 440),
        "QEMUCPUState version 1"
    );
    // rax..r15 then rip: r12 is the 13th register, rip the 17th.
    assert_eq!(u64_at(q, 8 + 12 * 8), R12);
    assert_eq!(u64_at(q, 8 + 16 * 8), r);
    // cr3 (cr[3]) is the guest's page table root, never 0 in long mode.
    let cr = 8 + 18 * 8 + 10 * 24;
    assert_ne!(u64_at(q, cr + 3 * 8), 0);
}

fn dump(c: &mut Qmp, args: Value) -> Value {
    c.execute("dump-guest-memory", args)
}

fn error(c: &mut Qmp, cmd: &str, args: Value) -> String {
    let r = c.execute(cmd, args);
    let (class, desc) = Qmp::error_of(&r);
    assert_eq!(class, "GenericError", "{r}");
    desc
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is missing (scripts/setup installs it): {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dump_of_a_running_guest_holds_its_ram_marker_and_registers_as_readelf_and_gdb_see() {
    let (b, mut c, rip) = boot("256M", "2");
    let dir = &b.dir.0;
    assert_eq!(
        c.ok("query-dump"),
        json!({"status": "none", "completed": 0, "total": 0})
    );
    assert_eq!(
        c.ok("query-dump-guest-memory-capability"),
        json!({"formats": ["elf"]})
    );
    let cpus = c.ok("query-cpus-fast").as_array().unwrap().len();
    assert_eq!(cpus, 2);

    // The whole RAM, physical addresses.
    let full = dir.join("full.core");
    let r = dump(
        &mut c,
        json!({"paging": false, "protocol": format!("file:{}", full.display())}),
    );
    assert_eq!(r, json!({"return": {}}));
    c.event("STOP");
    let done = c.event("DUMP_COMPLETED");
    let ram = 256u64 << 20;
    assert_eq!(
        done["data"],
        json!({"result": {"status": "completed", "completed": ram, "total": ram}})
    );
    c.event("RESUME");
    assert_eq!(
        c.ok("query-status"),
        json!({"status": "running", "running": true})
    );
    assert_eq!(
        c.ok("query-dump"),
        json!({"status": "completed", "completed": ram, "total": ram})
    );
    let core = Core::from_file(&full);
    assert_eq!(
        core.loads,
        vec![Load {
            offset: core.loads[0].offset,
            vaddr: 0,
            paddr: 0,
            filesz: ram,
            memsz: ram
        }]
    );
    assert_eq!(
        std::fs::metadata(&full).unwrap().len(),
        core.loads[0].offset + ram,
        "the file ends with the RAM"
    );
    assert_eq!(core.phys(MARKER_GPA, 4096), marker_page());
    check_registers(&core, cpus, rip);
    let path = full.to_str().unwrap();
    let readelf = tool("readelf", &["-l", "-n", path]);
    assert!(readelf.contains("CORE (Core file)"), "{readelf}");
    assert!(
        readelf.contains("0x0000000010000000 0x0000000010000000"),
        "{readelf}"
    );
    assert!(readelf.contains("NT_PRSTATUS"), "{readelf}");
    let gdb = tool(
        "gdb",
        &[
            "-batch",
            "-nx",
            "-ex",
            "info registers r12 r13",
            "-ex",
            "x/s 0x6000000",
            "-c",
            path,
        ],
    );
    assert!(gdb.contains("0x123456789abcdef0"), "{gdb}");
    assert!(gdb.contains("0xbadcafedeadbeef"), "{gdb}");
    assert!(gdb.contains("BULKHEAD DUMP MARKER"), "{gdb}");

    // paging: virtual mappings from the guest's tables (it identity-maps
    // RAM), and a filter: only the marker page.
    let paging = dir.join("paging.core");
    let r = dump(
        &mut c,
        json!({"paging": true, "protocol": format!("file:{}", paging.display())}),
    );
    assert_eq!(r, json!({"return": {}}));
    let core = Core::from_file(&paging);
    let l = core
        .loads
        .iter()
        .find(|l| l.vaddr <= MARKER_GPA && MARKER_GPA < l.vaddr + l.memsz)
        .expect("a virtual mapping of the marker");
    assert_eq!(l.vaddr, l.paddr, "the guest identity-maps its RAM");
    assert_eq!(core.phys(MARKER_GPA, 4096), marker_page());
    let filtered = dir.join("filtered.core");
    let r = dump(
        &mut c,
        json!({"paging": false, "protocol": format!("file:{}", filtered.display()),
               "begin": MARKER_GPA, "length": 4096}),
    );
    assert_eq!(r, json!({"return": {}}));
    let core = Core::from_file(&filtered);
    assert_eq!(core.loads.len(), 1);
    assert_eq!(
        (core.loads[0].paddr, core.loads[0].filesz),
        (MARKER_GPA, 4096)
    );
    assert_eq!(core.phys(MARKER_GPA, 4096), marker_page());
    assert_eq!(
        c.ok("query-dump"),
        json!({"status": "completed", "completed": 4096, "total": 4096})
    );

    // QEMU 10's answers for bad input (same inputs, same words).
    // Every event of the dumps so far is in once query-status answers.
    c.ok("query-status");
    c.events.clear();
    // Each case its own file: a refused dump may leave its (mode 0400) file.
    let f = "F";
    let cases = [
        (
            json!({"paging": false, "protocol": "bogus"}),
            "parameter 'protocol' must start with 'file:' or 'fd:'",
        ),
        (
            json!({"paging": false, "protocol": "file:/nonexistent/x"}),
            "Could not create '/nonexistent/x': No such file or directory",
        ),
        (
            json!({"paging": false, "protocol": "fd:nope"}),
            "File descriptor named 'nope' has not been found",
        ),
        (
            json!({"paging": false, "protocol": f, "begin": 0}),
            "Parameter 'length' is missing",
        ),
        (
            json!({"paging": false, "protocol": f, "length": 4096}),
            "Parameter 'begin' is missing",
        ),
        (
            json!({"paging": false, "protocol": f, "format": "kdump-lzo", "begin": 0, "length": 4096}),
            "kdump-compressed format doesn't support paging or filter",
        ),
        (
            json!({"paging": true, "protocol": f, "format": "kdump-zlib"}),
            "kdump-compressed format doesn't support paging or filter",
        ),
        (
            json!({"paging": false, "protocol": f, "format": "kdump-lzo"}),
            "kdump-lzo is not available now",
        ),
        (
            json!({"paging": false, "protocol": f, "format": "kdump-snappy"}),
            "kdump-snappy is not available now",
        ),
        (
            json!({"paging": false, "protocol": f, "format": "bogus"}),
            "Parameter 'format' does not accept value 'bogus'",
        ),
        (
            json!({"paging": false, "protocol": f, "begin": 0x2000_0000, "length": 4096}),
            "dump: no guest memory to dump",
        ),
        (
            json!({"paging": false, "protocol": f, "begin": 4096, "length": 0}),
            "parameter 'length' expects a non-zero size",
        ),
        (json!({"protocol": f}), "Parameter 'paging' is missing"),
        (json!({"paging": false}), "Parameter 'protocol' is missing"),
        (
            json!({"paging": false, "protocol": f, "extra": 1}),
            "Parameter 'extra' is unexpected",
        ),
    ];
    for (i, (mut args, want)) in cases.into_iter().enumerate() {
        if args["protocol"] == "F" {
            let path = dir.join(format!("never{i}.core"));
            args["protocol"] = json!(format!("file:{}", path.display()));
        }
        assert_eq!(
            error(&mut c, "dump-guest-memory", args.clone()),
            want,
            "{args}"
        );
    }
    // The range errors come after the VM stopped, as in QEMU: two rounds
    // of STOP and RESUME.
    c.ok("query-status");
    let names: Vec<&str> = c
        .events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["STOP", "RESUME", "STOP", "RESUME"]);
    // win-dmp needs the guest's vmcoreinfo note, which a guest without a
    // vmcoreinfo device never has: QEMU fails the dump with an event.
    let win = format!("file:{}", dir.join("win.core").display());
    assert_eq!(
        error(
            &mut c,
            "dump-guest-memory",
            json!({"paging": false, "protocol": win, "format": "win-dmp"})
        ),
        "win-dump: invalid vmcoreinfo note size"
    );
    let ev = c.event_where("DUMP_COMPLETED", |d| d["result"]["status"] == "failed");
    assert_eq!(
        ev["data"]["error"],
        "win-dump: invalid vmcoreinfo note size"
    );
    assert_eq!(c.ok("query-dump")["status"], "failed");
    assert_eq!(
        c.ok("query-status"),
        json!({"status": "running", "running": true})
    );
}

/// A pipe: (read end, write end).
fn pipe() -> (File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (File::from(r), w)
}

fn getfd(c: &mut Qmp, name: &str, fd: OwnedFd) {
    let r = c.execute_with_fds("getfd", json!({"fdname": name}), &[fd.as_fd()]);
    assert_eq!(r, json!({"return": {}}));
}

fn vcpu_pid(b: &Bulkhead) -> u32 {
    children(broker_pid(b))
        .into_iter()
        .find(|(_, name)| name == "vcpu-proc")
        .map(|(p, _)| p)
        .expect("no vcpu-proc")
}

#[test]
fn detached_dump_to_an_fd_pipe_shows_progress_completes_and_a_killed_vcpu_proc_fails_it() {
    let (b, mut c, rip) = boot("128M", "1");
    let ram = 128u64 << 20;

    // Detached into a pipe nobody reads yet: QMP answers while it waits.
    let (mut reader, w) = pipe();
    getfd(&mut c, "core", w);
    let r = dump(
        &mut c,
        json!({"paging": false, "protocol": "fd:core", "detach": true}),
    );
    assert_eq!(r, json!({"return": {}}));
    c.event("STOP");
    let q = c.ok("query-dump");
    assert_eq!((&q["status"], &q["total"]), (&json!("active"), &json!(ram)));
    let first = q["completed"].as_u64().unwrap();
    assert!(first < ram, "{q}");
    assert_eq!(
        c.ok("query-status"),
        json!({"status": "save-vm", "running": false})
    );
    // QEMU 10 refuses stop and cont here; its system_reset aborts QEMU, so
    // bulkhead refuses that too.
    for cmd in ["stop", "cont", "system_reset"] {
        assert_eq!(error(&mut c, cmd, json!({})), IN_PROGRESS);
    }
    assert_eq!(
        error(
            &mut c,
            "dump-guest-memory",
            json!({"paging": false, "protocol": "bogus"})
        ),
        IN_PROGRESS
    );
    // The fd was taken by the dump, as QEMU's monitor_get_fd takes it.
    assert_eq!(
        error(&mut c, "closefd", json!({"fdname": "core"})),
        "File descriptor named 'core' not found"
    );
    // Read half the RAM: progress moves, the dump is still active.
    let mut data = vec![0u8; (ram / 2) as usize];
    reader.read_exact(&mut data).unwrap();
    let q = c.ok("query-dump");
    let second = q["completed"].as_u64().unwrap();
    assert_eq!(q["status"], "active");
    assert!(second > first && second < ram, "{first} then {q}");
    reader.read_to_end(&mut data).unwrap();
    let done = c.event("DUMP_COMPLETED");
    assert_eq!(
        done["data"],
        json!({"result": {"status": "completed", "completed": ram, "total": ram}})
    );
    c.event("RESUME");
    let core = Core::from_bytes(data);
    assert_eq!(core.phys(MARKER_GPA, 4096), marker_page());
    check_registers(&core, 1, rip);

    // A reader gone before the dump: the write fails, the VM resumes.
    let (r, w) = pipe();
    drop(r);
    getfd(&mut c, "gone", w);
    assert_eq!(
        error(
            &mut c,
            "dump-guest-memory",
            json!({"paging": false, "protocol": "fd:gone"})
        ),
        "dump: failed to write elf header: Broken pipe"
    );
    let failed = c.event_where("DUMP_COMPLETED", |d| d["result"]["status"] == "failed");
    assert_eq!(failed["data"]["result"]["completed"], json!(0));
    assert_eq!(
        c.ok("query-status"),
        json!({"status": "running", "running": true})
    );

    // A second detached dump, never read, and vcpu-proc SIGKILLed under it.
    let (_reader, w) = pipe();
    getfd(&mut c, "stuck", w);
    let r = dump(
        &mut c,
        json!({"paging": false, "protocol": "fd:stuck", "detach": true}),
    );
    assert_eq!(r, json!({"return": {}}));
    let deadline = Instant::now() + TIMEOUT;
    while c.ok("query-dump")["completed"] == json!(0) {
        assert!(Instant::now() < deadline, "the dump never wrote");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on vcpu-proc, a child of the broker this test started.
    assert_eq!(unsafe { libc::kill(vcpu_pid(&b) as i32, libc::SIGKILL) }, 0);
    let failed = c.event("DUMP_COMPLETED");
    assert_eq!(failed["data"]["result"]["status"], "failed", "{failed}");
    assert_eq!(failed["data"]["result"]["total"], json!(ram));
    assert!(
        failed["data"]["error"].as_str().unwrap().contains("died"),
        "{failed}"
    );
    assert_eq!(c.ok("query-dump")["status"], "failed");
    assert_eq!(
        c.ok("query-status"),
        json!({"status": "internal-error", "running": false})
    );
    assert!(c.ok("query-version").is_object());
    let (_r, w) = pipe();
    getfd(&mut c, "after", w);
    let after = error(
        &mut c,
        "dump-guest-memory",
        json!({"paging": false, "protocol": "fd:after"}),
    );
    assert!(after.contains("vCPU worker is not running"), "{after}");
}

#[test]
fn dump_files_are_created_as_the_run_with_user() {
    const UID: u32 = 4_000_322;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let user = format!("user={UID}");
    let b = Bulkhead::start(&["-run-with", &user]);
    let mut c = b.client();
    let closed = b.dir.0.join("closed");
    let open = b.dir.0.join("open");
    for (d, mode) in [(&closed, 0o755), (&open, 0o777)] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let refused = closed.join("core");
    assert_eq!(
        error(
            &mut c,
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", refused.display())})
        ),
        format!(
            "Could not create '{}': Permission denied",
            refused.display()
        )
    );
    let core = open.join("core");
    let r = dump(
        &mut c,
        json!({"paging": false, "protocol": format!("file:{}", core.display()),
               "begin": 0, "length": 4096}),
    );
    assert_eq!(r, json!({"return": {}}));
    let meta = std::fs::metadata(&core).unwrap();
    assert_eq!(meta.uid(), UID);
    assert_eq!(meta.mode() & 0o777, 0o400, "QEMU creates the core S_IRUSR");
}

#[test]
fn file_dev_fdset_dumps_into_the_sets_write_only_fd_as_qemu() {
    use std::os::unix::fs::OpenOptionsExt;
    let b = Bulkhead::start(&[]);
    let mut c = b.client();
    let open = |name: &str, read: bool| {
        std::fs::OpenOptions::new()
            .read(read)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(b.dir.0.join(name))
            .unwrap()
    };
    // Old bytes QEMU's O_TRUNC open drops.
    std::fs::write(b.dir.0.join("wo.core"), [0xee; 100_000]).unwrap();
    let (rw, wo) = (open("rw.core", true), open("wo.core", false));
    for (set, f) in [(1, &rw), (2, &wo)] {
        let r = c.execute_with_fds("add-fd", json!({"fdset-id": set}), &[f.as_fd()]);
        assert_eq!(r["return"]["fdset-id"], json!(set), "{r}");
    }
    let args = |p: &str| json!({"paging": false, "protocol": p, "begin": 0, "length": 4096});
    for (p, want) in [
        (
            "file:/dev/fdset/1",
            "Failed to find file descriptor with matching flags=0x241",
        ),
        ("file:/dev/fdset/7", "Failed to find fdset /dev/fdset/7"),
        ("file:/dev/fdset/x", "Could not parse fdset /dev/fdset/x"),
    ] {
        assert_eq!(error(&mut c, "dump-guest-memory", args(p)), want);
    }
    assert_eq!(
        dump(&mut c, args("file:/dev/fdset/2")),
        json!({"return": {}})
    );
    let core = Core::from_file(&b.dir.0.join("wo.core"));
    assert_eq!((core.loads[0].paddr, core.loads[0].filesz), (0, 4096));
    let len = std::fs::metadata(b.dir.0.join("wo.core")).unwrap().len();
    assert_eq!(len, core.loads[0].offset + 4096, "truncated first");
}
