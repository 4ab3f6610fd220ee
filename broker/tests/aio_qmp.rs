//! The `file` driver's `aio` option through `blockdev-add` on the real
//! `bulkhead` (block-proc sandboxed), its errors compared with what
//! qemu-storage-daemon says for the same options. Needs /dev/kvm (the
//! broker always starts vcpu-proc) and qemu-storage-daemon.

mod common;

use std::process::Command;

use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

/// qemu-storage-daemon's error for `--blockdev JSON` (it exits on it).
fn qsd_error(opts: &Value) -> String {
    let arg = opts.to_string();
    let out = Command::new("timeout")
        .args(["10", "qemu-storage-daemon", "--blockdev", &arg])
        .output()
        .expect("qemu-storage-daemon is installed");
    assert!(!out.status.success(), "qsd accepted {arg}");
    let err = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("qemu-storage-daemon: --blockdev {arg}: ");
    err.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("unexpected qsd output: {err}"))
        .to_owned()
}

fn file_node(img: &std::path::Path, extra: Value) -> Value {
    let mut o = json!({"driver": "file", "node-name": "f", "filename": img});
    if let (Some(o), Value::Object(e)) = (o.as_object_mut(), extra) {
        o.extend(e);
    }
    o
}

fn add_error(q: &mut Qmp, args: Value) -> String {
    let r = q.execute("blockdev-add", args.clone());
    let (class, desc) = Qmp::error_of(&r);
    assert_eq!(class, "GenericError", "{args}");
    desc
}

#[test]
fn bad_aio_settings_get_the_messages_qemu_storage_daemon_gives() {
    let b = Bulkhead::start(&[]);
    let img = b.dir.0.join("aio.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut q = b.client();
    for extra in [
        json!({"aio": "native"}),
        json!({"aio": "native", "cache": {"direct": false}}),
        json!({"aio": "foo"}),
        json!({"aio": 5}),
        json!({"aio": "io_uring", "cache": {"direct": "yes"}}),
    ] {
        let opts = file_node(&img, extra);
        assert_eq!(add_error(&mut q, opts.clone()), qsd_error(&opts), "{opts}");
    }
    // With O_DIRECT, QEMU (built with Linux AIO) takes aio=native; this
    // build has none and says so the way QEMU does without it.
    let opts = file_node(&img, json!({"aio": "native", "cache": {"direct": true}}));
    assert_eq!(
        add_error(&mut q, opts),
        "aio=native was specified, but is not supported in this build."
    );
    // The engines it has are taken, and the failed attempts left nothing.
    // (One image each: a second writable node on the same image would be
    // refused its "write" lock, as in QEMU.)
    for (i, aio) in ["io_uring", "threads"].iter().enumerate() {
        let img = b.dir.0.join(format!("aio-{aio}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let opts = json!({"driver": "raw", "node-name": format!("d{i}"),
            "file": {"driver": "file", "filename": img, "aio": aio,
                     "cache": {"direct": true}}});
        assert_eq!(q.execute("blockdev-add", opts), json!({"return": {}}));
    }
    let nodes = q.ok("query-named-block-nodes");
    assert_eq!(nodes.as_array().unwrap().len(), 4, "{nodes}");
}
