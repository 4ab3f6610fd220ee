//! A VM that never ran (`-S`, `prelaunch`) migrates with its devices, as
//! in QEMU: the source's devices, which would join vcpu-proc at its first
//! `cont`, join at `migrate`, so the guest memory (DSDT, kernel command
//! line) and the device state name them and the target (whose devices
//! exist from its start) takes the state; the vCPUs arrive in their boot
//! state, and the target's `cont` boots the guest there, once. Two
//! brokers as processes, a disk on shared storage and a NIC on a TAP of
//! each side; needs /dev/kvm and root (TAPs).

mod common;
mod disk_common;
mod net_common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::migration::{status, wait_migration};
use common::{Bulkhead, Qmp, TempDir, TIMEOUT};
use disk_common::{guest, SerialLog};
use net_common::Tap;
use serde_json::json;

/// The `blk-loop` guest with disk `vda` on `img` and NIC `nic0` on `tap`.
fn vm(dir: &Path, name: &str, img: &Path, tap: &Tap, extra: &[&str]) -> (Bulkhead, SerialLog) {
    let log = SerialLog(dir.join(format!("{name}.log")));
    let serial = format!("file:{}", log.0.display());
    let kernel = guest("blk-loop");
    let blockdev = json!({"driver": "raw", "node-name": "d0",
        "file": {"driver": "file", "filename": img}})
    .to_string();
    let netdev = format!("tap,id=n0,ifname={},script=no,downscript=no", tap.name);
    let mut args = vec![
        "-kernel",
        kernel.as_str(),
        "-m",
        "64M",
        "-serial",
        serial.as_str(),
        "-blockdev",
        blockdev.as_str(),
        "-device",
        "virtio-blk-device,drive=d0,id=vda",
        "-netdev",
        netdev.as_str(),
        "-device",
        "virtio-net-device,netdev=n0,id=nic0,mac=52:54:00:12:34:56",
    ];
    args.extend_from_slice(extra);
    (Bulkhead::start(&args), log)
}

#[test]
fn a_vm_that_never_ran_migrates_with_its_disk_and_nic_and_boots_on_the_target() {
    let dir = TempDir::new();
    let img = disk_common::raw_image(&dir.0);
    let (src_tap, dst_tap) = (Tap::create("ps"), Tap::create("pd"));
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let (src, src_log) = vm(&dir.0, "src", &img, &src_tap, &["-S"]);
    let (dst, dst_log) = vm(
        &dir.0,
        "dst",
        &img,
        &dst_tap,
        &["-incoming", &incoming, "-S"],
    );
    let mut s = src.client();
    let mut d = dst.client();
    assert_eq!(status(&mut s), "prelaunch");
    assert_eq!(status(&mut d), "inmigrate");
    assert_eq!(
        s.execute("migrate", json!({"uri": incoming})),
        json!({"return": {}})
    );
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    let di = wait_migration(&mut d, &["completed", "failed"]);
    assert_eq!(di["status"], "completed", "{di}");
    // QEMU 10 (qemu-system-x86_64, the same two -S machines): the source
    // is `postmigrate`; the target takes the source's `prelaunch` (the
    // migration's global state) and stays in it until `cont`.
    assert_eq!(status(&mut s), "postmigrate");
    let start = Instant::now();
    while status(&mut d) == "inmigrate" {
        assert!(start.elapsed() < TIMEOUT, "the target stays in inmigrate");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut d), "prelaunch");
    assert!(!q_running(&mut d), "the target ran before cont");
    // Its RAM is the migrated guest: a disk added now cannot join it as a
    // never-run VM's would (that reloads the guest); QEMU's bus answer.
    let r = d.execute(
        "blockdev-add",
        json!({"driver": "null-co", "node-name": "d9"}),
    );
    assert_eq!(r, json!({"return": {}}));
    let r = d.execute(
        "device_add",
        json!({"driver": "virtio-blk-device", "drive": "d9", "id": "vd9"}),
    );
    let (class, desc) = Qmp::error_of(&r);
    assert_eq!(class, "GenericError", "{r}");
    assert!(
        desc.starts_with("Bus 'virtio-mmio-bus.")
            && desc.ends_with("' does not support hotplugging"),
        "{r}"
    );
    assert!(!src_log.has("Bulkhead test guest"), "{}", src_log.text());
    d.ok("cont");
    assert_eq!(status(&mut d), "running");
    // The guest boots on the target, finds its disk and verifies passes.
    dst_log.wait_passes(2);
    assert_eq!(
        dst_log.text().matches("Bulkhead test guest").count(),
        1,
        "{}",
        dst_log.text()
    );
    assert!(!src_log.has("PASS"), "{}", src_log.text());
}

fn q_running(q: &mut Qmp) -> bool {
    q.ok("query-status")["running"].as_bool().unwrap()
}
