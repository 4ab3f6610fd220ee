//! `migrate-set-capabilities` and `query-migrate-capabilities`. Bulkhead
//! honours `xbzrle` (pages sent again go as XBZRLE deltas) and `events`
//! (MIGRATION / MIGRATION_PASS); any other capability may be turned off
//! (it is) but turning it on is refused. As in QEMU, nothing changes
//! while a migration runs, and a list with one bad entry
//! changes nothing.

use ipc_proto::FlatError;
use serde::{Deserialize, Serialize};

use crate::machine::migration::settings::{self, MigrationSettings};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// QEMU 10's `MigrationCapability` values, in QEMU's order.
pub const CAPABILITIES: [&str; 22] = [
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
    "switchover-ack",
    "dirty-limit",
    "mapped-ram",
];

/// One capability and its state.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityStatus {
    /// The capability.
    pub capability: String,
    /// On or off.
    pub state: bool,
}

impl QapiType for CapabilityStatus {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrationCapabilityStatus",
            members: vec![
                crate::qmp::schema::Member {
                    name: "capability",
                    ty: SchemaType::Enum {
                        name: "MigrationCapability",
                        values: CAPABILITIES.to_vec(),
                    },
                    optional: false,
                },
                member::<bool>("state"),
            ],
        }
    }
}

/// Arguments of `migrate-set-capabilities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCapabilitiesArgs {
    /// The capabilities to set.
    pub capabilities: Vec<CapabilityStatus>,
}

impl QapiType for SetCapabilitiesArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrateSetCapabilitiesArgs",
            members: vec![member::<Vec<CapabilityStatus>>("capabilities")],
        }
    }
}

/// QEMU's message while a migration runs.
pub const MIGRATION_ACTIVE: &str = "There's a migration process in progress";

/// Where a capability bulkhead honours is kept; None for the others.
fn honoured<'a>(s: &'a mut MigrationSettings, capability: &str) -> Option<&'a mut bool> {
    match capability {
        "xbzrle" => Some(&mut s.xbzrle),
        "events" => Some(&mut s.events),
        _ => None,
    }
}

/// Sets `caps` in `s`, unless a migration is `running`: all or nothing.
pub fn apply(
    s: &mut MigrationSettings,
    caps: &[CapabilityStatus],
    running: bool,
) -> std::result::Result<(), String> {
    if running {
        return Err(MIGRATION_ACTIVE.into());
    }
    let mut new = *s;
    for c in caps {
        match honoured(&mut new, &c.capability) {
            Some(state) => *state = c.state,
            None if !c.state => {}
            None => {
                return Err(format!(
                    "Capability '{}' is not supported by bulkhead (only 'xbzrle' and 'events' \
                     can be turned on)",
                    c.capability
                ))
            }
        }
    }
    *s = new;
    Ok(())
}

/// `migrate-set-capabilities`.
pub struct MigrateSetCapabilities;

impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    const DOC: &'static str = "Set migration capabilities: 'xbzrle' and 'events' are honoured; \
        any other may be turned off, not on. Refused while a migration runs.";
    type Args = SetCapabilitiesArgs;
    type Ret = Empty;

    fn run(args: SetCapabilitiesArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let running = settings::migration_running(ctx.machine);
        settings::update(ctx.machine, |s| {
            apply(s, &args.capabilities, running).map_err(FlatError::generic)
        })
        .map_err(QmpError::from)?;
        Ok(Empty {})
    }
}

/// Every capability of QEMU 10 with its state.
pub fn states(s: &MigrationSettings) -> Vec<CapabilityStatus> {
    let mut s = *s;
    CAPABILITIES
        .iter()
        .map(|&c| CapabilityStatus {
            capability: c.to_owned(),
            state: honoured(&mut s, c).is_some_and(|v| *v),
        })
        .collect()
}

/// `query-migrate-capabilities`.
pub struct QueryMigrateCapabilities;

impl Command for QueryMigrateCapabilities {
    const NAME: &'static str = "query-migrate-capabilities";
    const DOC: &'static str = "Every migration capability of QEMU 10 and its state.";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = Vec<CapabilityStatus>;

    fn run(_args: Empty, ctx: &Ctx<'_>) -> Result<Vec<CapabilityStatus>> {
        Ok(states(&settings::current(ctx.machine)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(c: &str, state: bool) -> CapabilityStatus {
        CapabilityStatus {
            capability: c.into(),
            state,
        }
    }

    #[test]
    fn xbzrle_and_events_are_kept_and_listed() {
        let mut s = MigrationSettings::default();
        apply(
            &mut s,
            &[
                cap("xbzrle", true),
                cap("events", true),
                cap("multifd", false),
            ],
            false,
        )
        .unwrap();
        assert!(s.xbzrle && s.events);
        let on: Vec<String> = states(&s)
            .into_iter()
            .filter(|c| c.state)
            .map(|c| c.capability)
            .collect();
        assert_eq!(on, ["xbzrle", "events"]);
        assert_eq!(states(&s).len(), 22);
    }

    #[test]
    fn a_refused_entry_changes_nothing() {
        let mut s = MigrationSettings::default();
        let e = apply(
            &mut s,
            &[cap("xbzrle", true), cap("postcopy-ram", true)],
            false,
        )
        .unwrap_err();
        assert!(e.contains("'postcopy-ram' is not supported"), "{e}");
        assert!(!s.xbzrle);
    }

    #[test]
    fn nothing_changes_while_a_migration_runs() {
        let mut s = MigrationSettings::default();
        assert_eq!(
            apply(&mut s, &[cap("xbzrle", true)], true).unwrap_err(),
            MIGRATION_ACTIVE
        );
        assert_eq!(apply(&mut s, &[], true).unwrap_err(), MIGRATION_ACTIVE);
        assert!(!s.xbzrle);
    }
}
