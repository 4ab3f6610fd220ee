//! The quorum driver on real files: votes, reports, rewrites, fifo,
//! writes and `x-blockdev-change` through the graph.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

use ipc_proto::block::{BlockEvent, BlockdevOptions, QuorumReportBad};
use serde_json::json;
use vmm_sys_util::tempfile::TempFile;

use crate::block::{iobuf, Graph};
use crate::vhost::export::ExportEvent;

const SIZE: u64 = 1 << 20;

struct Setup {
    graph: Graph,
    files: Vec<TempFile>,
    events: mpsc::Receiver<ExportEvent>,
}

/// Raw children `c0..cN` over temp files holding 0x11, under quorum `q`
/// with `extra` options.
fn setup(n: usize, extra: serde_json::Value) -> Setup {
    let (tx, events) = mpsc::channel();
    let mut graph = Graph::new();
    graph.set_events(tx);
    let mut files = Vec::new();
    let mut names = Vec::new();
    for i in 0..n {
        let t = TempFile::new().unwrap();
        t.as_file().set_len(SIZE).unwrap();
        t.as_file().write_all_at(&[0x11; 4096], 0).unwrap();
        let path = t.as_path().to_string_lossy().into_owned();
        let name = format!("c{i}");
        let o: BlockdevOptions = serde_json::from_value(json!({"driver": "raw",
            "node-name": name, "file": {"driver": "file", "filename": path}}))
        .unwrap();
        let f = File::options().read(true).write(true).open(&path).unwrap();
        graph.add(&o, HashMap::from([(path, f)])).unwrap();
        names.push(name);
        files.push(t);
    }
    let mut q = json!({"driver": "quorum", "node-name": "q", "children": names});
    for (k, v) in extra.as_object().unwrap() {
        q[k] = v.clone();
    }
    let o: BlockdevOptions = serde_json::from_value(q).unwrap();
    graph.add(&o, HashMap::new()).unwrap();
    Setup {
        graph,
        files,
        events,
    }
}

impl Setup {
    fn read(&self, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let q = self.graph.get("q").unwrap();
        q.read(&[iobuf::slice_of(&mut buf)], 0, len as u64)
            .map(|()| buf)
    }
    fn corrupt(&self, i: usize, byte: u8) {
        self.files[i]
            .as_file()
            .write_all_at(&[byte; 4096], 0)
            .unwrap();
    }
    fn content(&self, i: usize) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        self.files[i].as_file().read_exact_at(&mut b, 0).unwrap();
        b
    }
    fn events(&self) -> Vec<BlockEvent> {
        self.events
            .try_iter()
            .filter_map(|e| match e {
                ExportEvent::Block(b) => Some(b),
                _ => None,
            })
            .collect()
    }
}

fn bad(node: &str) -> BlockEvent {
    BlockEvent::QuorumReportBad(QuorumReportBad {
        op: "read".into(),
        error: None,
        node_name: node.into(),
        sector: 0,
        sectors_count: 8,
    })
}

#[test]
fn a_corrupted_child_is_outvoted_and_reported_by_name() {
    let s = setup(3, json!({"vote-threshold": 2}));
    s.corrupt(2, 0x99);
    assert_eq!(s.read(4096).unwrap(), vec![0x11; 4096]);
    assert_eq!(s.events(), vec![bad("c2")]);
    // Without rewrite-corrupted the child stays as it is.
    assert_eq!(s.content(2), vec![0x99; 4096]);
}

#[test]
fn rewrite_corrupted_repairs_the_outvoted_child() {
    let s = setup(3, json!({"vote-threshold": 2, "rewrite-corrupted": true}));
    s.corrupt(0, 0x99);
    assert_eq!(s.read(4096).unwrap(), vec![0x11; 4096]);
    assert_eq!(s.content(0), vec![0x11; 4096]);
    assert_eq!(s.events(), vec![bad("c0")]);
    assert_eq!(s.read(4096).unwrap(), vec![0x11; 4096]);
    assert_eq!(s.events(), vec![], "repaired: nothing to report");
}

#[test]
fn no_quorum_is_an_io_error_and_a_failure_event() {
    let s = setup(3, json!({"vote-threshold": 2}));
    s.corrupt(1, 0x22);
    s.corrupt(2, 0x33);
    let e = s.read(4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        s.events(),
        vec![BlockEvent::QuorumFailure {
            reference: "q".into(),
            sector: 0,
            sectors_count: 8
        }]
    );
}

#[test]
fn fifo_answers_from_the_first_child_without_voting() {
    let s = setup(2, json!({"vote-threshold": 1, "read-pattern": "fifo"}));
    s.corrupt(1, 0x22);
    assert_eq!(s.read(4096).unwrap(), vec![0x11; 4096]);
    assert_eq!(s.events(), vec![]);
}

#[test]
fn blkverify_refuses_a_mismatch_instead_of_exiting() {
    let s = setup(2, json!({"vote-threshold": 2, "blkverify": true}));
    assert_eq!(s.read(4096).unwrap(), vec![0x11; 4096]);
    s.corrupt(1, 0x22);
    assert_eq!(s.read(4096).unwrap_err().raw_os_error(), Some(libc::EIO));
}

#[test]
fn writes_reach_every_child() {
    let s = setup(3, json!({"vote-threshold": 3}));
    let mut data = vec![0x5au8; 4096];
    let q = s.graph.get("q").unwrap();
    q.write(&[iobuf::slice_of(&mut data)], 0, 4096).unwrap();
    q.flush().unwrap();
    for i in 0..3 {
        assert_eq!(s.content(i), vec![0x5a; 4096], "child {i}");
    }
    assert_eq!(s.events(), vec![]);
}

#[test]
fn x_blockdev_change_numbers_children_as_qemu_and_keeps_the_threshold() {
    let mut s = setup(3, json!({"vote-threshold": 2}));
    let names = |g: &Graph| {
        g.get("q")
            .unwrap()
            .driver
            .as_quorum()
            .unwrap()
            .child_names()
    };
    s.graph.change_child("q", Some("children.1"), None).unwrap();
    assert!(!s.graph.get("c1").unwrap().in_use());
    s.graph.change_child("q", None, Some("c1")).unwrap();
    assert_eq!(names(&s.graph), ["children.0", "children.2", "children.3"]);
    s.graph.change_child("q", Some("children.0"), None).unwrap();
    let e = s
        .graph
        .change_child("q", Some("children.2"), None)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "The number of children cannot be lower than the vote threshold 2"
    );
    // The remaining children still vote: c2 and c1 (re-added) agree.
    s.corrupt(0, 0x77);
    assert_eq!(s.read(4096).unwrap(), vec![0x11; 4096]);
    assert_eq!(s.events(), vec![]);
}

#[test]
fn the_json_file_name_lists_members_in_qemus_order() {
    let s = setup(
        2,
        json!({"vote-threshold": 1, "read-pattern": "fifo", "rewrite-corrupted": false}),
    );
    let name = s.graph.get("q").unwrap().driver.image_info().filename;
    let order: Vec<usize> = [
        "read-pattern",
        "children",
        "driver",
        "rewrite-corrupted",
        "vote-threshold",
    ]
    .iter()
    .map(|k| name.find(&format!("\"{k}\"")).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{name}");
}

/// A child whose every request fails with EIO.
struct Failing;

impl crate::block::Driver for Failing {
    fn drv(&self) -> &'static str {
        "null-co"
    }
    fn size(&self) -> u64 {
        SIZE
    }
    fn read(&self, _: crate::block::Bufs<'_, '_>, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn write(&self, _: crate::block::Bufs<'_, '_>, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn flush(&self) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn image_info(&self) -> ipc_proto::block::ImageInfo {
        crate::block::null::NullDriver::new(SIZE).image_info()
    }
    fn children(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Quorum `q` over the file children of `s` and a failing child `bad`.
fn with_failing_child(
    s: &Setup,
    threshold: i64,
) -> (super::QuorumDriver, mpsc::Receiver<ExportEvent>) {
    let (tx, rx) = mpsc::channel();
    let o = match serde_json::from_value(json!({"driver": "quorum", "node-name": "q",
        "children": ["c0", "c1", "bad"], "vote-threshold": threshold}))
    .unwrap()
    {
        BlockdevOptions::Quorum(q) => q,
        other => panic!("{other:?}"),
    };
    let cfg = super::Config::check(&o).unwrap();
    let bad = std::sync::Arc::new(crate::block::Node::new(
        "bad".into(),
        Box::new(Failing),
        false,
    ));
    let kids = vec![s.graph.get("c0").unwrap(), s.graph.get("c1").unwrap(), bad];
    (
        super::QuorumDriver::new("q".into(), &o, cfg, kids, SIZE, Some(tx)),
        rx,
    )
}

fn block_events(rx: &mpsc::Receiver<ExportEvent>) -> Vec<BlockEvent> {
    rx.try_iter()
        .filter_map(|e| match e {
            ExportEvent::Block(b) => Some(b),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failing_child_is_reported_with_its_error_and_the_threshold_decides() {
    use crate::block::Driver;
    let s = setup(2, json!({"vote-threshold": 1}));
    let (q, rx) = with_failing_child(&s, 2);
    let mut buf = vec![0u8; 4096];
    q.read(&[iobuf::slice_of(&mut buf)], 0).unwrap();
    assert_eq!(buf, vec![0x11; 4096]);
    let io_bad = |op: &str, sector, sectors_count| {
        BlockEvent::QuorumReportBad(QuorumReportBad {
            op: op.into(),
            error: Some("Input/output error".into()),
            node_name: "bad".into(),
            sector,
            sectors_count,
        })
    };
    assert_eq!(block_events(&rx), vec![io_bad("read", 0, 8)]);
    // Two of three writes succeed: enough for threshold 2.
    q.write(&[iobuf::slice_of(&mut buf)], 4096).unwrap();
    assert_eq!(block_events(&rx), vec![io_bad("write", 8, 8)]);
    q.flush().unwrap();
    assert_eq!(block_events(&rx), vec![io_bad("flush", 0, 0)]);

    // Threshold 3: the write fails with the child's errno.
    let (q, rx) = with_failing_child(&s, 3);
    let e = q.write(&[iobuf::slice_of(&mut buf)], 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        block_events(&rx),
        vec![
            io_bad("write", 0, 8),
            BlockEvent::QuorumFailure {
                reference: "q".into(),
                sector: 0,
                sectors_count: 8
            }
        ]
    );
    assert_eq!(q.flush().unwrap_err().raw_os_error(), Some(libc::EIO));
}
