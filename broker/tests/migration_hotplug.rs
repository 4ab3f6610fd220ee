//! Hotplug while migrating out is refused with QEMU 10's messages
//! (`qdev_device_add_from_qdict` / `qdev_unplug`): `device_add` of any
//! device model — a CPU, a disk, even with a duplicate id — compared
//! with `qemu-system-x86_64` given the same commands during a
//! rate-limited migration, and `device_del` of a CPU (a disk's bus takes
//! no hot-unplug, refused first as in QEMU); an unknown model or device
//! keeps its own error. Once the migration is cancelled hotplug works
//! again (the disk the never-run VM had when `migrate` attached it is no
//! longer removable, as in QEMU). Needs /dev/kvm.

mod common;
mod disk_common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;

use common::migration::wait_migration;
use common::qemu::Peer;
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

/// Starts a migration at 1000 bytes/s (the first pass alone outlasts
/// the test) into a [`sink`] at `path`, and waits until it is active.
fn migrate_slowly_into_sink(q: &mut Qmp, path: &Path) {
    sink(path);
    let r = q.execute("migrate-set-parameters", json!({"max-bandwidth": 1000}));
    assert_eq!(r, json!({"return": {}}));
    let uri = format!("unix:{}", path.display());
    assert_eq!(
        q.execute("migrate", json!({"uri": uri})),
        json!({"return": {}})
    );
    wait_migration(q, &["active"]);
}

fn error(q: &mut Qmp, name: &str, args: Value) -> (String, String) {
    let r = q.execute(name, args);
    Qmp::error_of(&r)
}

/// QEMU's replies to `cmds` sent while it (microvm, the same devices)
/// migrates at 1000 bytes/s into a sink.
fn qemu_while_migrating(dir: &Path, cmds: &[Value]) -> Vec<Value> {
    let (_qemu, mut q) = Peer::microvm(
        &dir.join("qemu-qmp.sock"),
        &[
            "-m",
            "256M",
            "-S",
            "-blockdev",
            "driver=null-co,node-name=d0",
            "-blockdev",
            "driver=null-co,node-name=d1",
            "-device",
            "virtio-blk-device,drive=d0,id=vd0",
        ],
    );
    migrate_slowly_into_sink(&mut q, &dir.join("qemu-sink.sock"));
    common::qemu::ours(&mut q, cmds)
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
        "1,maxcpus=3",
        "-blockdev",
        &bd0,
        "-blockdev",
        &bd1,
        "-device",
        "virtio-blk-device,drive=d0,id=vd0",
    ]);
    let mut q = b.client();
    // -smp 1,maxcpus=3: one socket of three cores.
    let cpu = |core: u32, id: &str| {
        json!({"driver": "qemu64-x86_64-cpu", "socket-id": 0, "core-id": core,
               "thread-id": 0, "id": id})
    };
    // A CPU plugged before the migration, to be refused its unplug.
    assert_eq!(q.execute("device_add", cpu(1, "c1")), json!({"return": {}}));
    migrate_slowly_into_sink(&mut q, &dir.0.join("sink.sock"));

    let add = |args: Value| json!({"execute": "device_add", "arguments": args});
    let disk = json!({"driver": "virtio-blk-device", "drive": "d1", "id": "vd1"});
    let same_as_qemu = [
        add(cpu(2, "c2")),
        add(disk.clone()),
        // QEMU refuses before it looks at the id or the properties.
        add(json!({"driver": "virtio-blk-device", "drive": "nope", "id": "vd0"})),
        add(json!({"driver": "foo"})),
        add(json!({"id": "x"})),
    ];
    let ours = common::qemu::ours(&mut q, &same_as_qemu);
    let theirs = qemu_while_migrating(&dir.0, &same_as_qemu);
    assert_eq!(ours, theirs);
    let refused = json!({"error": {"class": "GenericError", "desc": NO_ADD}});
    assert_eq!(ours[..3], [refused.clone(), refused.clone(), refused]);

    let generic = |m: &str| ("GenericError".to_owned(), m.to_owned());
    assert_eq!(
        error(&mut q, "device_del", json!({"id": "c1"})),
        generic(NO_DEL)
    );
    // vd0 joined the VM at `migrate` (a never-run VM's devices do): its
    // bus takes no hot-unplug, which QEMU's `qdev_unplug` says before it
    // looks at the migration.
    let no_hotplug = |(class, desc): (String, String)| {
        class == "GenericError"
            && desc.starts_with("Bus 'virtio-mmio-bus.")
            && desc.ends_with("' does not support hotplugging")
    };
    let r = error(&mut q, "device_del", json!({"id": "vd0"}));
    assert!(no_hotplug(r.clone()), "{r:?}");
    assert_eq!(
        error(&mut q, "device_del", json!({"id": "nope"})),
        (
            "DeviceNotFound".to_owned(),
            "Device 'nope' not found".to_owned()
        )
    );
    let slots = q.ok("query-hotpluggable-cpus");
    let plugged = slots
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("qom-path").is_some())
        .count();
    assert_eq!(plugged, 2, "the CPUs changed while migrating: {slots}");

    q.ok("migrate_cancel");
    wait_migration(&mut q, &["cancelled"]);
    assert_eq!(q.execute("device_add", cpu(2, "c2")), json!({"return": {}}));
    // `migrate` attached the never-run VM's devices (they are in the
    // migrated guest memory and state): vd0 is now a device of the bus,
    // which takes no hot-unplug, QEMU's answer for it even in prelaunch.
    let r = error(&mut q, "device_del", json!({"id": "vd0"}));
    assert!(no_hotplug(r.clone()), "{r:?}");
    // A device added in prelaunch now still joins at the first cont, and
    // can go before it.
    assert_eq!(q.execute("device_add", disk), json!({"return": {}}));
    assert_eq!(
        q.execute("device_del", json!({"id": "vd1"})),
        json!({"return": {}})
    );
}
