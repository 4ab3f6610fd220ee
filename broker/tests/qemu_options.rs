//! QEMU's command-line options as bulkhead accepts them: every spelling
//! the README's table lists starts a VM (and QEMU 10 accepts the same
//! command line, where it has the device), and the options bulkhead does
//! not have are refused with QEMU's own message. Needs /dev/kvm and
//! qemu-system-x86_64 (scripts/setup).

mod common;
mod disk_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bulkhead, TempDir, TIMEOUT};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn qmp_quit(sock: &Path) -> bool {
    let start = Instant::now();
    let s = loop {
        if let Ok(s) = UnixStream::connect(sock) {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    let mut w = s;
    if r.read_line(&mut line).is_err() || !line.contains("QMP") {
        return false;
    }
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
        .unwrap();
    // Until the connection closes: the quit is carried out.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut r, &mut rest);
    true
}

/// QEMU 10 on the same options (with a microvm machine unless they name
/// one): true if it starts and serves QMP.
fn qemu_accepts(opts: &[&str]) -> bool {
    let dir = TempDir::new();
    let sock = dir.0.join("qemu.sock");
    let mut args: Vec<String> = vec![];
    if !opts.iter().any(|o| *o == "-M" || *o == "-machine") {
        args.extend(["-M".into(), "microvm".into()]);
    }
    if !opts
        .iter()
        .any(|o| ["-accel", "-enable-kvm"].contains(o) || o.contains("accel="))
    {
        args.push("-enable-kvm".into());
    }
    args.extend(["-S", "-nodefaults", "-display", "none", "-qmp"].map(String::from));
    args.push(format!("unix:{},server=on,wait=off", sock.display()));
    args.extend(opts.iter().map(|s| s.to_string()));
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed (scripts/setup)");
    let ok = qmp_quit(&sock);
    if !ok {
        let _ = child.kill();
    }
    let _ = child.wait();
    ok
}

/// The spellings of the README's table that start a VM; `true` where
/// QEMU 10 runs the same option here (`-cpu host`/`max` abort under this
/// nested KVM, see DESIGN.md).
const ACCEPTED: &[(&[&str], bool)] = &[
    (&["-machine", "microvm"], true),
    (&["-M", "microvm,accel=kvm"], true),
    (&["-M", "microvm,usb=off"], true),
    (&["-M", "none"], true),
    (&["-machine", "type=none,accel=kvm:tcg"], true),
    (&["-accel", "kvm"], true),
    (&["-enable-kvm"], true),
    (&["-cpu", "host"], false),
    (&["-cpu", "max"], false),
    (&["-cpu", "qemu64,+popcnt,-sse3,avx=off"], true),
    (&["-display", "none"], true),
    (&["-nodefaults"], true),
    (&["-no-user-config"], true),
    (&["-no-shutdown"], true),
    (&["-no-reboot"], true),
    (&["-S"], true),
    (&["-overcommit", "mem-lock=off,cpu-pm=off"], true),
    (&["-rtc", "base=utc,clock=host"], true),
    (&["-boot", "strict=on,menu=off"], true),
    (&["-msg", "timestamp=on"], true),
    (&["-trace", "enable=virtio_*"], true),
    (&["-name", "vm1,process=bh-vm1,debug-threads=on"], true),
    (&["-name", "guest=vm1"], true),
    (&["-uuid", "8c6a0c6b-1e5c-4c47-9f5c-2e3f4a5b6c7d"], true),
    (&["-m", "64"], true),
    (&["-m", "64", "-mem-path", "/dev/shm"], true),
    (&["-mem-prealloc"], true),
    (&["-incoming", "defer"], true),
    (&["-smp", "2"], true),
    (&["-nographic"], true),
    (&["-serial", "mon:stdio"], true),
    (&["-monitor", "stdio"], true),
    (&["-monitor", "none"], true),
    (&["-object", "secret,id=sec0,data=letmein,format=raw"], true),
    (&["-M", "microvm,dump-guest-core=off"], true),
    (&["-audiodev", "none,id=audio0"], true),
    (&["-audiodev", r#"{"id":"audio1","driver":"none"}"#], true),
    (
        &[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ],
        true,
    ),
];

#[test]
fn every_documented_spelling_starts_a_vm_and_qemu_accepts_it_too() {
    for (opts, qemu) in ACCEPTED {
        let b = Bulkhead::start(opts);
        let mut q = b.client();
        q.ok("query-status");
        drop(b);
        if *qemu {
            assert!(qemu_accepts(opts), "QEMU refused {opts:?}");
        }
    }
}

#[test]
fn help_and_version_print_qemu_style_text_and_exit_0() {
    for opt in ["-version", "--version"] {
        let out = Command::new(BIN).arg(opt).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.starts_with("QEMU emulator version 10.0.0 (bulkhead "),
            "{text}"
        );
    }
    for opt in ["-help", "-h", "--help"] {
        let out = Command::new(BIN).arg(opt).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("usage: bulkhead [options]"), "{text}");
        assert!(text.contains("-daemonize"));
    }
    for (opt, want) in [("-M", "microvm"), ("-cpu", "qemu64"), ("-accel", "kvm")] {
        let out = Command::new(BIN).args([opt, "help"]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8(out.stdout).unwrap().contains(want));
    }
}

/// Refusals, with QEMU's message for the same command line where QEMU
/// refuses it too (`None`: QEMU has it, bulkhead does not).
const REFUSED: &[(&[&str], &str, bool)] = &[
    (&["-M", "foo"], "unsupported machine type: \"foo\"\nUse -machine help to list supported machines", true),
    (&["-M", "microvm,foo=bar"], "Property 'microvm-machine.foo' not found", true),
    (&["-cpu", "foo"], "unable to find CPU model 'foo'", true),
    (&["-cpu", "qemu64,+frob"], "Property 'qemu64-x86_64-cpu.frob' not found", true),
    (&["-accel", "foo"], "-accel foo: invalid accelerator foo", true),
    (&["-M", "microvm,accel=kvm", "-accel", "kvm"], "The -accel and \"-machine accel=\" options are incompatible", true),
    (&["-uuid", "xyz"], "-uuid xyz: failed to parse UUID string: wrong format", true),
    (&["-msg", "timestamp=maybe"], "-msg timestamp=maybe: Parameter 'timestamp' expects 'on' or 'off'", true),
    (&["-name", "foo,bogus=1"], "-name foo,bogus=1: Invalid parameter 'bogus'", true),
    (&["-overcommit", "foo=on"], "-overcommit foo=on: Invalid parameter 'foo'", true),
    (&["-rtc", "foo=bar"], "-rtc foo=bar: Invalid parameter 'foo'", true),
    (&["-trace", "bogus=1"], "-trace bogus=1: Invalid parameter 'bogus'", true),
    (&["-boot", "foo=bar"], "Parameter 'boot.foo' is unexpected", true),
    (&["-display", "foo"], "-display foo: Parameter 'type' does not accept value 'foo'", true),
    (&["-bogus"], "-bogus: invalid option", true),
    (&["-m"], "-m: requires an argument", true),
    (&["-daemonize", "-serial", "stdio"], "-serial stdio: cannot use stdio with -daemonize", true),
    (&["-daemonize", "-serial", "mon:stdio"], "-serial mon:stdio: cannot use stdio with -daemonize", true),
    (&["-daemonize", "-monitor", "stdio"], "-monitor stdio: cannot use stdio with -daemonize", true),
    (&["-daemonize", "-nographic"], "-nographic cannot be used with -daemonize", true),
    (&["-serial", "stdio", "-monitor", "stdio"], "-serial stdio: cannot use stdio by multiple character devices", true),
    (&["-serial", "tcp:127.0.0.1:1"], "-serial tcp:127.0.0.1:1: Failed to connect to '127.0.0.1:1': Connection refused", true),
    (&["-chardev", "socket,id=s,host=127.0.0.1,port=1", "-serial", "chardev:s"], "-chardev socket,id=s,host=127.0.0.1,port=1: Failed to connect to '127.0.0.1:1': Connection refused", true),
    (&["-accel", "tcg"], "-accel: bulkhead has only the kvm accelerator", false),
    (&["-object", "secret,id=s"], "Either 'file' or 'data' must be provided", true),
    (&["-object", "secret,id=s,file=/nonexist"], "Unable to read /nonexist: Failed to open file \u{201c}/nonexist\u{201d}: No such file or directory", true),
    (&["-object", "secret,id=s,data=x,keyid=m"], "-object: secret: keyid= (a secret encrypted with another) is not supported by bulkhead", false),
    (&["-M", "microvm,dump-guest-core=on"], "-machine: dump-guest-core=on: bulkhead's sandboxed workers write no core dumps at all (dump-guest-core=off, or -sandbox off)", false),
    (&["-sandbox", "on,spawn=allow"], "-sandbox on,spawn=allow: spawn=allow: bulkhead's sandboxed workers never get this (only spawn=deny)", false),
    (&["-audiodev", "pa,id=a"], "-audiodev pa,id=a: audiodev driver 'pa': bulkhead has no audio device (only driver=none)", false),
    (&["-overcommit", "mem-lock=on"], "-overcommit mem-lock=on: mem-lock=on is not supported by bulkhead", false),
    (&["-rtc", "base=localtime"], "-rtc base=localtime: base=localtime is not supported: bulkhead's guest has no RTC (only base=utc, clock=host)", false),
    (&["-boot", "order=c"], "-boot order=c: order=c is not supported: bulkhead boots only -kernel, without firmware", false),
    (&["-display", "gtk"], "Display 'gtk' is not available (bulkhead has no display)", false),
];

#[test]
fn options_bulkhead_lacks_are_refused_with_qemu_messages() {
    for (opts, msg, qemu_refuses) in REFUSED {
        let serial: &[&str] = if opts.contains(&"-serial") {
            &[]
        } else {
            &["-serial", "null"]
        };
        let out = Command::new(BIN).args(serial).args(*opts).output().unwrap();
        assert!(!out.status.success(), "{opts:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end(), format!("bulkhead: {msg}"), "{opts:?}");
        if *qemu_refuses {
            let mut args = vec!["-display", "none", "-nodefaults", "-S"];
            if !opts.contains(&"-M") {
                args.extend(["-M", "microvm"]);
            }
            args.extend(*opts);
            if opts.contains(&"-daemonize") {
                args.retain(|a| *a != "-nodefaults");
            }
            let q = Command::new("qemu-system-x86_64")
                .args(&args)
                .output()
                .unwrap();
            assert!(!q.status.success(), "QEMU accepted {args:?}");
            let qerr = String::from_utf8_lossy(&q.stderr);
            let first = qerr.lines().next().unwrap_or("");
            assert_eq!(
                first.strip_prefix("qemu-system-x86_64: "),
                msg.lines().next(),
                "QEMU on {args:?}: {qerr}"
            );
        }
    }
}

#[test]
fn uuid_is_reported_by_query_uuid() {
    let b = Bulkhead::start(&["-uuid", "8C6A0C6B-1E5C-4C47-9F5C-2E3F4A5B6C7D"]);
    let mut q = b.client();
    assert_eq!(
        q.ok("query-uuid"),
        json!({"UUID": "8c6a0c6b-1e5c-4c47-9f5c-2e3f4a5b6c7d"})
    );
    let b = Bulkhead::start(&[]);
    assert_eq!(
        b.client().ok("query-uuid"),
        json!({"UUID": "00000000-0000-0000-0000-000000000000"})
    );
}

#[test]
fn name_process_and_debug_threads_name_the_broker_and_the_vcpu_threads() {
    let b = Bulkhead::start(&["-name", "vm1,process=bh-vm1,debug-threads=on", "-smp", "2"]);
    let mut q = b.client();
    assert_eq!(q.ok("query-name"), json!({"name": "vm1"}));
    let pid = common::broker_pid(&b);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "bh-vm1");
    let mut names: Vec<String> = q
        .ok("query-cpus-fast")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let tid = c["thread-id"].as_i64().unwrap();
            std::fs::read_to_string(format!("/proc/{tid}/comm"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["CPU 0/KVM", "CPU 1/KVM"]);
    // Without debug-threads, the process's name (as QEMU's).
    let b = Bulkhead::start(&[]);
    let tid = b.client().ok("query-cpus-fast")[0]["thread-id"]
        .as_i64()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap();
    assert_eq!(comm.trim(), "vcpu-proc");
}

#[test]
fn machine_none_serves_qmp_without_a_guest() {
    let b = Bulkhead::start(&["-M", "none", "-S"]);
    let mut q = b.client();
    assert_eq!(q.ok("query-status")["status"], "prelaunch");
    assert_eq!(q.ok("query-cpus-fast"), json!([]));
    q.ok("cont");
    q.event("RESUME");
    assert_eq!(q.ok("query-status")["status"], "running");
    let kids = common::children(common::broker_pid(&b));
    assert!(kids.iter().all(|(_, c)| c != "vcpu-proc"), "{kids:?}");
}

#[test]
fn daemonize_returns_once_qmp_serves_and_pidfile_names_the_daemon() {
    common::require_kvm();
    let dir = TempDir::new();
    let sock = dir.0.join("q.sock");
    let pidfile = dir.0.join("vm.pid");
    let status = Command::new(BIN)
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args([
            "-daemonize",
            "-pidfile",
            pidfile.to_str().unwrap(),
            "-serial",
            "null",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // The parent exited only after the socket existed and the VM was set up.
    assert!(sock.exists());
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "bulkhead");
    let kids = common::children(pid);
    assert!(kids.iter().any(|(_, c)| c == "vcpu-proc"), "{kids:?}");
    // A second one on the same pid file is refused as QEMU refuses it.
    let out = Command::new(BIN)
        .args([
            "-daemonize",
            "-pidfile",
            pidfile.to_str().unwrap(),
            "-serial",
            "null",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "bulkhead: cannot create PID file: Cannot lock pid file: Resource temporarily unavailable"
    );
    assert!(qmp_quit(&sock));
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(start.elapsed() < TIMEOUT, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pidfile.exists(), "pid file left behind");
}

#[test]
fn daemonize_parent_reports_a_start_up_failure() {
    let out = Command::new(BIN)
        .args([
            "-daemonize",
            "-serial",
            "null",
            "-kernel",
            "/nonexistent/guest.elf",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/guest.elf"), "{err}");
}

#[test]
fn log_file_d_receives_every_process_log() {
    common::require_kvm();
    let dir = TempDir::new();
    let log = dir.0.join("vm.log");
    let sock = dir.0.join("q.sock");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .args([
        "-D",
        log.to_str().unwrap(),
        "-serial",
        "null",
        "-msg",
        "timestamp=on",
    ])
    .env("BULKHEAD_LOG", "debug")
    .stdin(Stdio::null())
    .stderr(Stdio::piped());
    let mut b = Bulkhead::start_with(&mut cmd, sock, dir);
    b.client().ok("quit");
    b.wait_exit();
    let text = std::fs::read_to_string(&log).unwrap();
    for who in ["broker::", "vcpu_proc", "block_proc"] {
        assert!(text.contains(who), "no {who} line in {text}");
    }
    // -msg timestamp=on: every line starts with one (2026-...).
    assert!(text.lines().all(|l| l.starts_with("20")), "{text}");
}

/// The `cpuid` test guest's report under `-cpu SPEC`, from bulkhead and
/// from QEMU 10 (`-M microvm` through qboot, as DESIGN.md's peer line).
fn cpuid_report(qemu: bool, spec: &str) -> Vec<String> {
    let kernel = disk_common::guest("cpuid");
    let out = if qemu {
        Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off",
            ])
            .args([
                "-bios",
                "/usr/share/qemu/qboot.rom",
                "-enable-kvm",
                "-m",
                "64",
            ])
            .args([
                "-nodefaults",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(["-cpu", spec, "-kernel", &kernel])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    } else {
        Command::new(BIN)
            .args([
                "-cpu", spec, "-kernel", &kernel, "-serial", "stdio", "-m", "64",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("VERDICT: PASS cpuid"), "{text}");
    text.lines()
        .filter(|l| l.contains('='))
        .map(String::from)
        .collect()
}

/// The host CPU's vendor string (`/proc/cpuinfo`'s `vendor_id`).
fn host_vendor() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|v| v.split(':').nth(1))
        .map(|v| v.trim().to_owned())
        .expect("vendor_id in /proc/cpuinfo")
}

#[test]
fn cpu_model_and_features_reach_the_guest_as_qemu_gives_them() {
    common::require_kvm();
    for spec in ["qemu64", "qemu64,-nx,-lahf_lm,+popcnt"] {
        let ours = cpuid_report(false, spec);
        let get = |k: &str| {
            ours.iter()
                .find(|l| l.starts_with(k))
                .cloned()
                .unwrap_or_default()
        };
        // Under KVM QEMU gives a named model the host's vendor.
        assert_eq!(get("vendor="), format!("vendor={}", host_vendor()));
        assert_eq!(get("signature="), "signature=0x60fb1");
        assert_eq!(get("brand="), "brand=QEMU Virtual CPU version 2.5+");
        if spec.contains("-lahf_lm") {
            assert_eq!(get("ext1.ecx="), "ext1.ecx=0x00000000");
            assert_eq!(get("ext1.edx=").len(), "ext1.edx=0x00000000".len());
            let edx = u32::from_str_radix(&get("ext1.edx=")[11..], 16).unwrap();
            assert_eq!(edx & (1 << 20), 0, "nx still set");
        }
        // QEMU 10, same -cpu: the same CPUID, word for word.
        assert_eq!(ours, cpuid_report(true, spec), "-cpu {spec}");
    }
    // host: KVM's own vendor, not qemu64's brand.
    let host = cpuid_report(false, "host");
    assert!(
        !host.iter().any(|l| l.contains("QEMU Virtual CPU")),
        "{host:?}"
    );
}

#[test]
fn memory_backend_objects_back_guest_ram_as_qemu_names_them() {
    let dir = TempDir::new();
    let file = dir.0.join("ram");
    // A file backend: the guest's RAM is that file.
    let b = Bulkhead::start(&[
        "-object",
        &format!(
            "memory-backend-file,id=m,size=64M,mem-path={},share=on",
            file.display()
        ),
        "-machine",
        "microvm,memory-backend=m",
    ]);
    b.client().ok("query-status");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 << 20);
    drop(b);
    // libvirt's JSON spelling, with -m agreeing.
    let b = Bulkhead::start(&[
        "-object",
        r#"{"qom-type":"memory-backend-ram","id":"microvm.ram","size":67108864}"#,
        "-M",
        "microvm,memory-backend=microvm.ram",
        "-m",
        "64",
    ]);
    b.client().ok("query-status");
    for (args, msg) in [
        (
            &[
                "-object",
                "memory-backend-ram,id=r,size=64M",
                "-M",
                "microvm,memory-backend=r",
                "-m",
                "128",
            ][..],
            "bulkhead: Machine memory size does not match the size of the memory backend",
        ),
        (
            &[
                "-object",
                "memory-backend-file,id=r,size=64M,mem-path=/tmp",
                "-M",
                "microvm,memory-backend=r",
            ][..],
            "bulkhead: -object: memory-backend-file: share=off is not supported",
        ),
        (
            &["-object", "memory-backend-ram,id=r,size=64M"][..],
            "bulkhead: -object: 'r' is used by nothing",
        ),
        (
            &["-M", "microvm,memory-backend=x"][..],
            "bulkhead: Memory backend 'x' not found",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["-serial", "null"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(msg), "{args:?}: {err}");
    }
}

#[test]
fn serial_port_through_a_chardev_as_qemu_and_libvirt_write_it() {
    let dir = TempDir::new();
    for (i, how) in ["-serial", "-device"].iter().enumerate() {
        let log = dir.0.join(format!("serial{i}.log"));
        let chardev = format!("file,id=ser0,path={}", log.display());
        let target = if *how == "-serial" {
            "chardev:ser0".to_owned()
        } else {
            "isa-serial,chardev=ser0,id=serial0,index=0".to_owned()
        };
        let opts = ["-chardev", chardev.as_str(), how, target.as_str()];
        let b = Bulkhead::start(&opts);
        let mut q = b.client();
        q.ok("query-status");
        // The built-in hello guest prints its banner on COM1.
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Bulkhead test guest")
        {
            assert!(
                start.elapsed() < TIMEOUT,
                "{how}: no guest output in {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(b);
        assert!(qemu_accepts(&opts), "QEMU refused {opts:?}");
    }
    for (args, msg) in [
        (
            &["-chardev", "vc,id=p", "-serial", "chardev:p"][..],
            "bulkhead: -chardev: 'vc' chardevs are not supported by bulkhead",
        ),
        (
            &["-serial", "chardev:nope"][..],
            "bulkhead: chardev 'nope' not found",
        ),
        (
            &["-chardev", "null,id=n"][..],
            "bulkhead: -chardev: 'n' is used by nothing",
        ),
        (
            &[
                "-chardev",
                "null,id=n",
                "-device",
                "isa-serial,chardev=n,index=1",
            ][..],
            "bulkhead: -device: isa-serial: bulkhead has one UART",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(msg), "{args:?}: {err}");
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads from `s` until `want` has arrived.
fn read_until(s: &mut impl std::io::Read, want: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before {want:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn serial_port_on_tcp_as_server_and_client_in_qemus_spellings() {
    // Server: the broker listens, a client talks to the guest.
    let server_opts = |chardev: bool, port: u16| -> Vec<String> {
        let opts = if chardev {
            vec![
                "-chardev".into(),
                format!("socket,id=ser0,host=127.0.0.1,port={port},server=on,wait=off"),
                "-serial".into(),
                "chardev:ser0".into(),
            ]
        } else {
            vec![
                "-serial".into(),
                format!("tcp:127.0.0.1:{port},server=on,wait=off"),
            ]
        };
        opts
    };
    for chardev in [false, true] {
        let port = free_port();
        let owned = server_opts(chardev, port);
        let opts: Vec<&str> = owned.iter().map(String::as_str).collect();
        let b = Bulkhead::start(&opts);
        let mut q = b.client();
        q.ok("query-status");
        for _ in 0..2 {
            // One client after another.
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(b"ping\r").unwrap();
            read_until(&mut s, "ping\r\n");
        }
        drop(b);
        // On another port: the killed broker's workers may hold the first
        // a moment longer.
        let owned = server_opts(chardev, free_port());
        let opts: Vec<&str> = owned.iter().map(String::as_str).collect();
        assert!(qemu_accepts(&opts), "QEMU refused {opts:?}");
    }
    // Client: the broker connects to a listener; the guest's banner
    // arrives there and input is echoed back.
    for chardev in [false, true] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let spec = format!("tcp:127.0.0.1:{port}");
        let dev = format!("socket,id=ser0,host=127.0.0.1,port={port}");
        let opts: Vec<&str> = if chardev {
            vec!["-chardev", &dev, "-serial", "chardev:ser0"]
        } else {
            vec!["-serial", &spec]
        };
        let b = Bulkhead::start(&opts);
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        read_until(&mut s, "Bulkhead test guest");
        s.write_all(b"pong\r").unwrap();
        read_until(&mut s, "pong\r\n");
        drop(b);
    }
    // A port already taken: QEMU's message, word for word.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!(
        "tcp:127.0.0.1:{},server=on,wait=off",
        taken.local_addr().unwrap().port()
    );
    let first_line = |bin: &str, prefix: &str| {
        let out = Command::new(bin)
            .args([
                "-M",
                "none",
                "-display",
                "none",
                "-nodefaults",
                "-serial",
                &spec,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bin} took a port in use");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.lines()
            .next()
            .unwrap_or("")
            .strip_prefix(prefix)
            .map(String::from)
    };
    let ours = first_line(BIN, "bulkhead: ");
    assert!(ours.is_some());
    assert_eq!(
        ours,
        first_line("qemu-system-x86_64", "qemu-system-x86_64: ")
    );
    for (args, msg) in [
        (&["-serial", "tcp:127.0.0.1"][..], "no port given"),
        (
            &["-monitor", "unix:/tmp/x.sock,server=on"][..],
            "add wait=off",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

/// True if the mapping of `size` bytes in `pid`'s smaps carries the
/// `dd` (MADV_DONTDUMP) flag.
fn ram_is_dontdump(pid: u32, size: u64) -> bool {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_ram = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    in_ram = b - a == size;
                    continue;
                }
            }
        }
        if in_ram && line.starts_with("VmFlags:") {
            return line.split_whitespace().any(|f| f == "dd");
        }
    }
    panic!("no {size}-byte mapping in vcpu-proc {pid}");
}

#[test]
fn dump_guest_core_off_leaves_guest_ram_out_of_core_dumps() {
    for (opts, want) in [
        (&["-M", "microvm,dump-guest-core=off"][..], true),
        (&[][..], false),
    ] {
        let mut args = vec!["-m", "96"];
        args.extend(opts);
        let b = Bulkhead::start(&args);
        let mut q = b.client();
        q.ok("query-status");
        let vcpu = common::children(common::broker_pid(&b))
            .into_iter()
            .find(|(_, comm)| comm == "vcpu-proc")
            .expect("vcpu-proc runs")
            .0;
        assert_eq!(ram_is_dontdump(vcpu, 96 << 20), want, "{opts:?}");
    }
}

/// The first stderr line of `cmd` (its stderr piped), then kills it.
fn first_stderr_line(cmd: &mut Command) -> (std::process::Child, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (child, line.trim_end().to_owned())
}

#[test]
fn serial_tcp_server_waits_for_its_first_client_as_qemu() {
    let dir = TempDir::new();
    let qmp = dir.0.join("q.sock");
    let port = free_port();
    let spec = format!("tcp:127.0.0.1:{port},server=on");
    let (mut b, line) = first_stderr_line(
        Command::new(BIN)
            .args(["-m", "64", "-serial", &spec, "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !qmp.exists(),
        "the VM was set up before the serial client came"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The guest starts once the client is there: its banner reaches it.
    read_until(&mut s, "Bulkhead test guest");
    s.write_all(b"ping\r").unwrap();
    read_until(&mut s, "ping\r\n");
    assert!(qmp_quit(&qmp));
    let _ = b.wait();

    let (mut q, theirs) = first_stderr_line(
        Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm",
                "-display",
                "none",
                "-nodefaults",
                "-serial",
            ])
            .arg(format!("tcp:127.0.0.1:{},server=on", free_port()))
            .stdin(Stdio::null()),
    );
    let _ = q.kill();
    let _ = q.wait();
    let norm = |l: &str, prefix: &str| {
        l.strip_prefix(prefix)
            .unwrap_or(l)
            .replace(|c: char| c.is_ascii_digit(), "N")
    };
    assert_eq!(
        norm(&line, "bulkhead: "),
        norm(&theirs, "qemu-system-x86_64: ")
    );
}
