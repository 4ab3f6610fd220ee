//! QMP monitors on the command line, in all of QEMU's spellings:
//! `-qmp unix:PATH[,server=on][,wait=on|off]` (also the legacy
//! `server,nowait`), and `-chardev socket,id=ID,path=PATH|fd=N,server=on
//! [,wait=off]` with `-mon chardev=ID[,mode=control]` (what libvirt
//! writes). As in QEMU, a server socket without `wait=` waits for its
//! first client before the VM starts.

use std::path::PathBuf;

use super::{bad, keyval_pairs, parse_on_off, CliError, Result};

/// Where a QMP monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorSocket {
    /// A Unix socket path the broker binds.
    Path(PathBuf),
    /// An inherited listening socket (`fd=N`).
    Fd(i32),
}

/// One QMP monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    /// Its socket.
    pub socket: MonitorSocket,
    /// `wait=on` (QEMU's default for a server): the VM starts only once
    /// a first client has connected.
    pub wait: bool,
}

/// Server options common to `-qmp` and `-chardev socket`: `server` and
/// `wait` (`nowait` is the legacy `wait=off`). Returns `wait`.
pub(super) fn server_wait(option: &str, kv: &[(String, String)]) -> Result<Option<bool>> {
    let mut server = false;
    let mut wait = None;
    for (k, v) in kv {
        match k.as_str() {
            "server" => server = parse_on_off(option, v)?,
            "wait" => wait = Some(parse_on_off(option, v)?),
            "nowait" => wait = Some(!parse_on_off(option, v)?),
            _ => {}
        }
    }
    if !server {
        return Ok(None);
    }
    Ok(Some(wait.unwrap_or(true)))
}

/// Splits QEMU's legacy bare flags (`server`, `nowait`) into `key=on`.
pub(super) fn legacy_pairs(
    option: &str,
    s: &str,
    implied: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let fixed: Vec<String> = s
        .split(',')
        .map(|p| match p {
            "server" | "nowait" | "wait" => format!("{p}=on"),
            _ => p.to_owned(),
        })
        .collect();
    keyval_pairs(option, &fixed.join(","), implied)
}

/// `-qmp unix:PATH,...`.
pub fn parse_qmp(s: &str) -> Result<MonitorSpec> {
    let (first, rest) = s.split_once(',').unwrap_or((s, ""));
    let path = first.strip_prefix("unix:").ok_or_else(|| {
        bad(
            "-qmp",
            format!("'{first}': only unix:PATH sockets are supported"),
        )
    })?;
    if path.is_empty() {
        return Err(bad("-qmp", "empty socket path"));
    }
    let kv = if rest.is_empty() {
        Vec::new()
    } else {
        legacy_pairs("-qmp", rest, None)?
    };
    for (k, _) in &kv {
        if !matches!(k.as_str(), "server" | "wait" | "nowait") {
            return Err(bad("-qmp", format!("unknown suboption '{k}'")));
        }
    }
    let wait = server_wait("-qmp", &kv)?
        .ok_or_else(|| bad("-qmp", "a client socket (server=off) is not supported"))?;
    Ok(MonitorSpec {
        socket: MonitorSocket::Path(PathBuf::from(path)),
        wait,
    })
}

/// A `-chardev socket,...,server=on`: a listening socket, for `-mon`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerChardev {
    /// `id`.
    pub id: String,
    /// The monitor it becomes.
    pub monitor: MonitorSpec,
}

/// Parses a server `-chardev socket` (`None` if it is a client socket,
/// which [`super::parse_chardev`] handles).
pub fn parse_server_chardev(s: &str) -> Result<Option<ServerChardev>> {
    let o = "-chardev";
    let kv = legacy_pairs(o, s, Some("backend"))?;
    let Some(wait) = server_wait(o, &kv)? else {
        return Ok(None);
    };
    let (mut id, mut socket) = (None, None);
    for (k, v) in &kv {
        match k.as_str() {
            "backend" if v == "socket" => {}
            "id" => id = Some(v.clone()),
            "path" => socket = Some(MonitorSocket::Path(PathBuf::from(v))),
            "fd" => {
                let fd = v
                    .parse::<i32>()
                    .map_err(|_| bad(o, format!("Parameter 'fd' expects a number, got '{v}'")))?;
                socket = Some(MonitorSocket::Fd(fd));
            }
            "server" | "wait" | "nowait" => {}
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    if !kv.iter().any(|(k, v)| k == "backend" && v == "socket") {
        return Err(bad(o, "only socket chardevs can be servers"));
    }
    let id = id.ok_or_else(|| bad(o, "Parameter 'id' is missing"))?;
    let socket =
        socket.ok_or_else(|| CliError::Plain("chardev: socket: no addr provided".into()))?;
    Ok(Some(ServerChardev {
        id,
        monitor: MonitorSpec { socket, wait },
    }))
}

/// A human (HMP, readline) monitor: `-monitor`, `-mon mode=readline`,
/// `-serial mon:stdio`, `-nographic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HmpSpec {
    /// On the broker's stdin/stdout (alone; the muxed form is
    /// [`super::SerialSpec::MonStdio`]).
    Stdio,
    /// On a Unix socket the broker listens on, one client at a time.
    Unix(PathBuf),
}

/// `-monitor stdio|none|unix:PATH,server=on,wait=off` (`None`: `none`).
pub fn parse_monitor(s: &str) -> Result<Option<HmpSpec>> {
    let o = "-monitor";
    match s {
        "stdio" => return Ok(Some(HmpSpec::Stdio)),
        "none" => return Ok(None),
        _ => {}
    }
    let m = parse_qmp(s).map_err(|e| match e {
        CliError::BadValue { reason, .. } => bad(o, reason),
        other => other,
    })?;
    match m {
        MonitorSpec {
            socket: MonitorSocket::Path(p),
            wait: false,
        } => Ok(Some(HmpSpec::Unix(p))),
        _ => Err(bad(o, format!("'{s}': {NO_WAIT}"))),
    }
}

/// Why a human monitor's server socket must say `wait=off`.
pub const NO_WAIT: &str = "bulkhead's human monitor socket does not hold the guest until a \
    client connects (QEMU's wait=on default); add wait=off";

/// `-mon chardev=ID[,mode=control|readline][,pretty=off]`: the chardev's
/// id, and true for `mode=readline` (a human monitor).
pub fn parse_mon(s: &str) -> Result<(String, bool)> {
    let o = "-mon";
    let (mut chardev, mut readline) = (None, false);
    for (k, v) in keyval_pairs(o, s, Some("chardev"))? {
        match (k.as_str(), v.as_str()) {
            ("chardev", _) => chardev = Some(v),
            ("mode", "control") | ("pretty", "off") | ("id", _) => {}
            ("mode", "readline") => readline = true,
            ("pretty", _) => return Err(bad(o, "pretty=on is not supported")),
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    let id = chardev.ok_or_else(|| bad(o, "Parameter 'chardev' is missing"))?;
    Ok((id, readline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_spellings_follow_qemu_including_its_wait_default() {
        let m = |s| parse_qmp(s).unwrap();
        assert!(!m("unix:/a,server=on,wait=off").wait);
        assert!(!m("unix:/a,server,nowait").wait);
        assert!(m("unix:/a,server=on").wait);
        assert!(m("unix:/a,server").wait);
        assert!(parse_qmp("unix:/a").is_err());
        assert!(parse_qmp("tcp:localhost:4444").is_err());
        assert!(parse_qmp("unix:/a,server=on,frob=1").is_err());
    }

    #[test]
    fn server_chardevs_and_mon_parse() {
        let c = parse_server_chardev("socket,id=mon0,path=/m.sock,server=on,wait=off")
            .unwrap()
            .unwrap();
        assert_eq!(c.id, "mon0");
        assert_eq!(c.monitor.socket, MonitorSocket::Path("/m.sock".into()));
        assert!(!c.monitor.wait);
        let c = parse_server_chardev("socket,id=charmonitor,fd=7,server=on,wait=off")
            .unwrap()
            .unwrap();
        assert_eq!(c.monitor.socket, MonitorSocket::Fd(7));
        let c = parse_server_chardev("socket,id=m,path=/m,server,nowait")
            .unwrap()
            .unwrap();
        assert!(!c.monitor.wait);
        assert!(
            parse_server_chardev("socket,id=m,path=/m,server=on")
                .unwrap()
                .unwrap()
                .monitor
                .wait
        );
        assert_eq!(parse_server_chardev("socket,id=c0,path=/s").unwrap(), None);
        assert_eq!(
            parse_mon("chardev=mon0,mode=control").unwrap(),
            ("mon0".into(), false)
        );
        assert_eq!(
            parse_mon("chardev=mon0,mode=readline").unwrap(),
            ("mon0".into(), true)
        );
    }

    #[test]
    fn human_monitor_spellings_parse() {
        assert_eq!(parse_monitor("stdio").unwrap(), Some(HmpSpec::Stdio));
        assert_eq!(parse_monitor("none").unwrap(), None);
        assert_eq!(
            parse_monitor("unix:/h.sock,server=on,wait=off").unwrap(),
            Some(HmpSpec::Unix("/h.sock".into()))
        );
        assert!(parse_monitor("unix:/h.sock,server=on").is_err());
        assert!(parse_monitor("vc").is_err());
    }
}
