//! The introspection commands libvirt probes, answered with what bulkhead
//! has; where QEMU 10 has the same thing (`-M none`), the same answer or
//! error. Needs /dev/kvm and qemu-system-x86_64.

mod common;

use common::qemu::ours;
use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

/// QEMU 10's replies (`return` or `error`) to `cmds` on `-M none,accel=kvm`.
fn qemu(cmds: &[Value]) -> Vec<Value> {
    qemu_with(&[], cmds)
}

/// The same, with `extra` options.
fn qemu_with(extra: &[&str], cmds: &[Value]) -> Vec<Value> {
    let mut args = extra.to_vec();
    args.extend_from_slice(&["-M", "none,accel=kvm", "-S"]);
    common::qemu::replies(&args, cmds)
}

#[test]
fn probes_qemu_answers_alike_get_qemus_answers() {
    let cmds = [
        json!({"execute": "query-target"}),
        json!({"execute": "query-kvm"}),
        json!({"execute": "query-iothreads"}),
        json!({"execute": "query-sev-capabilities"}),
        json!({"execute": "device-list-properties", "arguments": {"typename": "frob"}}),
        json!({"execute": "qom-list-properties", "arguments": {"typename": "frob"}}),
        json!({"execute": "qom-get", "arguments": {"path": "/nope", "property": "type"}}),
        json!({"execute": "query-uuid"}),
        json!({"execute": "query-command-line-options", "arguments": {"option": "frob"}}),
    ];
    let b = Bulkhead::start(&["-M", "none", "-S"]);
    let mut q = b.client();
    assert_eq!(ours(&mut q, &cmds), qemu(&cmds));
}

#[test]
fn probes_answer_what_bulkhead_has() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let machines = q.ok("query-machines");
    let names: Vec<&str> = machines
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["microvm", "none"]);
    assert_eq!(machines[0]["is-default"], true);
    let cpus = q.ok("query-cpu-definitions");
    let models: Vec<&str> = cpus
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["host", "max", "qemu64"]);
    assert_eq!(q.ok("query-tpm-models"), json!([]));
    assert_eq!(q.ok("query-tpm-types"), json!([]));
    let caps = q.ok("query-migrate-capabilities");
    assert_eq!(caps.as_array().unwrap().len(), 22);
    assert!(caps.as_array().unwrap().iter().all(|c| c["state"] == false));
    let r = q.execute("qom-list-types", json!({"implements": "virtio-device"}));
    let types: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["virtio-blk-device", "vhost-user-blk", "virtio-scsi-device"]
    );
    let r = q.execute(
        "device-list-properties",
        json!({"typename": "virtio-blk-device"}),
    );
    let props: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(props, ["drive", "serial", "num-queues", "queue-size"]);
    let r = q.execute(
        "device-list-properties",
        json!({"typename": "virtio-device"}),
    );
    assert_eq!(
        Qmp::error_of(&r).1,
        "Parameter 'typename' expects a non-abstract device type"
    );
    let r = q.execute("qom-get", json!({"path": "/machine", "property": "type"}));
    assert_eq!(r["return"], "microvm-machine");
    let r = q.execute("query-command-line-options", json!({"option": "name"}));
    let params: Vec<&str> = r["return"][0]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["guest", "process", "debug-threads"]);
    let r = q.execute("qom-list", json!({"path": "/machine"}));
    assert!(r["return"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "peripheral"));
}

#[test]
fn cpu_model_expansion_answers_as_qemu_for_bulkheads_models() {
    let errors = [
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "full", "model": {"name": "frob"}}}),
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "bogus", "model": {"name": "host"}}}),
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": "host", "props": {"frob": true}}}}),
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": "host", "props": {"sse3": "x"}}}}),
    ];
    let b = Bulkhead::start(&["-M", "none", "-S"]);
    let mut q = b.client();
    assert_eq!(ours(&mut q, &errors), qemu(&errors));
    // Each feature bulkhead reports has QEMU's value for the same model and
    // props (QEMU lists more properties; bulkhead lists the features it knows).
    let expansions = [
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "full", "model": {"name": "qemu64"}}}),
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": "qemu64", "props": {"popcnt": true, "sse3": false}}}}),
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "full", "model": {"name": "host", "props": {"avx": false}}}}),
        json!({"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": "max"}}}),
    ];
    let theirs = qemu(&expansions);
    let mine = ours(&mut q, &expansions);
    for (m, t) in mine.iter().zip(&theirs) {
        assert_eq!(m["return"]["model"]["name"], t["return"]["model"]["name"]);
        let props = m["return"]["model"]["props"].as_object().unwrap();
        assert!(props.len() > 100, "{m}");
        // Where bulkhead's host vCPU differs from QEMU's (the expansion tells
        // the truth about bulkhead's): QEMU adds ERMS and FSRM from the host's
        // own CPUID when KVM does not report them, and drops TOPOEXT.
        let known = ["erms", "fsrm", "topoext"];
        let differ: Vec<String> = props
            .iter()
            .filter(|(k, v)| t["return"]["model"]["props"][k.as_str()] != **v)
            .filter(|(k, _)| {
                m["return"]["model"]["name"] == "qemu64" || !known.contains(&k.as_str())
            })
            .map(|(k, v)| {
                format!(
                    "{k}: ours {v}, QEMU {}",
                    t["return"]["model"]["props"][k.as_str()]
                )
            })
            .collect();
        assert!(
            differ.is_empty(),
            "{}: {differ:?}",
            m["return"]["model"]["name"]
        );
    }
}

#[test]
fn cpu_definitions_list_the_features_kvm_lacks_as_qemu_does() {
    let cmd = [json!({"execute": "query-cpu-definitions"})];
    let b = Bulkhead::start(&["-M", "none", "-S"]);
    let mut q = b.client();
    let unavailable = |reply: &Value, model: &str| -> Vec<String> {
        let mut v: Vec<String> = reply["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == model)
            .unwrap_or_else(|| panic!("no {model} in {reply}"))["unavailable-features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let (ours, theirs) = (&ours(&mut q, &cmd)[0], &qemu(&cmd)[0]);
    for model in ["host", "max", "qemu64"] {
        assert_eq!(
            unavailable(ours, model),
            unavailable(theirs, model),
            "{model}"
        );
    }
}

#[test]
fn secret_objects_are_kept_and_shown_in_qom_as_qemu_shows_them() {
    let secret = ["-object", "secret,id=sec0,data=letmein,format=raw"];
    let mut cmds = vec![
        json!({"execute": "qom-list", "arguments": {"path": "/objects"}}),
        json!({"execute": "qom-list", "arguments": {"path": "/objects/sec0"}}),
        json!({"execute": "qom-list", "arguments": {"path": "/objects/nope"}}),
    ];
    for p in ["type", "iv", "keyid", "format", "file", "data"] {
        cmds.push(
            json!({"execute": "qom-get", "arguments": {"path": "/objects/sec0", "property": p}}),
        );
    }
    let mut args = vec!["-M", "none", "-S"];
    args.extend(secret);
    let b = Bulkhead::start(&args);
    let mut q = b.client();
    assert_eq!(ours(&mut q, &cmds), qemu_with(&secret, &cmds));
}
