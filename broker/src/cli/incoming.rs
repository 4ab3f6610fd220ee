//! `-incoming URI|defer`. `defer` makes the VM wait in `inmigrate` with
//! nothing written into its RAM, for `xen-load-devices-state` or
//! `migrate-incoming`; a URI is parsed and bound at start-up
//! (`machine/migration/uri.rs`, `transport.rs`, with QEMU's messages).
//! [`check`] only refuses what QEMU refuses while parsing options.

use super::{bad, Result};

/// Accepts `-incoming`'s value or says why not.
pub fn check(uri: &str) -> Result<()> {
    if uri.is_empty() {
        return Err(bad("-incoming", "Parameter 'channel-type' is missing"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defer_and_uris_are_taken_and_an_empty_value_is_refused() {
        assert!(check("defer").is_ok());
        assert!(check("tcp:127.0.0.1:4444").is_ok());
        let empty = check("").unwrap_err().to_string();
        assert!(empty.contains("channel-type"), "{empty}");
    }
}
