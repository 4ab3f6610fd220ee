//! The migration commands: one file per concern. `capabilities.rs`
//! `migrate-set-capabilities`; `devices_state.rs` `xen-save-devices-state`
//! and `xen-load-devices-state`.

pub mod capabilities;
pub mod devices_state;

pub use capabilities::MigrateSetCapabilities;
