//! The migration commands: one file per concern. `capabilities.rs`
//! `migrate-set-capabilities`.

pub mod capabilities;

pub use capabilities::MigrateSetCapabilities;
