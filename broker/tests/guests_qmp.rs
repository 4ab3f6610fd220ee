//! Every test guest run through the real broker, its verdict read from the
//! serial log and the broker's exit status, and the VM lifecycle the guest
//! drives seen as QMP events with QEMU's data. Needs /dev/kvm.

mod common;
mod disk_common;

use common::{Bulkhead, Qmp};
use disk_common::{guest, SerialLog, GUEST_TIMEOUT};
use serde_json::json;

/// Starts `guest_name` with `extra` options and its serial output in a
/// file. It starts paused (`-S`) and runs once the client listens, so no
/// event of an early guest action is missed.
fn boot(guest_name: &str, extra: &[&str]) -> (Bulkhead, SerialLog, Qmp) {
    let dir = common::TempDir::new();
    let log_path = dir.0.join("serial.log");
    let serial = format!("file:{}", log_path.display());
    let kernel = guest(guest_name);
    let mut args = vec![
        "-kernel",
        kernel.as_str(),
        "-serial",
        serial.as_str(),
        "-m",
        "64M",
        "-S",
    ];
    args.extend_from_slice(extra);
    let b = Bulkhead::start(&args);
    let mut c = b.client();
    assert_eq!(c.ok("cont"), json!({}));
    c.event("RESUME");
    // Keep the directory (and the log) as long as the broker.
    std::mem::forget(dir);
    (b, SerialLog(log_path), c)
}

fn exit_code(b: &mut Bulkhead) -> Option<i32> {
    let child = b.child.as_mut().unwrap();
    disk_common::wait_exit_within(child, GUEST_TIMEOUT).code()
}

#[test]
fn smp_guest_sees_four_cpus_and_query_cpus_fast_lists_them() {
    let (mut b, log, mut c) = boot("smp", &["-smp", "4"]);
    let cpus = c.ok("query-cpus-fast");
    let cpus = cpus.as_array().unwrap().clone();
    assert_eq!(cpus.len(), 4);
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu["cpu-index"], json!(i));
        assert_eq!(cpu["target"], "x86_64");
    }
    assert_eq!(exit_code(&mut b), Some(1), "{}", log.text());
    assert!(log.has("VERDICT: PASS smp"), "{}", log.text());
    assert!(log.has("all 4 cpus online"), "{}", log.text());
}

#[test]
fn timer_guest_passes() {
    let (mut b, log, _c) = boot("timer", &[]);
    assert_eq!(exit_code(&mut b), Some(1), "{}", log.text());
    assert!(log.has("VERDICT: PASS timer"), "{}", log.text());
}

#[test]
fn reset_guest_resets_three_ways_with_guest_reset_events() {
    let (mut b, log, mut c) = boot("reset", &[]);
    for _ in 0..3 {
        let e = c.event("RESET");
        assert_eq!(e["data"], json!({"guest": true, "reason": "guest-reset"}));
    }
    assert_eq!(exit_code(&mut b), Some(1), "{}", log.text());
    assert!(log.has("VERDICT: PASS reset"), "{}", log.text());
}

#[test]
fn reset_with_no_reboot_is_a_shutdown() {
    let (mut b, _log, mut c) = boot("reset", &["-no-reboot"]);
    let e = c.event("SHUTDOWN");
    assert_eq!(e["data"], json!({"guest": true, "reason": "guest-reset"}));
    assert_eq!(exit_code(&mut b), Some(0));
}

#[test]
fn system_powerdown_reaches_the_guest_which_powers_off() {
    let (mut b, log, mut c) = boot("shutdown", &[]);
    log.wait_for("waiting for power button");
    assert_eq!(c.ok("system_powerdown"), json!({}));
    c.event("POWERDOWN");
    let e = c.event("SHUTDOWN");
    assert_eq!(
        e["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert_eq!(exit_code(&mut b), Some(0));
    assert!(log.has("power button pressed"), "{}", log.text());
}

#[test]
fn guest_poweroff_with_no_shutdown_stops_in_shutdown_state() {
    let (_b, _log, mut c) = boot("poweroff", &["-no-shutdown"]);
    let e = c.event("SHUTDOWN");
    assert_eq!(
        e["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    c.event("STOP");
    assert_eq!(
        c.ok("query-status"),
        json!({"running": false, "status": "shutdown"})
    );
    // QEMU: the machine must be reset before it can run again.
    let (class, _) = Qmp::error_of(&c.execute("cont", json!({})));
    assert_eq!(class, "GenericError");
    assert_eq!(c.ok("system_reset"), json!({}));
}

#[test]
fn crashing_guest_is_reported_with_its_rip_and_the_broker_stays_up() {
    let (_b, log, mut c) = boot("crash", &[]);
    let e = c.event("__org.bulkhead_GUEST_CRASHED");
    let detail = e["data"]["detail"].as_str().unwrap().to_owned();
    assert!(detail.to_lowercase().contains("rip"), "{detail}");
    c.event("STOP");
    assert_eq!(c.ok("query-status")["status"], "internal-error");
    assert!(log.has("about to crash"), "{}", log.text());
    assert!(c.ok("query-version").is_object());
}

#[test]
fn hello_guest_is_the_default_and_system_reset_restarts_it() {
    let dir = common::TempDir::new();
    let log = SerialLog(dir.0.join("serial.log"));
    let serial = format!("file:{}", log.0.display());
    let b = Bulkhead::start(&["-serial", serial.as_str(), "-m", "32M"]);
    let mut c = b.client();
    log.wait_for("Bulkhead test guest: hello");
    assert_eq!(c.ok("system_reset"), json!({}));
    let e = c.event("RESET");
    assert_eq!(
        e["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    while log.text().matches("Bulkhead test guest: hello").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", log.text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
