//! `migrate-set-parameters` and `query-migrate-parameters` with QEMU
//! 10's `MigrationParameters`. Bulkhead honours `downtime-limit`,
//! `max-bandwidth` and `xbzrle-cache-size` (QEMU's checks and messages;
//! a running migration is told at once) and the `announce-*` parameters
//! (the NICs' announcement when an incoming migration completes). Every other parameter keeps the
//! value QEMU 10 starts with, which `query-migrate-parameters` shows:
//! setting it to that value is accepted (nothing changes), any other
//! value is refused, never accepted and ignored. Nothing is changed when
//! any member is refused.

use ipc_proto::FlatError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::machine::migration::settings::{self, MigrationSettings};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{Builtin, Empty, Member, QapiType, SchemaType};

/// How QEMU types a parameter.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `size` / `uint64`: any integer (a negative one wraps, as QEMU).
    Unsigned,
    /// `uint32`.
    Uint32,
    /// `uint8`.
    Uint8,
    /// `bool`.
    Bool,
    /// `StrOrNull` (null: the empty string).
    StrOrNull,
    /// An enum of these values.
    Enum(&'static str, &'static [&'static str]),
    /// `block-bitmap-mapping`: a list of aliases.
    BitmapMapping,
}

/// QEMU 10's `MigrationParameters` members, in QEMU's order.
const PARAMETERS: [(&str, Kind); 29] = [
    ("announce-initial", Kind::Unsigned),
    ("announce-max", Kind::Unsigned),
    ("announce-rounds", Kind::Unsigned),
    ("announce-step", Kind::Unsigned),
    ("throttle-trigger-threshold", Kind::Uint8),
    ("cpu-throttle-initial", Kind::Uint8),
    ("cpu-throttle-increment", Kind::Uint8),
    ("cpu-throttle-tailslow", Kind::Bool),
    ("tls-creds", Kind::StrOrNull),
    ("tls-hostname", Kind::StrOrNull),
    ("tls-authz", Kind::StrOrNull),
    ("max-bandwidth", Kind::Unsigned),
    ("avail-switchover-bandwidth", Kind::Unsigned),
    ("downtime-limit", Kind::Unsigned),
    ("x-checkpoint-delay", Kind::Uint32),
    ("multifd-channels", Kind::Uint8),
    ("xbzrle-cache-size", Kind::Unsigned),
    ("max-postcopy-bandwidth", Kind::Unsigned),
    ("max-cpu-throttle", Kind::Uint8),
    (
        "multifd-compression",
        Kind::Enum("MultiFDCompression", &["none", "zlib", "zstd"]),
    ),
    ("multifd-zlib-level", Kind::Uint8),
    ("multifd-qatzip-level", Kind::Uint8),
    ("multifd-zstd-level", Kind::Uint8),
    ("block-bitmap-mapping", Kind::BitmapMapping),
    ("x-vcpu-dirty-limit-period", Kind::Unsigned),
    ("vcpu-dirty-limit", Kind::Unsigned),
    (
        "mode",
        Kind::Enum("MigMode", &["normal", "cpr-reboot", "cpr-transfer"]),
    ),
    (
        "zero-page-detection",
        Kind::Enum("ZeroPageDetection", &["none", "legacy", "multifd"]),
    ),
    ("direct-io", Kind::Bool),
];

/// The parameters bulkhead acts on.
const HONOURED: [&str; 7] = [
    "downtime-limit",
    "max-bandwidth",
    "xbzrle-cache-size",
    "announce-initial",
    "announce-max",
    "announce-rounds",
    "announce-step",
];

/// Every parameter's value as `query-migrate-parameters` shows it: QEMU
/// 10's defaults (`-M microvm`), with the honoured ones from `s`.
pub fn values(s: &MigrationSettings) -> Map<String, Value> {
    let v = json!({
        "announce-initial": s.announce.initial, "announce-max": s.announce.max,
        "announce-rounds": s.announce.rounds, "announce-step": s.announce.step,
        "throttle-trigger-threshold": 50,
        "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
        "cpu-throttle-tailslow": false, "tls-creds": "", "tls-hostname": "",
        "tls-authz": "", "max-bandwidth": s.max_bandwidth,
        "avail-switchover-bandwidth": 0, "downtime-limit": s.downtime_limit_ms,
        "x-checkpoint-delay": 20000, "multifd-channels": 2,
        "xbzrle-cache-size": s.xbzrle_cache_size, "max-postcopy-bandwidth": 0,
        "max-cpu-throttle": 99, "multifd-compression": "none",
        "multifd-zlib-level": 1, "multifd-qatzip-level": 1, "multifd-zstd-level": 1,
        "x-vcpu-dirty-limit-period": 1000, "vcpu-dirty-limit": 1, "mode": "normal",
        "zero-page-detection": "multifd", "direct-io": false,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// An unsigned QAPI integer as QEMU reads it: negative values wrap.
fn unsigned(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|i| i as u64))
}

fn schema_of(kind: Kind, query: bool) -> SchemaType {
    match kind {
        Kind::Unsigned | Kind::Uint8 => SchemaType::Builtin(Builtin::Uint64),
        Kind::Uint32 => SchemaType::Builtin(Builtin::Uint32),
        Kind::Bool => SchemaType::Builtin(Builtin::Bool),
        // An alternate of str and null in the arguments; str in the reply.
        Kind::StrOrNull if query => SchemaType::Builtin(Builtin::Str),
        Kind::StrOrNull => SchemaType::Builtin(Builtin::Any),
        Kind::Enum(name, values) => SchemaType::Enum {
            name,
            values: values.to_vec(),
        },
        Kind::BitmapMapping => SchemaType::Array(Box::new(SchemaType::Builtin(Builtin::Any))),
    }
}

fn schema(name: &'static str, query: bool) -> SchemaType {
    SchemaType::Object {
        name,
        members: PARAMETERS
            .iter()
            .map(|&(name, kind)| Member {
                name,
                ty: schema_of(kind, query),
                optional: true,
            })
            .collect(),
    }
}

/// Arguments of `migrate-set-parameters`: any of the parameters.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct SetParametersArgs(pub Map<String, Value>);

impl QapiType for SetParametersArgs {
    fn schema() -> SchemaType {
        schema("MigrateSetParameters", false)
    }
}

/// `query-migrate-parameters`'s reply.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct MigrationParameters(pub Map<String, Value>);

impl QapiType for MigrationParameters {
    fn schema() -> SchemaType {
        schema("MigrationParameters", true)
    }
}

/// Checks `args` against `s` and applies them: QEMU's type checks the
/// schema cannot express, the parameters bulkhead does not implement,
/// then QEMU's range checks (in QEMU's order), all before any change.
pub fn apply(
    s: &mut MigrationSettings,
    args: &Map<String, Value>,
) -> std::result::Result<(), String> {
    let given = || {
        PARAMETERS
            .iter()
            .filter_map(|&(name, kind)| args.get(name).map(|v| (name, kind, v)))
    };
    for (name, kind, v) in given() {
        match kind {
            Kind::Uint8 if unsigned(v).is_none_or(|x| x > 255) => {
                return Err(format!("Parameter '{name}' expects uint8_t"));
            }
            Kind::StrOrNull if !(v.is_string() || v.is_null()) => {
                return Err(format!(
                    "Invalid parameter type for '{name}', expected: StrOrNull"
                ));
            }
            _ => {}
        }
    }
    let current = values(s);
    for (name, kind, v) in given().filter(|(n, _, _)| !HONOURED.contains(n)) {
        let now = current.get(name).unwrap_or(&Value::Null);
        let same = match kind {
            Kind::Unsigned | Kind::Uint32 | Kind::Uint8 => unsigned(v) == now.as_u64(),
            Kind::StrOrNull => v == now || (v.is_null() && now == ""),
            Kind::Bool | Kind::Enum(..) => v == now,
            Kind::BitmapMapping => false,
        };
        if !same {
            let shown = if now.is_null() {
                "unset".to_owned()
            } else {
                now.to_string()
            };
            return Err(format!(
                "Parameter '{name}' cannot be changed: bulkhead does not implement it \
                 (it stays {shown})"
            ));
        }
    }
    let get = |name| args.get(name).and_then(unsigned);
    let mut new = *s;
    if let Some(bw) = get("max-bandwidth") {
        // QEMU's limit is SIZE_MAX: every u64 on a 64-bit host.
        new.max_bandwidth = bw;
    }
    if let Some(ms) = get("downtime-limit") {
        settings::check_downtime_limit(ms)?;
        new.downtime_limit_ms = ms;
    }
    if let Some(bytes) = get("xbzrle-cache-size") {
        settings::check_xbzrle_cache_size(bytes)?;
        new.xbzrle_cache_size = bytes;
    }
    for (name, field) in [
        ("announce-initial", &mut new.announce.initial),
        ("announce-max", &mut new.announce.max),
        ("announce-rounds", &mut new.announce.rounds),
        ("announce-step", &mut new.announce.step),
    ] {
        if let Some(v) = get(name) {
            settings::check_announce(name, v)?;
            *field = v;
        }
    }
    *s = new;
    Ok(())
}

/// `migrate-set-parameters`.
pub struct MigrateSetParameters;

impl Command for MigrateSetParameters {
    const NAME: &'static str = "migrate-set-parameters";
    const DOC: &'static str = "Set migration parameters: 'downtime-limit', 'max-bandwidth' and \
        'xbzrle-cache-size' (a running migration takes them at once), 'announce-initial', \
        'announce-max', 'announce-rounds' and 'announce-step' (the NICs' announcement after an \
        incoming migration); the others only to the value they have.";
    type Args = SetParametersArgs;
    type Ret = Empty;

    fn run(args: SetParametersArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        settings::update(ctx.machine, |s| {
            apply(s, &args.0).map_err(FlatError::generic)
        })
        .map_err(QmpError::from)?;
        Ok(Empty {})
    }
}

/// `query-migrate-parameters`.
pub struct QueryMigrateParameters;

impl Command for QueryMigrateParameters {
    const NAME: &'static str = "query-migrate-parameters";
    const DOC: &'static str = "Every migration parameter of QEMU 10 and its value.";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = MigrationParameters;

    fn run(_args: Empty, ctx: &Ctx<'_>) -> Result<MigrationParameters> {
        Ok(MigrationParameters(values(&settings::current(ctx.machine))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &mut MigrationSettings, v: Value) -> std::result::Result<(), String> {
        match v {
            Value::Object(m) => apply(s, &m),
            _ => unreachable!("test arguments are objects"),
        }
    }

    #[test]
    fn the_honoured_parameters_are_set_and_shown() {
        let mut s = MigrationSettings::default();
        set(
            &mut s,
            json!({"downtime-limit": 50, "max-bandwidth": -1, "xbzrle-cache-size": 1 << 20}),
        )
        .unwrap();
        assert_eq!(
            (s.downtime_limit_ms, s.max_bandwidth, s.xbzrle_cache_size),
            (50, u64::MAX, 1 << 20)
        );
        let v = values(&s);
        assert_eq!(v["downtime-limit"], 50);
        assert_eq!(v["max-bandwidth"], json!(u64::MAX));
        assert_eq!(v.len(), 28);
    }

    #[test]
    fn the_announce_parameters_are_set_checked_and_shown() {
        let mut s = MigrationSettings::default();
        set(
            &mut s,
            json!({"announce-initial": 10, "announce-max": 40, "announce-rounds": 3,
                   "announce-step": 15}),
        )
        .unwrap();
        let v = values(&s);
        assert_eq!(
            (
                &v["announce-initial"],
                &v["announce-max"],
                &v["announce-rounds"],
                &v["announce-step"]
            ),
            (&json!(10), &json!(40), &json!(3), &json!(15))
        );
        // QEMU's order: downtime-limit is checked before the announce-*.
        let e = set(
            &mut s,
            json!({"announce-step": 0, "downtime-limit": 3_000_000}),
        )
        .unwrap_err();
        assert!(e.starts_with("Parameter 'downtime_limit'"), "{e}");
        let e = set(&mut s, json!({"announce-rounds": 2, "announce-step": 0})).unwrap_err();
        assert_eq!(
            e,
            "Parameter 'announce_step' expects a value between 0 and 10000"
        );
        assert_eq!(s.announce.rounds, 3, "a refused change changed a member");
    }

    #[test]
    fn one_bad_member_changes_nothing() {
        let mut s = MigrationSettings::default();
        let e = set(
            &mut s,
            json!({"max-bandwidth": 1, "xbzrle-cache-size": 5000}),
        )
        .unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        assert_eq!(s, MigrationSettings::default());
    }

    #[test]
    fn other_parameters_only_keep_their_value() {
        let mut s = MigrationSettings::default();
        set(
            &mut s,
            json!({"tls-creds": null, "tls-hostname": "", "mode": "normal",
                   "multifd-channels": 2, "direct-io": false}),
        )
        .unwrap();
        for bad in [
            json!({"cpu-throttle-initial": 30}),
            json!({"tls-creds": "tls0"}),
            json!({"mode": "cpr-reboot"}),
            json!({"direct-io": true}),
            json!({"block-bitmap-mapping": []}),
        ] {
            let e = set(&mut s, bad.clone()).unwrap_err();
            assert!(e.contains("cannot be changed"), "{bad}: {e}");
        }
        assert_eq!(
            set(&mut s, json!({"multifd-channels": 256})).unwrap_err(),
            "Parameter 'multifd-channels' expects uint8_t"
        );
        assert_eq!(
            set(&mut s, json!({"tls-authz": 1})).unwrap_err(),
            "Invalid parameter type for 'tls-authz', expected: StrOrNull"
        );
    }
}
