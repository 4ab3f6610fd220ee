//! `-incoming URI|defer`. `defer` makes the VM wait in `inmigrate` with
//! nothing written into its RAM, for `xen-load-devices-state` (or, once
//! the broker listens for migrations, `migrate-incoming`). A migration URI
//! needs a listening socket the broker does not open yet: [`check`] is the
//! one place that refuses it, to be replaced by the URI's listener.

use super::{bad, Result};

/// QEMU 10's migration URI schemes.
const SCHEMES: [&str; 7] = ["tcp:", "unix:", "vsock:", "fd:", "exec:", "file:", "rdma:"];

/// Accepts `-incoming`'s value or says why not (QEMU's message for an
/// unknown protocol).
pub fn check(uri: &str) -> Result<()> {
    if uri == "defer" {
        return Ok(());
    }
    if uri.is_empty() {
        return Err(bad("-incoming", "Parameter 'channel-type' is missing"));
    }
    if !SCHEMES.iter().any(|s| uri.starts_with(s)) {
        return Err(bad(
            "-incoming",
            format!("unknown migration protocol: {uri}"),
        ));
    }
    Err(bad(
        "-incoming",
        "bulkhead cannot listen for an incoming migration yet: give -incoming defer \
         (and xen-load-devices-state)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defer_is_taken_and_uris_are_refused_with_a_reason() {
        assert!(check("defer").is_ok());
        let unknown = check("foo:bar").unwrap_err().to_string();
        assert!(
            unknown.contains("unknown migration protocol: foo:bar"),
            "{unknown}"
        );
        let uri = check("tcp:127.0.0.1:4444").unwrap_err().to_string();
        assert!(uri.contains("-incoming defer"), "{uri}");
        assert!(check("").is_err());
    }
}
