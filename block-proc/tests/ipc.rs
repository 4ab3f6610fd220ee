//! block-proc under a broker: the control channel handshake, AddNode with
//! passed fds, QEMU error wording through FlatError, AddExport and its
//! connections handed over as socketpairs, reference counting, queries
//! and statistics.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::worker::{spawn, Worker};
use common::*;
use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest, BlockdevOptions, FileFd};
use ipc_proto::envelope::WorkerMsg;
use vhost_user_harness::blk::S_OK;

#[test]
fn broker_builds_graph_exports_it_and_queries_stats_over_ipc() {
    let img = raw_image("ipc.raw", 2 << 20);
    let mut w = spawn();
    let options: BlockdevOptions = serde_json::from_str(&raw_json(&img)).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let files = vec![FileFd {
        filename: img.display().to_string(),
        fd_index: 0,
    }];
    let add = BlockRequest::AddNode {
        options: options.clone(),
        files: files.clone(),
    };
    assert_eq!(w.call(add.clone(), &[file.as_fd()]), Ok(BlockReply::Done));
    assert_eq!(
        w.call(add, &[file.as_fd()]).unwrap_err().desc,
        "Duplicate nodes with node-name='disk0'"
    );

    let export = BlockRequest::AddExport {
        id: "e0".into(),
        node_name: "disk0".into(),
        num_queues: 2,
        writable: true,
        serial: "ipc".into(),
        logical_block_size: 512,
    };
    assert_eq!(w.call(export, &[]), Ok(BlockReply::Done));

    let mut dev = w.attach("e0", 2);
    assert_eq!(dev.write(1, 16, &pattern(4096, 1)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 16, 4096).unwrap().1, pattern(4096, 1));

    let Ok(BlockReply::Stats(stats)) = w.call(BlockRequest::QueryStats, &[]) else {
        panic!("no stats");
    };
    let disk = stats.iter().find(|s| s.node_name == "disk0").unwrap();
    assert_eq!((disk.stats.wr_operations, disk.stats.wr_bytes), (1, 4096));
    assert_eq!((disk.stats.rd_operations, disk.stats.rd_bytes), (1, 4096));
    assert_eq!(disk.wr_highest_offset, 16 * 512 + 4096);

    let Ok(BlockReply::Nodes(nodes)) = w.call(BlockRequest::QueryNodes, &[]) else {
        panic!("no nodes");
    };
    assert!(nodes
        .iter()
        .any(|n| n.node_name == "disk0" && n.in_use && n.drv == "raw"));

    let del = BlockRequest::DelNode {
        node_name: "disk0".into(),
    };
    assert_eq!(
        w.call(del.clone(), &[]).unwrap_err().desc,
        "Block device disk0 is in use"
    );
    drop(dev);
    assert_eq!(
        w.call(BlockRequest::DelExport { id: "e0".into() }, &[]),
        Ok(BlockReply::Done)
    );
    assert_eq!(w.call(del, &[]), Ok(BlockReply::Done));
    let Ok(BlockReply::Nodes(nodes)) = w.call(BlockRequest::QueryNodes, &[]) else {
        panic!("no nodes");
    };
    assert!(nodes.is_empty());
}

#[test]
fn add_node_without_its_file_fd_reports_could_not_open() {
    let mut w = spawn();
    // The liveness ping is answered from the IPC loop.
    assert_eq!(w.call(BlockRequest::Ping, &[]), Ok(BlockReply::Done));
    let options: BlockdevOptions =
        serde_json::from_str(r#"{"driver":"file","node-name":"f","filename":"/nope"}"#).unwrap();
    let err = w
        .call(
            BlockRequest::AddNode {
                options,
                files: vec![],
            },
            &[],
        )
        .unwrap_err();
    assert_eq!(
        err.desc,
        "Could not open '/nope': No such file or directory"
    );
}

#[test]
fn host_write_failure_answers_ioerr_and_emits_io_error_event() {
    let img = raw_image("ipc-ro.raw", 1 << 20);
    let mut w = spawn();
    let options: BlockdevOptions = serde_json::from_str(&raw_json(&img)).unwrap();
    // The node is writable but the fd only allows reading: writes fail on the host.
    let file = std::fs::File::open(&img).unwrap();
    let files = vec![FileFd {
        filename: img.display().to_string(),
        fd_index: 0,
    }];
    assert_eq!(
        w.call(BlockRequest::AddNode { options, files }, &[file.as_fd()]),
        Ok(BlockReply::Done)
    );
    let export = BlockRequest::AddExport {
        id: "e1".into(),
        node_name: "disk0".into(),
        num_queues: 1,
        writable: true,
        serial: "x".into(),
        logical_block_size: 512,
    };
    assert_eq!(w.call(export, &[]), Ok(BlockReply::Done));
    let mut dev = w.attach("e1", 1);
    assert_eq!(
        dev.write(0, 0, &pattern(512, 1)).unwrap(),
        vhost_user_harness::blk::S_IOERR
    );
    let want = BlockEvent::IoError {
        node_name: "disk0".into(),
        operation: "write".into(),
        reason: "Bad file descriptor".into(),
    };
    w.chan
        .socket()
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    while !w.events.contains(&want) {
        let (msg, _) = w.chan.recv().unwrap();
        if let WorkerMsg::Event(e) = msg {
            w.events.push(e);
        }
    }
}

/// An export with its node, served to connections attached over IPC.
fn exported(w: &mut Worker, img: &std::path::Path, id: &str) -> std::fs::File {
    w.export_node(img, id, &raw_json(img))
}

#[test]
fn export_has_no_socket_and_serves_only_connections_the_broker_attaches() {
    let img = raw_image("ipc-attach.raw", 1 << 20);
    let mut w = spawn();
    let _file = exported(&mut w, &img, "e2");
    // block-proc has no Unix socket but its control channel and the
    // attached connections: nothing listens, nothing to connect to.
    let listening = listening_unix_inodes();
    let pid = w.child.id();
    assert!(
        socket_inodes_of(pid).iter().all(|i| !listening.contains(i)),
        "block-proc has a listening Unix socket"
    );
    // A connection to an unknown export, or without its fd, is refused.
    let (_a, b) = UnixStream::pair().unwrap();
    let req = BlockRequest::AttachExportConnection { id: "nope".into() };
    assert_eq!(
        w.call(req, &[b.as_fd()]).unwrap_err().desc,
        "Export 'nope' is not found"
    );
    let req = BlockRequest::AttachExportConnection { id: "e2".into() };
    assert_eq!(
        w.call(req, &[]).unwrap_err().desc,
        "no connected socket passed for the export"
    );
    let req = BlockRequest::AttachExportConnection { id: "e2".into() };
    assert_eq!(
        w.call(req, &[_file.as_fd()]).unwrap_err().desc,
        "Export 'e2': bad connection socket: not a socket"
    );
    // The first connection works; a second one waits until it ends.
    let mut dev = w.attach("e2", 1);
    assert_eq!(dev.write(0, 0, &pattern(512, 3)).unwrap(), S_OK);
    drop(dev);
    let mut dev = w.attach("e2", 1);
    assert_eq!(dev.read(0, 0, 512).unwrap().1, pattern(512, 3));
}

#[test]
fn refused_set_config_keeps_the_connection() {
    let img = raw_image("ipc-setcfg.raw", 1 << 20);
    let mut w = spawn();
    let _file = exported(&mut w, &img, "e3");
    let mut dev = w.attach("e3", 1);
    assert_eq!(dev.write(0, 0, &pattern(512, 5)).unwrap(), S_OK);
    // virtio-blk's config space is read-only here: SET_CONFIG gets a
    // failed REPLY_ACK ...
    let err = dev.set_config(0, &[1, 2, 3, 4]).unwrap_err();
    assert!(
        matches!(
            err,
            vhost_user_harness::HarnessError::VhostUser(vhost::Error::VhostUserProtocol(
                vhost::vhost_user::Error::BackendInternalError
            ))
        ),
        "{err}"
    );
    // ... and the connection still serves requests.
    assert_eq!(dev.read(0, 0, 512).unwrap().1, pattern(512, 5));
    assert_eq!(dev.write(0, 1, &pattern(512, 6)).unwrap(), S_OK);
    let cfg = dev.config(8).unwrap();
    assert_eq!(u64::from_le_bytes(cfg[..8].try_into().unwrap()), 2048);
}

/// Inodes of the listening Unix sockets of the host (`/proc/net/unix`,
/// flag `__SO_ACCEPTCON`).
fn listening_unix_inodes() -> Vec<String> {
    let t = std::fs::read_to_string("/proc/net/unix").unwrap();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & 0x10000 != 0).then(|| f.get(6).map(|s| s.to_string()))?
        })
        .collect()
}

/// Inodes of the sockets process `pid` holds.
fn socket_inodes_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect()
}

#[test]
fn sandboxed_direct_write_of_the_partial_last_block_keeps_the_file_size() {
    use std::os::unix::fs::OpenOptionsExt;
    // On the disk: a tmpfs /tmp refuses O_DIRECT.
    let img = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bp-ipc-tail-{}.raw", std::process::id()));
    let len = (1 << 20) + 1024;
    std::fs::write(&img, vec![0x11u8; len]).unwrap();
    let mut w = spawn();
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let options: BlockdevOptions = serde_json::from_str(&json).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&img)
        .unwrap();
    let files = vec![FileFd {
        filename: img.display().to_string(),
        fd_index: 0,
    }];
    assert_eq!(
        w.call(BlockRequest::AddNode { options, files }, &[file.as_fd()]),
        Ok(BlockReply::Done)
    );
    let export = BlockRequest::AddExport {
        id: "e2".into(),
        node_name: "disk0".into(),
        num_queues: 1,
        writable: true,
        serial: "x".into(),
        logical_block_size: 512,
    };
    assert_eq!(w.call(export, &[]), Ok(BlockReply::Done));
    let mut dev = w.attach("e2", 1);
    let last = (len as u64 / 512) - 1;
    assert_eq!(dev.write(0, last, &pattern(512, 7)).unwrap(), S_OK);
    assert_eq!(dev.read(0, last, 512).unwrap().1, pattern(512, 7));
    // Still alive (the sandbox allowed the tail write) and not grown.
    assert_eq!(dev.read(0, 0, 4096).unwrap().0, S_OK);
    assert!(w.child.try_wait().unwrap().is_none());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len as u64);
    let back = std::fs::read(&img).unwrap();
    assert_eq!(&back[len - 512..], &pattern(512, 7)[..]);
    assert!(back[..len - 512].iter().all(|&b| b == 0x11));
    drop(dev);
    std::fs::remove_file(img).unwrap();
}

/// Dirty-bitmap memory as the broker makes it: a memfd of `bytes`.
fn bitmap_memory(bytes: u64) -> std::fs::File {
    let fd = nix::sys::memfd::memfd_create(c"bitmap", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&fd, bytes as i64).unwrap();
    std::fs::File::from(fd)
}

fn attach_bitmap(w: &mut Worker, mem: &std::fs::File, source: ipc_proto::bitmaps::BitmapSource) {
    let req = BlockRequest::Bitmap(ipc_proto::bitmaps::BitmapRequest::Attach {
        node: "disk0".into(),
        name: "b".into(),
        granularity: 512,
        persistent: false,
        recording: true,
        inconsistent: false,
        source,
    });
    assert_eq!(
        w.call(req, &[mem.as_fd()]),
        Ok(BlockReply::Bitmap(ipc_proto::bitmaps::BitmapReply::Done))
    );
}

/// Node `disk0` (raw over file, `aio` as given) of `img`, exported as `id`.
fn exported_aio(w: &mut Worker, img: &std::path::Path, id: &str, aio: &str) -> std::fs::File {
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","aio":"{aio}"}}}}"#,
        img.display()
    );
    w.export_node(img, id, &json)
}

#[test]
fn every_acknowledged_write_is_in_the_bitmap_memory_after_a_sigkill() {
    // Both engines: the thread pool (Node::write) and io_uring
    // (Node::aio_target) mark before they submit.
    for aio in ["threads", "io_uring"] {
        acknowledged_writes_survive_in_bitmap_memory(aio);
    }
}

fn acknowledged_writes_survive_in_bitmap_memory(aio: &str) {
    use std::os::unix::fs::FileExt;
    let img = raw_image(&format!("ipc-bitmap-{aio}.raw"), 1 << 20);
    let mut w = spawn();
    let _file = exported_aio(&mut w, &img, "e1", aio);
    let mem = bitmap_memory((1 << 20) / 512 / 8);
    attach_bitmap(&mut w, &mem, ipc_proto::bitmaps::BitmapSource::Empty);
    let mut dev = w.attach("e1", 1);
    let sectors = [0u64, 7, 8, 63, 64, 1000, 2047];
    // One kick for all (queue depth > 1: with io_uring they go through
    // the ring, not the lone-request path).
    let data: Vec<Vec<u8>> = sectors.iter().map(|&s| pattern(512, s)).collect();
    for (&sector, d) in sectors.iter().zip(&data) {
        let r = vhost_user_harness::blk::Request::Write { sector, data: d };
        dev.submit(0, r).unwrap();
    }
    dev.kick(0).unwrap();
    let mut done = Vec::new();
    while done.len() < sectors.len() {
        done.extend(dev.wait(0).unwrap());
    }
    assert!(done.iter().all(|c| c.status == Some(S_OK)), "{done:?}");
    // Killed right after the last acknowledgement: nothing is flushed or
    // handed back, the memory alone holds the marks.
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    let mut bits = vec![0u8; (1 << 20) / 512 / 8];
    mem.read_exact_at(&mut bits, 0).unwrap();
    for s in 0..2048u64 {
        let set = bits[(s / 8) as usize] & (1 << (s % 8)) != 0;
        assert_eq!(set, sectors.contains(&s), "{aio}: sector {s}");
    }

    // A new worker given the same memory counts them.
    let mut w = spawn();
    let _file = exported_aio(&mut w, &img, "e1", aio);
    attach_bitmap(&mut w, &mem, ipc_proto::bitmaps::BitmapSource::Keep);
    let q = w.call(
        BlockRequest::Bitmap(ipc_proto::bitmaps::BitmapRequest::Query),
        &[],
    );
    let Ok(BlockReply::Bitmap(ipc_proto::bitmaps::BitmapReply::List(l))) = q else {
        panic!("{q:?}")
    };
    assert_eq!(l[0].count, sectors.len() as u64 * 512);
}
