//! `announce-self` (QEMU 4.0, `interfaces` and `id` 6.0): announce the
//! NICs' MACs now, in rounds with growing gaps, as after a migration
//! ([`crate::machine::announce`]). A second call with the same `id`
//! replaces the running timer of that id, as QEMU's named timers.

use serde::Deserialize;

use crate::machine::announce::{self, AnnounceParams, TimerName};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's `AnnounceParameters` (times in ms).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceArgs {
    /// Gap after the first round.
    pub initial: i64,
    /// Largest gap.
    pub max: i64,
    /// Number of rounds.
    pub rounds: i64,
    /// Growth of the gap per round.
    pub step: i64,
    /// Only these NICs (device ids).
    pub interfaces: Option<Vec<String>>,
    /// The timer's name.
    pub id: Option<String>,
}

impl QapiType for AnnounceArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "AnnounceParameters",
            members: vec![
                member::<i64>("initial"),
                member::<i64>("max"),
                member::<i64>("rounds"),
                member::<i64>("step"),
                optional::<Vec<String>>("interfaces"),
                optional::<String>("id"),
            ],
        }
    }
}

/// `announce-self`.
pub struct AnnounceSelf;

impl Command for AnnounceSelf {
    const NAME: &'static str = "announce-self";
    const DOC: &'static str = "Announce the NICs' MACs (a RARP from each, out its netdev, or \
        through its vhost-user backend's SEND_RARP): `rounds` rounds, the first at once, then \
        gaps of `initial` ms growing by `step` up to `max`; only the NICs in `interfaces` if \
        given; a call with the same `id` replaces the running one.";
    type Args = AnnounceArgs;
    type Ret = Empty;

    fn run(a: AnnounceArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        // QEMU takes any int; a negative count would announce without end
        // there (its counter never reaches 0), so it is refused here.
        let rounds = u64::try_from(a.rounds).map_err(|_| {
            QmpError::generic(format!(
                "Parameter 'rounds' expects a number of rounds, not {}",
                a.rounds
            ))
        })?;
        let params = AnnounceParams {
            initial: a.initial,
            max: a.max,
            rounds,
            step: a.step,
            interfaces: a.interfaces,
        };
        let name = TimerName::Named(a.id.unwrap_or_default());
        announce::start(ctx.machine, name, params)?;
        Ok(Empty {})
    }
}
