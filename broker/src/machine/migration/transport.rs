//! The migration stream's socket: the broker connects (source) or listens
//! and accepts one connection (target) and hands the connected fd to
//! vcpu-proc, which has no network or filesystem of its own. Messages are
//! QEMU's (`socket_connect`, `socket_listen`).

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

use serde_json::{json, Value};

use super::uri::MigrationUri;
use crate::machine::images::open::strerror;

/// Errors of a connection; `Display` is QEMU's message.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// connect() failed.
    #[error("Failed to connect to '{peer}': {reason}")]
    Connect {
        /// The address as given.
        peer: String,
        /// strerror.
        reason: String,
    },
    /// A TCP name or port did not resolve.
    #[error("address resolution failed for {peer}: {reason}")]
    Resolve {
        /// `host:port`.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A Unix socket could not be bound.
    #[error("Failed to bind socket to {path}: {reason}")]
    BindUnix {
        /// The path.
        path: String,
        /// strerror.
        reason: String,
    },
    /// No TCP port could be bound.
    #[error("Failed to find an available port: {0}")]
    BindTcp(String),
    /// `fd:` is not for this call (the caller resolves names).
    #[error("internal error: fd: has no address")]
    NoAddress,
}

/// Connects to `uri` (`unix:` or `tcp:`).
pub fn connect(uri: &MigrationUri) -> Result<OwnedFd, TransportError> {
    let failed = |e: std::io::Error| TransportError::Connect {
        peer: uri.peer(),
        reason: strerror(&e),
    };
    match uri {
        MigrationUri::Unix(path) => UnixStream::connect(path).map(OwnedFd::from).map_err(failed),
        MigrationUri::Tcp { host, port } => {
            let mut last = None;
            for addr in resolve(host, port)? {
                match TcpStream::connect(addr) {
                    Ok(s) => {
                        // Page-sized writes: no waiting for ACKs to batch them.
                        let _ = s.set_nodelay(true);
                        return Ok(OwnedFd::from(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(failed(last.unwrap_or_else(|| {
                std::io::Error::from(std::io::ErrorKind::AddrNotAvailable)
            })))
        }
        MigrationUri::Fd(_) => Err(TransportError::NoAddress),
    }
}

fn resolve(host: &str, port: &str) -> Result<Vec<std::net::SocketAddr>, TransportError> {
    let peer = format!("{host}:{port}");
    let bad = |reason: String| TransportError::Resolve {
        peer: peer.clone(),
        reason,
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("Servname not supported for ai_socktype".into()))?;
    let host = if host.is_empty() { "::" } else { host };
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| bad(e.to_string()))
}

/// A listening socket of `-incoming` / `migrate-incoming`.
pub enum Listening {
    /// `unix:`.
    Unix(UnixListener),
    /// `tcp:`.
    Tcp(TcpListener),
}

impl Listening {
    /// Binds `uri` (`unix:` or `tcp:`). A Unix path that exists is
    /// replaced, as QEMU does.
    pub fn bind(uri: &MigrationUri) -> Result<Listening, TransportError> {
        match uri {
            MigrationUri::Unix(path) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(Listening::Unix).map_err(|e| {
                    TransportError::BindUnix {
                        path: path.clone(),
                        reason: strerror(&e),
                    }
                })
            }
            MigrationUri::Tcp { host, port } => {
                let mut last = None;
                for addr in resolve(host, port)? {
                    match TcpListener::bind(addr) {
                        Ok(l) => return Ok(Listening::Tcp(l)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(TransportError::BindTcp(
                    last.map(|e| strerror(&e))
                        .unwrap_or_else(|| "no address".into()),
                ))
            }
            MigrationUri::Fd(_) => Err(TransportError::NoAddress),
        }
    }

    /// QEMU's `socket-address` list of `query-migrate` on the target.
    pub fn socket_address(&self) -> Vec<Value> {
        match self {
            Listening::Unix(l) => {
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_default();
                vec![json!({"type": "unix", "path": path})]
            }
            Listening::Tcp(l) => match l.local_addr() {
                Ok(a) => {
                    let family = if a.is_ipv4() { "ipv4" } else { "ipv6" };
                    vec![json!({
                        "type": "inet",
                        "host": a.ip().to_string(),
                        "port": a.port().to_string(),
                        family: true,
                    })]
                }
                Err(_) => Vec::new(),
            },
        }
    }

    /// Waits for the one connection a migration needs.
    pub fn accept(&self) -> std::io::Result<OwnedFd> {
        match self {
            Listening::Unix(l) => l.accept().map(|(s, _)| OwnedFd::from(s)),
            Listening::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                OwnedFd::from(s)
            }),
        }
    }

    /// Removes a Unix socket's path once its one connection came (no
    /// second peer can connect to a socket nobody accepts on).
    pub fn remove_path(&self) {
        if let Listening::Unix(l) = self {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
            if let Some(p) = path {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_qemus() {
        let e = connect(&MigrationUri::Unix("/nonexistent/x".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Failed to connect to '/nonexistent/x': No such file or directory"
        );
        let e = Listening::bind(&MigrationUri::Unix("/nonexistent/x".into()))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "Failed to bind socket to /nonexistent/x: No such file or directory"
        );
    }

    #[test]
    fn a_tcp_listener_on_port_zero_reports_its_port_and_accepts() {
        let uri = MigrationUri::Tcp {
            host: "127.0.0.1".into(),
            port: "0".into(),
        };
        let l = Listening::bind(&uri).unwrap();
        let addr = l.socket_address();
        let port = addr[0]["port"].as_str().unwrap().to_owned();
        assert_ne!(port, "0");
        assert_eq!(addr[0]["ipv4"], true);
        let c = connect(&MigrationUri::Tcp {
            host: "127.0.0.1".into(),
            port,
        })
        .unwrap();
        let a = l.accept().unwrap();
        drop((c, a));
    }
}
