//! The block graph from QEMU-shaped `blockdev-add` JSON: parsing (nested
//! and by-reference children, unknown members rejected), QEMU's error
//! wording, reference counting, queries and statistics.

mod common;

use std::collections::HashMap;
use std::fs::File;

use block_proc::block::Graph;
use common::*;
use ipc_proto::block::BlockdevOptions;

fn opts(json: &str) -> BlockdevOptions {
    serde_json::from_str(json).unwrap()
}

fn files(paths: &[&std::path::Path]) -> HashMap<String, File> {
    paths
        .iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn nested_qcow2_options_in_qemu_shape_parse_and_open() {
    let img = qcow2_image("g-nested.qcow2", "16M");
    let mut g = Graph::new();
    let o = opts(&qcow2_json(&img));
    let name = g.add(&o, files(&[&img])).unwrap();
    assert_eq!(name, "disk0");
    let nodes = g.query_nodes();
    let disk = nodes.iter().find(|n| n.node_name == "disk0").unwrap();
    assert_eq!(disk.drv, "qcow2");
    assert_eq!(disk.image.virtual_size, 16 << 20);
    assert_eq!(disk.image.format, "qcow2");
    assert!(nodes.iter().any(|n| n.drv == "file" && n.in_use));
}

#[test]
fn unknown_member_is_rejected() {
    let r: Result<BlockdevOptions, _> =
        serde_json::from_str(r#"{"driver":"file","node-name":"f","filename":"/x","foo":1}"#);
    assert!(r.unwrap_err().to_string().contains("unknown field `foo`"));
}

#[test]
fn flat_reference_to_existing_node_and_qemu_error_wording() {
    let img = raw_image("g-flat.raw", 1 << 20);
    let mut g = Graph::new();
    let f = opts(&format!(
        r#"{{"driver":"file","node-name":"f","filename":"{}"}}"#,
        img.display()
    ));
    g.add(&f, files(&[&img])).unwrap();
    assert_eq!(
        g.add(&f, files(&[&img])).unwrap_err().to_string(),
        "Duplicate nodes with node-name='f'"
    );
    g.add(
        &opts(r#"{"driver":"raw","node-name":"d","file":"f"}"#),
        HashMap::new(),
    )
    .unwrap();
    assert_eq!(
        g.add(
            &opts(r#"{"driver":"raw","node-name":"d2","file":"nosuch"}"#),
            HashMap::new()
        )
        .unwrap_err()
        .to_string(),
        "Cannot find device='nosuch' nor node-name='nosuch'"
    );
    assert_eq!(
        g.add(
            &opts(r#"{"driver":"raw","node-name":"d3","file":"f","offset":2000000}"#),
            HashMap::new()
        )
        .unwrap_err()
        .to_string(),
        "Offset (2000000) cannot be greater than size of the containing file (1048576)"
    );
    assert_eq!(
        g.del("f").unwrap_err().to_string(),
        "Block device f is in use"
    );
    assert_eq!(
        g.del("zz").unwrap_err().to_string(),
        "Failed to find node with node-name='zz'"
    );
    g.del("d").unwrap();
    g.del("f").unwrap();
    assert!(g.query_nodes().is_empty());
}

#[test]
fn missing_file_reports_could_not_open() {
    let mut g = Graph::new();
    let e = g
        .add(
            &opts(r#"{"driver":"file","node-name":"g","filename":"/nope"}"#),
            HashMap::new(),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Could not open '/nope': No such file or directory"
    );
}

#[test]
fn raw_file_is_not_a_qcow2_image() {
    let img = raw_image("g-notq.raw", 1 << 20);
    let mut g = Graph::new();
    let e = g
        .add(
            &opts(&format!(r#"{{"driver":"qcow2","node-name":"q","file":{{"driver":"file","filename":"{}"}}}}"#, img.display())),
            files(&[&img]),
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "Image is not in qcow2 format");
    assert!(g.query_nodes().is_empty());
}

#[test]
fn qcow2_backing_file_is_requested_then_opened_from_passed_fd() {
    let base = raw_image("g-base.raw", 4 << 20);
    let top = tmp("g-top.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&top)
        .status()
        .unwrap();
    assert!(st.success());
    let mut g = Graph::new();
    let o = opts(&qcow2_json(&top));
    let e = g.add(&o, files(&[&top])).unwrap_err();
    assert_eq!(
        format!("{e:?}"),
        format!("NeedFiles([{:?}])", base.display().to_string())
    );
    let mut fs = files(&[&top]);
    fs.insert(base.display().to_string(), File::open(&base).unwrap());
    g.add(&o, fs).unwrap();
    let disk = g
        .query_nodes()
        .into_iter()
        .find(|n| n.node_name == "disk0")
        .unwrap();
    assert_eq!(
        disk.backing_file.as_deref(),
        Some(base.display().to_string().as_str())
    );
}

#[test]
fn null_co_defaults_and_stats_start_at_zero() {
    let mut g = Graph::new();
    g.add(
        &opts(r#"{"driver":"null-co","node-name":"n"}"#),
        HashMap::new(),
    )
    .unwrap();
    let n = &g.query_nodes()[0];
    assert_eq!(n.image.virtual_size, 1 << 30);
    assert_eq!(n.file, "null-co://");
    let s = &g.query_stats()[0];
    assert_eq!(s.node_name, "n");
    assert_eq!(s.stats.rd_operations, 0);
}

#[test]
fn inline_backing_definition_replaces_the_header_chain() {
    let base = raw_image("g-inline-base.raw", 4 << 20);
    let top = tmp("g-inline-top.qcow2");
    // The header names a file that does not exist; the inline definition
    // wins, as in QEMU.
    let st = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/nonexistent/b.raw",
        ])
        .arg(&top)
        .arg("4M")
        .status()
        .unwrap();
    assert!(st.success());
    let o = opts(&format!(
        r#"{{"driver":"qcow2","node-name":"disk0",
            "file":{{"driver":"file","filename":"{}"}},
            "backing":{{"driver":"raw","file":{{"driver":"file","filename":"{}"}}}}}}"#,
        top.display(),
        base.display()
    ));
    let mut g = Graph::new();
    let mut fs = files(&[&top]);
    fs.insert(base.display().to_string(), File::open(&base).unwrap());
    g.add(&o, fs).unwrap();
    let disk = g
        .query_nodes()
        .into_iter()
        .find(|n| n.node_name == "disk0")
        .unwrap();
    assert_eq!(
        disk.backing_file.as_deref(),
        Some(base.display().to_string().as_str())
    );
    // A backing node by reference is refused with a clear message.
    let o = opts(&format!(
        r#"{{"driver":"qcow2","node-name":"disk1",
            "file":{{"driver":"file","filename":"{}"}},"backing":"disk0"}}"#,
        top.display()
    ));
    let e = g.add(&o, files(&[&top])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Backing nodes given by reference are not supported; define the backing image inline"
    );
}
