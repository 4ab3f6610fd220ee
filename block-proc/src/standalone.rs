//! `--standalone`: run one vhost-user-blk export without a broker, like
//! `qemu-storage-daemon --blockdev ... --export type=vhost-user-blk`. Only
//! here does block-proc open files itself (tests and benchmarks).
//!
//! ```text
//! block-proc --standalone --socket PATH --blockdev JSON [--blockdev JSON ...]
//!            [--num-queues N] [--serial S] [--read-only] [--block-size 512|4096]
//!            [--scsi cd|hd] [--scsi-next JSON ...]
//! ```
//! The last `--blockdev` is exported; with `--scsi`, as the only unit
//! (target 0, LUN 0) of a vhost-user-scsi controller with N request
//! queues. Each `--scsi-next` adds a disc to a changer (`--scsi cd`
//! only): when the guest locks the tray and a disc is left, the drive
//! asks the guest to eject; once the guest has opened the tray, the next
//! disc goes in and the tray closes (a medium change without a broker,
//! for interop tests on QEMU's frontend). The socket is made mode 0600 and a
//! peer running as another user (not root) is hung up on (`SO_PEERCRED`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;

use ipc_proto::block::BlockdevOptions;

use crate::block::{Graph, GraphError};
use crate::vhost::device::DeviceModel;
use crate::vhost::export::{Export, Source};
use crate::virtio_blk::{BlkConfig, BlkDevice};

/// Errors of standalone mode.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
    /// Bad `--blockdev` JSON.
    #[error("invalid --blockdev")]
    Json(#[source] serde_json::Error),
    /// A file could not be opened.
    #[error("Could not open '{0}'")]
    Open(String, #[source] std::io::Error),
    /// The graph refused the node.
    #[error("{0}")]
    Graph(#[from] GraphError),
    /// Bad `--scsi` export.
    #[error("{0}")]
    Scsi(#[from] crate::scsi::ScsiError),
    /// The socket could not be created.
    #[error("cannot listen on {0}")]
    Socket(String, #[source] std::io::Error),
}

/// Result of standalone mode.
pub type Result<T> = std::result::Result<T, StandaloneError>;

/// Parsed command line.
#[derive(Debug, Default)]
pub struct Args {
    socket: String,
    blockdevs: Vec<String>,
    num_queues: u16,
    serial: String,
    read_only: bool,
    block_size: u32,
    scsi: Option<ipc_proto::scsi::ScsiLunKind>,
    scsi_next: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        num_queues: 1,
        block_size: 512,
        serial: "bulkhead".into(),
        ..Default::default()
    };
    let mut it = args.iter();
    let usage = |m: &str| StandaloneError::Usage(m.to_string());
    while let Some(x) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(&format!("{x} needs a value")))
        };
        match x.as_str() {
            "--standalone" => {}
            "--socket" => a.socket = val()?,
            "--blockdev" => a.blockdevs.push(val()?),
            "--num-queues" => a.num_queues = val()?.parse().map_err(|_| usage("--num-queues N"))?,
            "--serial" => a.serial = val()?,
            "--block-size" => a.block_size = val()?.parse().map_err(|_| usage("--block-size N"))?,
            "--read-only" => a.read_only = true,
            "--scsi" => {
                a.scsi = Some(match val()?.as_str() {
                    "cd" => ipc_proto::scsi::ScsiLunKind::Cd,
                    "hd" => ipc_proto::scsi::ScsiLunKind::Hd,
                    _ => return Err(usage("--scsi cd|hd")),
                })
            }
            "--scsi-next" => a.scsi_next.push(val()?),
            other => return Err(usage(&format!("unknown argument {other}"))),
        }
    }
    if a.socket.is_empty() || a.blockdevs.is_empty() {
        return Err(usage("--socket PATH and --blockdev JSON are required"));
    }
    if !a.scsi_next.is_empty() && a.scsi != Some(ipc_proto::scsi::ScsiLunKind::Cd) {
        return Err(usage("--scsi-next needs --scsi cd"));
    }
    Ok(a)
}

fn open(path: &str, ro: bool, direct: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(!ro);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
        .map_err(|e| StandaloneError::Open(path.to_string(), e))
}

/// Add a node, opening the files it names (and any backing files).
pub fn add_node(graph: &mut Graph, opts: &BlockdevOptions) -> Result<String> {
    let mut extra: Vec<String> = Vec::new();
    loop {
        let mut files = HashMap::new();
        for (name, ro, direct) in opts.filenames() {
            files.insert(name.clone(), open(&name, ro, direct)?);
        }
        for name in &extra {
            files.insert(name.clone(), open(name, true, false)?);
        }
        match graph.add(opts, files) {
            Err(GraphError::NeedFiles(more)) if more.iter().all(|m| !extra.contains(m)) => {
                extra.extend(more)
            }
            r => return Ok(r?),
        }
    }
}

/// Listens on `path` with mode 0600: only our own user may connect (the
/// export also checks each peer's uid, in case the mode is loosened).
/// Bound under a temporary name and renamed into place, so the socket
/// never appears with a wider mode.
fn private_listener(path: &str) -> Result<UnixListener> {
    let fail = |e| StandaloneError::Socket(path.to_owned(), e);
    let tmp = format!("{path}.{}.tmp", std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(fail)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(listener)
}

/// Run standalone mode until killed.
pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let mut graph = Graph::new();
    let mut last = String::new();
    for b in &a.blockdevs {
        let opts: BlockdevOptions = serde_json::from_str(b).map_err(StandaloneError::Json)?;
        last = add_node(&mut graph, &opts)?;
    }
    let node = graph
        .get(&last)
        .ok_or_else(|| StandaloneError::Usage("no node to export".into()))?;
    let mut next = Vec::new();
    for b in &a.scsi_next {
        let opts: BlockdevOptions = serde_json::from_str(b).map_err(StandaloneError::Json)?;
        next.push(add_node(&mut graph, &opts)?);
    }
    let listener = private_listener(&a.socket)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let events = (!next.is_empty()).then_some(tx);
    let mut changer = None;
    let dev: std::sync::Arc<dyn DeviceModel> = match a.scsi {
        Some(kind) => {
            let d = std::sync::Arc::new(scsi_controller(&a, kind, &graph, &last, events)?);
            changer = Some(d.clone());
            d
        }
        None => {
            let cfg = BlkConfig::new(&node, a.num_queues, !a.read_only, &a.serial, a.block_size);
            std::sync::Arc::new(BlkDevice::new(node, cfg))
        }
    };
    let _export = Export::start("standalone".into(), Source::Listener(listener), dev, None)
        .map_err(|e| StandaloneError::Socket(a.socket.clone(), e))?;
    tracing::info!("serving {} on {}", last, a.socket);
    if let Some(d) = changer.filter(|_| !next.is_empty()) {
        run_changer(&d, &graph, next, rx);
    }
    loop {
        std::thread::park();
    }
}

/// The `--scsi-next` changer: answers the guest's lock with an eject
/// request while discs are left, and loads the next disc once the guest
/// opened the tray. Returns when no disc is left, dropping `rx`: the
/// guest's later commands then wait for nobody.
fn run_changer(
    dev: &crate::scsi::ScsiDevice,
    graph: &Graph,
    next: Vec<String>,
    rx: std::sync::mpsc::Receiver<crate::vhost::export::ExportEvent>,
) {
    use crate::vhost::export::ExportEvent;
    use ipc_proto::block::BlockEvent;
    use ipc_proto::scsi::{MediumOp, ScsiEvent};
    let mut next = next.into_iter();
    let mut disc = next.next();
    let op = |op: MediumOp, node| {
        if let Err(e) = dev.medium("lun0", &op, node) {
            tracing::warn!("changer: {op:?} refused: {e}");
        }
    };
    while let Some(name) = disc.as_deref() {
        let ev = match rx.recv() {
            Ok(ExportEvent::Acked(ev, written)) => {
                let _ = written.send(());
                ev
            }
            Ok(ExportEvent::Block(ev)) => ev,
            Ok(ExportEvent::Connected(_) | ExportEvent::Disconnected(_))
            | Ok(ExportEvent::IoError { .. }) => continue,
            Err(_) => return,
        };
        let BlockEvent::Scsi(ev) = ev else {
            continue;
        };
        match ev {
            ScsiEvent::LockChanged { locked: true, .. } => op(MediumOp::EjectRequest, None),
            ScsiEvent::LockChanged { locked: false, .. } => {}
            ScsiEvent::TrayMoved { open: true, .. } => {
                let Some(node) = graph.get(name) else {
                    tracing::warn!("changer: node {name} is gone");
                    return;
                };
                node.acquire();
                op(MediumOp::Remove, None);
                op(
                    MediumOp::Insert {
                        node_name: name.to_owned(),
                    },
                    Some(node),
                );
                op(MediumOp::CloseTray, None);
                tracing::info!("changer: loaded {name}");
                disc = next.next();
            }
            ScsiEvent::TrayMoved { open: false, .. } => {}
        }
    }
}

/// A controller with `node` as its only unit, of `kind`.
fn scsi_controller(
    a: &Args,
    kind: ipc_proto::scsi::ScsiLunKind,
    graph: &Graph,
    node: &str,
    events: Option<std::sync::mpsc::Sender<crate::vhost::export::ExportEvent>>,
) -> Result<crate::scsi::ScsiDevice> {
    use ipc_proto::scsi::{ScsiExportSpec, ScsiLunConfig, ScsiLunKind};
    let cd = kind == ScsiLunKind::Cd;
    let spec = ScsiExportSpec {
        id: "standalone".into(),
        num_request_queues: a.num_queues,
        luns: vec![ScsiLunConfig {
            device_id: "lun0".into(),
            target: 0,
            lun: 0,
            kind,
            node_name: Some(node.into()),
            writable: !cd && !a.read_only,
            tray_open: false,
            locked: false,
            serial: a.serial.clone(),
            logical_block_size: if cd { 2048 } else { a.block_size },
        }],
    };
    Ok(crate::scsi::spec::build(&spec, graph, events)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_args_parse_with_defaults() {
        let v: Vec<String> = ["--standalone", "--socket", "/tmp/s", "--blockdev", "{}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = parse(&v).unwrap();
        assert_eq!(a.num_queues, 1);
        assert_eq!(a.socket, "/tmp/s");
        assert!(parse(&v[..2]).is_err());
    }

    #[test]
    fn a_disc_changer_needs_a_scsi_cd() {
        let v: Vec<String> = ["--socket", "/s", "--blockdev", "{}", "--scsi-next", "{}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = parse(&v).unwrap_err();
        assert_eq!(e.to_string(), "usage: --scsi-next needs --scsi cd");
        let mut cd = v.clone();
        cd.extend(["--scsi".to_string(), "cd".to_string()]);
        assert_eq!(parse(&cd).unwrap().scsi_next, vec!["{}".to_string()]);
    }
}
