//! Migration URIs as QEMU 10 parses them (`migrate_uri_parse`,
//! `inet_parse`): `unix:PATH`, `tcp:HOST:PORT` (`[V6]:PORT`, an empty
//! host listens on every address) and `fd:NAME`. QEMU's other transports
//! (`exec:`, `file:`, `rdma:`, `vsock:`) are not built into bulkhead and
//! get QEMU's answer for a transport its build lacks.

/// Errors of a URI; `Display` is QEMU's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// A scheme bulkhead does not have.
    #[error("unknown migration protocol: {0}")]
    UnknownProtocol(String),
    /// `unix:` without a path.
    #[error("invalid Unix socket address")]
    BadUnix,
    /// A `tcp:` address that is not `HOST:PORT`.
    #[error("error parsing address '{0}'")]
    BadInet(String),
}

/// Where a migration goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUri {
    /// A Unix stream socket at this path.
    Unix(String),
    /// A TCP address.
    Tcp {
        /// Host name or address (without IPv6 brackets; empty: any).
        host: String,
        /// Port (a number or a service name, as QEMU resolves it).
        port: String,
    },
    /// A connected socket passed with `getfd` under this name.
    Fd(String),
}

/// Parses `uri`.
pub fn parse(uri: &str) -> Result<MigrationUri, UriError> {
    if let Some(path) = uri.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(UriError::BadUnix);
        }
        return Ok(MigrationUri::Unix(path.to_owned()));
    }
    if let Some(addr) = uri.strip_prefix("tcp:") {
        let (host, port) = parse_inet(addr).ok_or_else(|| UriError::BadInet(addr.to_owned()))?;
        return Ok(MigrationUri::Tcp { host, port });
    }
    if let Some(name) = uri.strip_prefix("fd:") {
        return Ok(MigrationUri::Fd(name.to_owned()));
    }
    Err(UriError::UnknownProtocol(uri.to_owned()))
}

/// `HOST:PORT` or `[V6]:PORT` (QEMU's `inet_parse`: the port must not be
/// empty; options after a comma are not taken).
fn parse_inet(addr: &str) -> Option<(String, String)> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        addr.rsplit_once(':')?
    };
    if port.is_empty() || port.contains(',') || (!addr.starts_with('[') && host.contains(':')) {
        return None;
    }
    Some((host.to_owned(), port.to_owned()))
}

impl MigrationUri {
    /// How QEMU names the peer in "Failed to connect to '...'".
    pub fn peer(&self) -> String {
        match self {
            MigrationUri::Unix(p) => p.clone(),
            MigrationUri::Tcp { host, port } => format!("{host}:{port}"),
            MigrationUri::Fd(n) => n.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(uri: &str) -> String {
        parse(uri).unwrap_err().to_string()
    }

    #[test]
    fn the_three_transports_parse() {
        assert_eq!(
            parse("unix:/a/b").unwrap(),
            MigrationUri::Unix("/a/b".into())
        );
        assert_eq!(
            parse("tcp:127.0.0.1:4444").unwrap(),
            MigrationUri::Tcp {
                host: "127.0.0.1".into(),
                port: "4444".into()
            }
        );
        assert_eq!(
            parse("tcp:[::1]:5").unwrap(),
            MigrationUri::Tcp {
                host: "::1".into(),
                port: "5".into()
            }
        );
        assert_eq!(
            parse("tcp::4444").unwrap(),
            MigrationUri::Tcp {
                host: "".into(),
                port: "4444".into()
            }
        );
        assert_eq!(parse("fd:mig").unwrap(), MigrationUri::Fd("mig".into()));
    }

    #[test]
    fn bad_uris_get_qemu_messages() {
        assert_eq!(err("foo:bar"), "unknown migration protocol: foo:bar");
        assert_eq!(err("exec:true"), "unknown migration protocol: exec:true");
        assert_eq!(err("unix:"), "invalid Unix socket address");
        assert_eq!(err("tcp:nohost"), "error parsing address 'nohost'");
        assert_eq!(err("tcp:127.0.0.1:"), "error parsing address '127.0.0.1:'");
        assert_eq!(err("tcp:[::1]"), "error parsing address '[::1]'");
    }
}
