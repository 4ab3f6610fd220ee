//! Block jobs on the block layer alone: a stream never overwrites what a
//! writer put into the top image while the job ran (its tap serialises
//! guest writes against its copies), and a mirror's target ends equal to
//! its source although a writer kept changing it (its dirty bitmap).

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use block_proc::block::iobuf::slice_of;
use block_proc::block::{Graph, Node};
use block_proc::jobs::Jobs;
use common::*;
use ipc_proto::block::BlockdevOptions;
use ipc_proto::block_jobs::{JobEvent, JobKind, JobOp, JobSpec, MirrorSync, OnError};

const SIZE: u64 = 4 << 20;
const BLOCK: u64 = 4096;

fn files(paths: &[&std::path::Path]) -> HashMap<String, File> {
    paths
        .iter()
        .map(|p| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap();
            (p.display().to_string(), f)
        })
        .collect()
}

fn qemu(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?}");
}

/// Writes 0x55 blocks at pseudo-random places until `stop`; returns them.
fn writer(
    node: Arc<Node>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut done = Vec::new();
        let mut b = vec![0x55u8; BLOCK as usize];
        while !stop.load(Ordering::SeqCst) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (SIZE / BLOCK)) * BLOCK;
            node.write(&[slice_of(&mut b)], off, BLOCK).unwrap();
            done.push(off);
            std::thread::sleep(pause);
        }
        done
    })
}

fn read_all(node: &Node) -> Vec<u8> {
    let mut v = vec![0u8; SIZE as usize];
    node.read(&[slice_of(&mut v)], 0, SIZE).unwrap();
    v
}

fn finished(rx: &mpsc::Receiver<JobEvent>) -> JobEvent {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            e @ JobEvent::Finished { .. } => return e,
            JobEvent::Progress { .. } | JobEvent::Ready { .. } | JobEvent::Error { .. } => {}
        }
    }
}

#[test]
fn stream_never_overwrites_what_a_writer_put_into_the_top_during_the_job() {
    let base = tmp("jobs-base.qcow2");
    let top = tmp("jobs-top.qcow2");
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", b, "4M"]);
    qemu("qemu-io", &["-f", "qcow2", "-c", "write -P 0xaa 0 4M", b]);
    // 4 KiB clusters: each write allocates one, most still unallocated
    // when the stream reaches them.
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            b,
            "-F",
            "qcow2",
            t,
        ],
    );
    let mut g = Graph::new();
    let o: BlockdevOptions = serde_json::from_str(&qcow2_json(&top)).unwrap();
    g.add(&o, files(&[&top, &base])).unwrap();
    let node = g.get("disk0").unwrap();
    let (tx, rx) = mpsc::channel();
    let mut jobs = Jobs::default();
    let spec = JobSpec {
        id: "s".into(),
        kind: JobKind::Stream {
            node: "disk0".into(),
            base: None,
            backing_file: None,
            base_format: None,
        },
        // Small steps: many copies race the writer.
        speed: 4 << 20,
        on_source_error: OnError::Report,
        on_target_error: OnError::Report,
        resume: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    jobs.start(spec, &g, tx).unwrap();
    let w = writer(node.clone(), stop.clone(), Duration::from_micros(200));
    let end = finished(&rx);
    stop.store(true, Ordering::SeqCst);
    let written = w.join().unwrap();
    assert!(
        matches!(
            end,
            JobEvent::Finished {
                error: None,
                cancelled: false,
                ..
            }
        ),
        "{end:?}"
    );
    jobs.control("s", JobOp::Finalize { commit: true }).unwrap();
    assert!(written.len() > 100, "the writer hardly ran");
    let data = read_all(&node);
    for off in &written {
        let blk = &data[*off as usize..(*off + BLOCK) as usize];
        assert!(
            blk.iter().all(|&x| x == 0x55),
            "write at {off} was overwritten by the stream"
        );
    }
    let n55 = data.chunks(BLOCK as usize).filter(|c| c[0] == 0x55).count();
    let naa = data
        .chunks(BLOCK as usize)
        .filter(|c| c.iter().all(|&x| x == 0xaa))
        .count();
    assert_eq!(
        n55 + naa,
        (SIZE / BLOCK) as usize,
        "data neither written nor from the base"
    );
    drop(node);
    drop(g);
    // No backing any more, and the top holds everything.
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", t])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert!(qemu_img_check(&top));
}

/// A 4 MiB qcow2 source `disk0` filled by the `qemu-io` command `fill`
/// and an empty 4 MiB qcow2 target `tgt`, both in one graph.
fn mirror_pair(name: &str, fill: &str) -> (Graph, Arc<Node>, Arc<Node>) {
    let src = tmp(&format!("{name}-src.qcow2"));
    let dst = tmp(&format!("{name}-dst.qcow2"));
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", s, "4M"]);
    qemu("qemu-io", &["-f", "qcow2", "-c", fill, s]);
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", d, "4M"]);
    let mut g = Graph::new();
    let o: BlockdevOptions = serde_json::from_str(&qcow2_json(&src)).unwrap();
    g.add(&o, files(&[&src])).unwrap();
    let o: BlockdevOptions =
        serde_json::from_str(&qcow2_json(&dst).replace("disk0", "tgt")).unwrap();
    g.add(&o, files(&[&dst])).unwrap();
    let source = g.get("disk0").unwrap();
    let target = g.get("tgt").unwrap();
    (g, source, target)
}

#[test]
fn mirror_target_equals_the_source_a_writer_kept_changing() {
    let (g, source, target) = mirror_pair("jobs", "write -P 0xaa 0 3M");
    let (tx, rx) = mpsc::channel();
    let mut jobs = Jobs::default();
    let spec = JobSpec {
        id: "m".into(),
        kind: JobKind::Mirror {
            source: "disk0".into(),
            target: "tgt".into(),
            sync: MirrorSync::Full,
            granularity: 65536,
            buf_size: 1 << 20,
            replaces: None,
        },
        speed: 0,
        on_source_error: OnError::Report,
        on_target_error: OnError::Report,
        resume: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // A guest that writes slower than the mirror copies (else no mirror
    // converges, QEMU's neither).
    let w = writer(source.clone(), stop.clone(), Duration::from_millis(3));
    jobs.start(spec, &g, tx).unwrap();
    // Writes go on after READY too; then complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "never ready");
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            JobEvent::Ready { .. } => break,
            JobEvent::Finished { .. } => panic!("ended before ready"),
            JobEvent::Progress { .. } | JobEvent::Error { .. } => {}
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    jobs.control("m", JobOp::Complete).unwrap();
    let end = finished(&rx);
    assert!(
        matches!(
            end,
            JobEvent::Finished {
                error: None,
                cancelled: false,
                ..
            }
        ),
        "{end:?}"
    );
    stop.store(true, Ordering::SeqCst);
    let _ = w.join().unwrap();
    // The writer has stopped: finalize's last copies make them equal.
    jobs.control("m", JobOp::Finalize { commit: true }).unwrap();
    let a = read_all(&target);
    let mut v = vec![0u8; SIZE as usize];
    source.driver.read(&[slice_of(&mut v)], 0).unwrap();
    assert!(a == v, "target differs from source");
    // The source's requests now reach the target.
    let mut b = vec![0x77u8; BLOCK as usize];
    source.write(&[slice_of(&mut b)], 0, BLOCK).unwrap();
    assert_eq!(read_all(&target)[..BLOCK as usize], b[..]);
}

#[test]
fn mirror_sync_none_copies_only_what_is_written_after_it_started() {
    let (g, source, target) = mirror_pair("jobs-none", "write -P 0xaa 0 4M");
    let (tx, rx) = mpsc::channel();
    let mut jobs = Jobs::default();
    let spec = JobSpec {
        id: "n".into(),
        kind: JobKind::Mirror {
            source: "disk0".into(),
            target: "tgt".into(),
            sync: MirrorSync::None,
            granularity: 65536,
            buf_size: 1 << 20,
            replaces: None,
        },
        speed: 0,
        on_source_error: OnError::Report,
        on_target_error: OnError::Report,
        resume: None,
    };
    jobs.start(spec, &g, tx).unwrap();
    let mut b = vec![0x55u8; 65536];
    source.write(&[slice_of(&mut b)], 1 << 20, 65536).unwrap();
    jobs.control("n", JobOp::Complete).unwrap();
    let end = finished(&rx);
    assert!(
        matches!(end, JobEvent::Finished { error: None, .. }),
        "{end:?}"
    );
    jobs.control("n", JobOp::Finalize { commit: false })
        .unwrap();
    let t = read_all(&target);
    assert!(t[1 << 20..(1 << 20) + 65536].iter().all(|&x| x == 0x55));
    assert!(
        t[..1 << 20].iter().all(|&x| x == 0),
        "sync=none copied old data"
    );
    assert!(t[(1 << 20) + 65536..].iter().all(|&x| x == 0));
}
