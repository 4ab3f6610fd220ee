//! Character-device backends the broker itself serves for the guest's
//! serial port: a TCP socket (`tcp.rs`, the broker owns it: workers have
//! no network) and stdio shared by the serial port and a human monitor
//! (`mux.rs`, QEMU's mux with its Ctrl-a keys).

pub mod mux;
pub mod tcp;

/// Errors of opening a character device.
#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    /// QEMU's message for a TCP client that cannot connect.
    #[error("{origin}: Failed to connect to '{address}': {reason}")]
    Connect {
        /// The option as given.
        origin: String,
        /// HOST:PORT.
        address: String,
        /// The OS error.
        reason: String,
    },
    /// QEMU's message for a TCP server that cannot listen.
    #[error("{origin}: Failed to find an available port: {reason}")]
    Bind {
        /// The option as given.
        origin: String,
        /// The OS error.
        reason: String,
    },
    /// A socket pair, a thread, a dup or the terminal failed.
    #[error("cannot set up {what}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The OS error text without Rust's " (os error N)" suffix, as QEMU
/// prints it.
fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}
