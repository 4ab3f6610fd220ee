//! `query-chardev` (and HMP `info chardev`): the character devices the
//! command line set up — QMP and human monitors, the serial port's
//! backend (labelled with its `-chardev` id when it has one, as libvirt
//! looks the console's pty up by it), vhost-user sockets.

use serde::Serialize;

use crate::cli::{HmpSpec, MonitorSocket, SerialSpec};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// One character device (QEMU's ChardevInfo).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevInfo {
    /// Its label (the `-chardev` id, or QEMU's generated one).
    pub label: String,
    /// Its backend, as QEMU prints it.
    pub filename: String,
    /// A device (or monitor) uses it: always, as bulkhead refuses
    /// chardevs nothing uses.
    pub frontend_open: bool,
}

impl QapiType for ChardevInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "ChardevInfo",
            members: vec![
                member::<String>("label"),
                member::<String>("filename"),
                member::<bool>("frontend-open"),
            ],
        }
    }
}

/// The VM's character devices.
pub fn chardevs(ctx: &Ctx<'_>) -> Vec<ChardevInfo> {
    let cfg = ctx.machine.config();
    let dev = |label: String, filename: String| ChardevInfo {
        label,
        filename,
        frontend_open: true,
    };
    let mut out = Vec::new();
    for (i, m) in cfg.qmp.iter().enumerate() {
        let f = match &m.socket {
            MonitorSocket::Path(p) => format!("unix:{},server=on", p.display()),
            MonitorSocket::Fd(fd) => format!("fd={fd},server=on"),
        };
        out.push(dev(format!("compat_monitor{i}"), f));
    }
    for (i, h) in cfg.hmp.iter().enumerate() {
        let f = match h {
            HmpSpec::Stdio => "stdio".to_owned(),
            HmpSpec::Unix(p) => format!("unix:{},server=on", p.display()),
        };
        out.push(dev(format!("compat_monitor{}", cfg.qmp.len() + i), f));
    }
    let (label, serial) = match &cfg.serial {
        SerialSpec::Stdio => ("serial0".to_owned(), "stdio".to_owned()),
        SerialSpec::Null => ("serial0".to_owned(), "null".to_owned()),
        SerialSpec::Pty(label) => (
            label.clone(),
            match crate::machine::serial_pty::path() {
                Some(p) => format!("pty:{}", p.display()),
                None => "pty".to_owned(),
            },
        ),
        SerialSpec::File(p) => ("serial0".to_owned(), format!("file:{}", p.display())),
        SerialSpec::Unix(p) => (
            "serial0".to_owned(),
            format!("unix:{},server=on", p.display()),
        ),
        SerialSpec::Tcp(t) if t.server => (
            "serial0".to_owned(),
            format!("tcp:{},server=on", t.address()),
        ),
        SerialSpec::Tcp(t) => ("serial0".to_owned(), format!("tcp:{}", t.address())),
        // QEMU's mux is a chardev over its stdio chardev, `serial0-base`.
        SerialSpec::MonStdio => ("serial0".to_owned(), "mux".to_owned()),
    };
    out.push(dev(label, serial));
    if cfg.serial == SerialSpec::MonStdio {
        out.push(dev("serial0-base".into(), "stdio".into()));
    }
    for c in &cfg.chardevs {
        out.push(dev(c.id.clone(), format!("unix:{}", c.path.display())));
    }
    out
}

/// `query-chardev`.
pub struct QueryChardev;

impl Command for QueryChardev {
    const NAME: &'static str = "query-chardev";
    const DOC: &'static str = "Return the character devices: monitors, the serial port's \
        backend, vhost-user sockets.";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = Vec<ChardevInfo>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<ChardevInfo>> {
        Ok(chardevs(ctx))
    }
}
