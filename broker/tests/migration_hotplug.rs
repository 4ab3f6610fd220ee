//! Hotplug while migrating out is refused with QEMU 10's messages
//! (`qdev_device_add_from_qdict` / `qdev_unplug`, checked against
//! `qemu-system-x86_64` given the same commands during a rate-limited
//! migration): `device_add` of any device model — a CPU, a disk, even
//! with a duplicate id — and `device_del`; an unknown model or device
//! keeps its own error. Once the migration is cancelled the same
//! commands work. Needs /dev/kvm.

mod common;
mod disk_common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Bulkhead, Qmp, TempDir};
use serde_json::{json, Value};

const NO_ADD: &str = "device_add not allowed while migrating";
const NO_DEL: &str = "device_del not allowed while migrating";

/// A migration target that reads (and drops) whatever comes, until the
/// source hangs up.
fn sink(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else { return };
        let mut buf = vec![0u8; 64 << 10];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    });
}

fn wait_migration(q: &mut Qmp, want: &str) {
    let start = Instant::now();
    loop {
        let r = q.ok("query-migrate");
        if r["status"] == want {
            return;
        }
        assert!(start.elapsed() < common::TIMEOUT, "never {want}: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error(q: &mut Qmp, name: &str, args: Value) -> (String, String) {
    let r = q.execute(name, args);
    Qmp::error_of(&r)
}

#[test]
fn device_add_and_device_del_are_refused_while_migrating_out() {
    let dir = TempDir::new();
    let img0 = disk_common::raw_image_named(&dir.0, "d0.raw");
    let img1 = disk_common::raw_image_named(&dir.0, "d1.raw");
    let bd = |name: &str, img: &Path| {
        json!({"driver": "raw", "node-name": name,
               "file": {"driver": "file", "filename": img}})
        .to_string()
    };
    let (bd0, bd1) = (bd("d0", &img0), bd("d1", &img1));
    let kernel = disk_common::guest("timer");
    let b = Bulkhead::start(&[
        "-kernel",
        &kernel,
        "-m",
        "256M",
        "-S",
        "-cpu",
        "qemu64",
        "-smp",
        "1,maxcpus=2",
        "-blockdev",
        &bd0,
        "-blockdev",
        &bd1,
        "-device",
        "virtio-blk-device,drive=d0,id=vd0",
    ]);
    let mut q = b.client();
    let path = dir.0.join("sink.sock");
    sink(&path);
    // 1000 bytes/s: the first pass alone outlasts the test.
    let r = q.execute("migrate-set-parameters", json!({"max-bandwidth": 1000}));
    assert_eq!(r, json!({"return": {}}));
    let uri = format!("unix:{}", path.display());
    assert_eq!(
        q.execute("migrate", json!({"uri": uri})),
        json!({"return": {}})
    );
    wait_migration(&mut q, "active");

    let cpu = json!({"driver": "qemu64-x86_64-cpu", "socket-id": 1, "core-id": 0,
                     "thread-id": 0});
    let generic = |m: &str| ("GenericError".to_owned(), m.to_owned());
    assert_eq!(error(&mut q, "device_add", cpu.clone()), generic(NO_ADD));
    let disk = json!({"driver": "virtio-blk-device", "drive": "d1", "id": "vd1"});
    assert_eq!(error(&mut q, "device_add", disk.clone()), generic(NO_ADD));
    // QEMU refuses before it looks at the id or the properties.
    let dup = json!({"driver": "virtio-blk-device", "drive": "nope", "id": "vd0"});
    assert_eq!(error(&mut q, "device_add", dup), generic(NO_ADD));
    assert_eq!(
        error(&mut q, "device_add", json!({"driver": "foo"})),
        generic("'foo' is not a valid device model name")
    );
    assert_eq!(
        error(&mut q, "device_del", json!({"id": "vd0"})),
        generic(NO_DEL)
    );
    assert_eq!(
        error(&mut q, "device_del", json!({"id": "nope"})),
        (
            "DeviceNotFound".to_owned(),
            "Device 'nope' not found".to_owned()
        )
    );
    let slots = q.ok("query-hotpluggable-cpus");
    assert!(
        slots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.get("qom-path").is_some())
            .count()
            == 1,
        "a CPU was plugged: {slots}"
    );

    q.ok("migrate_cancel");
    wait_migration(&mut q, "cancelled");
    assert_eq!(
        q.execute("device_del", json!({"id": "vd0"})),
        json!({"return": {}})
    );
    assert_eq!(q.execute("device_add", disk), json!({"return": {}}));
}
