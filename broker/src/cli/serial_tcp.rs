//! The serial port on a TCP socket, in QEMU's two spellings:
//! `-serial tcp:[HOST]:PORT[,server=on,wait=off]` and
//! `-chardev socket,id=ID,host=HOST,port=PORT[,server=on,wait=off]` with
//! `-serial chardev:ID`. Without `server=on` the broker connects to
//! HOST:PORT; with it, the broker listens there and the guest's COM1
//! talks to one client at a time; without `wait=off` (QEMU's default
//! `wait=on`) the VM starts only once the first client has connected. The broker owns the socket (the workers
//! have no network); vcpu-proc gets the connected stream or the
//! listening socket.

use super::monitors::{legacy_pairs, server_wait};
use super::{bad, CliError, Result};

/// A serial port on TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSerial {
    /// The host (a name or an address; empty: every interface for a
    /// server, `localhost` for a client, as QEMU).
    pub host: String,
    /// The port.
    pub port: u16,
    /// Listen (`server=on`) rather than connect.
    pub server: bool,
    /// A server's `wait` (QEMU's default on): start the guest only once a
    /// first client has connected.
    pub wait: bool,
    /// The option as given (`-serial tcp:...`), for QEMU's messages.
    pub origin: String,
}

impl TcpSerial {
    /// `HOST:PORT` as QEMU prints it in its messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host to bind or connect to.
    pub fn host_or_default(&self) -> &str {
        match (self.host.as_str(), self.server) {
            ("", true) => "0.0.0.0",
            ("", false) => "localhost",
            (h, _) => h,
        }
    }
}

/// `tcp:[HOST]:PORT[,server=on][,wait=off]` (the `-serial` value).
pub fn parse_tcp(s: &str) -> Result<TcpSerial> {
    let o = "-serial";
    let body = s.strip_prefix("tcp:").unwrap_or(s);
    let (addr, rest) = body.split_once(',').unwrap_or((body, ""));
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad(o, format!("'{s}': no port given (tcp:HOST:PORT)")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let kv = if rest.is_empty() {
        Vec::new()
    } else {
        legacy_pairs(o, rest, None)?
    };
    for (k, _) in &kv {
        if !matches!(k.as_str(), "server" | "wait" | "nowait") {
            return Err(bad(o, format!("'{s}': unsupported suboption '{k}'")));
        }
    }
    build(o, s, host, port, &kv)
}

/// `-chardev socket,id=ID,host=HOST,port=PORT[,server=on][,wait=off]`:
/// `None` if the chardev has no `host=`/`port=` (a Unix socket). `kv`
/// are its pairs, the legacy `server`/`nowait` flags already spelled out.
pub fn parse_chardev(s: &str, kv: &[(String, String)]) -> Result<Option<(String, TcpSerial)>> {
    let o = "-chardev";
    if !kv.iter().any(|(k, _)| k == "host" || k == "port") {
        return Ok(None);
    }
    let (mut id, mut host, mut port) = (None, String::new(), None);
    for (k, v) in kv {
        match k.as_str() {
            "backend" | "server" | "wait" | "nowait" => {}
            "id" => id = Some(v.clone()),
            "host" => host = v.clone(),
            "port" => port = Some(v.clone()),
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    let id = id.ok_or_else(|| bad(o, "Parameter 'id' is missing"))?;
    let port = port.ok_or_else(|| CliError::At {
        option: o.into(),
        value: s.into(),
        reason: "chardev: socket: no port given".into(),
    })?;
    Ok(Some((id, build(o, s, &host, &port, kv)?)))
}

fn build(o: &str, s: &str, host: &str, port: &str, kv: &[(String, String)]) -> Result<TcpSerial> {
    let port = port
        .parse::<u16>()
        .map_err(|_| bad(o, format!("'{s}': '{port}' is not a port number")))?;
    let wait = server_wait(o, kv)?;
    Ok(TcpSerial {
        host: host.to_owned(),
        port,
        server: wait.is_some(),
        wait: wait.unwrap_or(false),
        origin: format!("{o} {s}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_spellings_parse_as_qemu_writes_them() {
        let t = parse_tcp("tcp:127.0.0.1:4444").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.server),
            ("127.0.0.1", 4444, false)
        );
        let t = parse_tcp("tcp::4444,server=on,wait=off").unwrap();
        assert_eq!((t.host_or_default(), t.server), ("0.0.0.0", true));
        let t = parse_tcp("tcp:[::1]:4444,server,nowait").unwrap();
        assert_eq!(t.host, "::1");
        let t = parse_tcp("tcp:127.0.0.1:4444,server=on").unwrap();
        assert!(t.server && t.wait, "QEMU's wait=on default");
        assert!(!parse_tcp("tcp::4444,server=on,wait=off").unwrap().wait);
        assert!(parse_tcp("tcp:127.0.0.1").is_err());
        assert!(parse_tcp("tcp:127.0.0.1:http").is_err());
        assert!(parse_tcp("tcp:127.0.0.1:1,nodelay=on").is_err());
        let s = "socket,id=s,host=localhost,port=5555,server=on,wait=off";
        let pairs = legacy_pairs("-chardev", s, Some("backend")).unwrap();
        let (id, t) = parse_chardev(s, &pairs).unwrap().unwrap();
        assert_eq!((id.as_str(), t.port, t.server), ("s", 5555, true));
        let s = "socket,id=s,path=/x";
        let pairs = legacy_pairs("-chardev", s, Some("backend")).unwrap();
        assert_eq!(parse_chardev(s, &pairs).unwrap(), None);
    }
}
