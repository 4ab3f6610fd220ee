//! `block_set_io_throttle` and `-drive throttling.*`: QEMU's throttle
//! limits, checked with QEMU's `throttle_is_valid` rules and messages,
//! kept as desired state ([`crate::machine::block_limits`]) and enforced
//! by block-proc's throttle groups.

use ipc_proto::block::{ThrottleBucket, ThrottleConfig};
use ipc_proto::ErrorClass;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::info::THROTTLE_EXTRA;
use crate::machine::block_limits::{self, Throttle};
use crate::machine::{block_state, lock, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's `THROTTLE_VALUE_MAX`.
const VALUE_MAX: u64 = 1_000_000_000_000_000;

/// The members of `BlockIOThrottle` after `device`/`id`, in bucket order
/// (bps, bps_rd, bps_wr, iops, iops_rd, iops_wr).
const BUCKETS: [&str; 6] = ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"];

/// Arguments of `block_set_io_throttle` (QEMU's `BlockIOThrottle`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BlockIoThrottle {
    /// Block backend name (`-drive`'s id); deprecated in QEMU for `id`.
    #[serde(default)]
    pub device: Option<String>,
    /// The guest device's id or QOM path.
    #[serde(default)]
    pub id: Option<String>,
    pub bps: i64,
    pub bps_rd: i64,
    pub bps_wr: i64,
    pub iops: i64,
    pub iops_rd: i64,
    pub iops_wr: i64,
    #[serde(default)]
    pub bps_max: Option<i64>,
    #[serde(default)]
    pub bps_rd_max: Option<i64>,
    #[serde(default)]
    pub bps_wr_max: Option<i64>,
    #[serde(default)]
    pub iops_max: Option<i64>,
    #[serde(default)]
    pub iops_rd_max: Option<i64>,
    #[serde(default)]
    pub iops_wr_max: Option<i64>,
    #[serde(default)]
    pub bps_max_length: Option<i64>,
    #[serde(default)]
    pub bps_rd_max_length: Option<i64>,
    #[serde(default)]
    pub bps_wr_max_length: Option<i64>,
    #[serde(default)]
    pub iops_max_length: Option<i64>,
    #[serde(default)]
    pub iops_rd_max_length: Option<i64>,
    #[serde(default)]
    pub iops_wr_max_length: Option<i64>,
    /// I/O size an operation counts as.
    #[serde(default)]
    pub iops_size: Option<i64>,
    /// Throttle group.
    #[serde(default)]
    pub group: Option<String>,
}

impl QapiType for BlockIoThrottle {
    fn schema() -> SchemaType {
        let mut members = vec![optional::<String>("device"), optional::<String>("id")];
        members.extend(BUCKETS.iter().map(|b| member::<i64>(b)));
        members.extend(THROTTLE_EXTRA.iter().map(|m| optional::<i64>(m)));
        members.push(optional::<String>("group"));
        SchemaType::Object {
            name: "BlockIOThrottle",
            members,
        }
    }
}

impl BlockIoThrottle {
    /// The limits as QEMU stores them: integers as unsigned (a negative
    /// value becomes a huge one, refused by the range check), burst
    /// length 1 unless given.
    pub fn config(&self) -> ThrottleConfig {
        let avg = [
            self.bps,
            self.bps_rd,
            self.bps_wr,
            self.iops,
            self.iops_rd,
            self.iops_wr,
        ];
        let max = [
            self.bps_max,
            self.bps_rd_max,
            self.bps_wr_max,
            self.iops_max,
            self.iops_rd_max,
            self.iops_wr_max,
        ];
        let len = [
            self.bps_max_length,
            self.bps_rd_max_length,
            self.bps_wr_max_length,
            self.iops_max_length,
            self.iops_rd_max_length,
            self.iops_wr_max_length,
        ];
        let mut cfg = ThrottleConfig {
            op_size: self.iops_size.unwrap_or(0) as u64,
            ..ThrottleConfig::default()
        };
        for i in 0..6 {
            cfg.buckets[i] = ThrottleBucket {
                avg: avg[i] as u64,
                max: max[i].unwrap_or(0) as u64,
                burst_length: len[i].map_or(1, |l| l as u64),
            };
        }
        cfg
    }
}

/// QEMU's `throttle_is_valid`, same checks in the same order, same
/// messages.
pub fn check(cfg: &ThrottleConfig) -> std::result::Result<(), String> {
    let b = &cfg.buckets;
    let conflict = |t: usize, f: fn(&ThrottleBucket) -> u64| {
        f(&b[t]) != 0 && (f(&b[t + 1]) != 0 || f(&b[t + 2]) != 0)
    };
    if conflict(0, |x| x.avg)
        || conflict(3, |x| x.avg)
        || conflict(0, |x| x.max)
        || conflict(3, |x| x.max)
    {
        return Err(
            "bps/iops/max total values and read/write values cannot be used at the same time"
                .into(),
        );
    }
    if cfg.op_size != 0 && b[3].avg == 0 && b[4].avg == 0 && b[5].avg == 0 {
        return Err("iops size requires an iops value to be set".into());
    }
    for k in b {
        if k.avg > VALUE_MAX || k.max > VALUE_MAX {
            return Err(format!(
                "bps/iops/max values must be within [0, {VALUE_MAX}]"
            ));
        }
        if k.burst_length == 0 {
            return Err("the burst length cannot be 0".into());
        }
        if k.burst_length > 1 && k.max == 0 {
            return Err("burst length set without burst rate".into());
        }
        if k.max != 0 && k.burst_length > VALUE_MAX / k.max {
            return Err("burst length too high for this burst rate".into());
        }
        if k.max != 0 && k.avg == 0 {
            return Err("bps_max/iops_max require corresponding bps/iops values".into());
        }
        if k.max != 0 && k.max < k.avg {
            return Err("bps_max/iops_max cannot be lower than bps/iops".into());
        }
    }
    Ok(())
}

/// QEMU's `throttle_enabled`: some bucket has a rate.
pub fn enabled(cfg: &ThrottleConfig) -> bool {
    cfg.buckets.iter().any(|b| b.avg > 0)
}

fn not_found(name: &str) -> QmpError {
    QmpError {
        class: ErrorClass::DeviceNotFound,
        desc: format!("Device '{name}' not found"),
    }
}

/// The drive ids given with `-drive` (QEMU's named block backends).
pub fn drive_ids(m: &Machine) -> Vec<String> {
    m.config()
        .blockdevs
        .iter()
        .filter(|s| s.option == "-drive")
        .filter_map(|s| s.options.get("node-name")?.as_str().map(str::to_owned))
        .collect()
}

/// The block backend name QEMU gives the device using `drive`: the drive
/// id for a `-drive`, else "" (a device's own anonymous backend).
pub fn backend_name(m: &Machine, drive: &str) -> String {
    if drive_ids(m).iter().any(|d| d == drive) {
        drive.to_string()
    } else {
        String::new()
    }
}

/// QEMU's `qmp_get_blk`: the device (qdev id) named by `device` (backend
/// name) or `id` (qdev id or QOM path).
fn find_device(m: &Machine, device: Option<&str>, id: Option<&str>) -> Result<String> {
    let devs = crate::machine::devices::block_devices(m);
    match (device, id) {
        (Some(name), None) => devs
            .into_iter()
            .find(|(_, drive)| !name.is_empty() && backend_name(m, drive) == name)
            .map(|(qdev, _)| qdev)
            .ok_or_else(|| not_found(name)),
        (None, Some(id)) => {
            let bare = id.strip_prefix("/machine/peripheral/").unwrap_or(id);
            devs.into_iter()
                .find(|(qdev, _)| qdev == bare)
                .map(|(qdev, _)| qdev)
                .ok_or_else(|| not_found(id))
        }
        (Some(_), Some(_)) | (None, None) => {
            Err(QmpError::generic("Need exactly one of 'device' and 'id'"))
        }
    }
}

/// `block_set_io_throttle`.
pub struct BlockSetIoThrottle;

impl Command for BlockSetIoThrottle {
    const NAME: &'static str = "block_set_io_throttle";
    const DOC: &'static str = "Set a block device's I/O limits (QEMU's throttle groups; all \
        zero turns throttling off).";
    type Args = BlockIoThrottle;
    type Ret = Empty;

    fn run(args: BlockIoThrottle, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let qdev = find_device(m, args.device.as_deref(), args.id.as_deref())?;
        let cfg = args.config();
        check(&cfg).map_err(QmpError::generic)?;
        let shared = block_state::state(m);
        let (old, new) = {
            let mut st = lock(&shared);
            let old = st.limits.throttle(&qdev);
            let new = enabled(&cfg).then(|| {
                let group = match (&old, &args.group) {
                    (_, Some(g)) => g.clone(),
                    (Some(o), None) => o.group.clone(),
                    (None, None) => args.device.clone().or(args.id.clone()).unwrap_or_default(),
                };
                Throttle { group, config: cfg }
            });
            st.limits.set_device(&qdev, new.clone());
            (old, new)
        };
        let req = ipc_proto::block::BlockRequest::SetThrottle {
            id: block_limits::export_id(&qdev),
            group: new.as_ref().map(|t| t.group.clone()).unwrap_or_default(),
            config: new.as_ref().map(|t| t.config),
        };
        if let Err(e) = block_limits::send(m, req) {
            lock(&shared).limits.set_device(&qdev, old);
            return Err(e.into());
        }
        Ok(Empty {})
    }
}

/// The `-drive` `throttling.*` option names, in bucket order, and their
/// `_max` and `_max_length` forms.
const DRIVE_KEYS: [&str; 6] = [
    "bps-total",
    "bps-read",
    "bps-write",
    "iops-total",
    "iops-read",
    "iops-write",
];

/// `-drive`'s `throttling.*` options (taken out of `options`) as
/// throttling of drive `id`: None when there are none or none sets a
/// rate. The error is QEMU's message.
pub fn take_drive_throttling(
    options: &mut Map<String, Value>,
    id: &str,
) -> std::result::Result<Option<Throttle>, String> {
    let keys: Vec<String> = options
        .keys()
        .filter(|k| k.starts_with("throttling."))
        .cloned()
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let mut t: Map<String, Value> = Map::new();
    for k in keys {
        if let Some(v) = options.remove(&k) {
            t.insert(k["throttling.".len()..].to_string(), v);
        }
    }
    let num = |k: &str| t.get(k).and_then(Value::as_u64);
    let mut cfg = ThrottleConfig {
        op_size: num("iops-size").unwrap_or(0),
        ..ThrottleConfig::default()
    };
    for (i, k) in DRIVE_KEYS.iter().enumerate() {
        cfg.buckets[i] = ThrottleBucket {
            avg: num(k).unwrap_or(0),
            max: num(&format!("{k}-max")).unwrap_or(0),
            burst_length: num(&format!("{k}-max-length")).unwrap_or(1),
        };
    }
    check(&cfg)?;
    let group = t
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or(id)
        .to_string();
    Ok(enabled(&cfg).then_some(Throttle { group, config: cfg }))
}

/// Whether `key` (without `throttling.`) is one of `-drive`'s throttling
/// options, and whether it takes a number (else the group name).
pub fn drive_key(key: &str) -> Option<bool> {
    if key == "group" {
        return Some(false);
    }
    if key == "iops-size" {
        return Some(true);
    }
    let base = key
        .strip_suffix("-max-length")
        .or_else(|| key.strip_suffix("-max"))
        .unwrap_or(key);
    DRIVE_KEYS.contains(&base).then_some(true)
}

/// Records `-drive`'s throttling of drive `id`.
pub fn record_drive(m: &Machine, id: &str, t: Throttle) {
    lock(&block_state::state(m)).limits.set_drive(id, t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> BlockIoThrottle {
        let mut base =
            json!({"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn err(v: Value) -> String {
        check(&args(v).config()).unwrap_err()
    }

    /// The messages qemu-system-x86_64 10 answers for the same inputs.
    #[test]
    fn invalid_limits_get_qemus_messages() {
        assert_eq!(
            err(json!({"bps": 1, "bps_rd": 1})),
            "bps/iops/max total values and read/write values cannot be used at the same time"
        );
        assert_eq!(
            err(json!({"bps": -1})),
            "bps/iops/max values must be within [0, 1000000000000000]"
        );
        assert_eq!(
            err(json!({"bps": 1_000_000_000_000_001i64})),
            "bps/iops/max values must be within [0, 1000000000000000]"
        );
        assert_eq!(
            err(json!({"bps_max": 100})),
            "bps_max/iops_max require corresponding bps/iops values"
        );
        assert_eq!(
            err(json!({"bps": 200, "bps_max": 100})),
            "bps_max/iops_max cannot be lower than bps/iops"
        );
        assert_eq!(
            err(json!({"bps": 200, "bps_max_length": 3})),
            "burst length set without burst rate"
        );
        assert_eq!(
            err(json!({"bps": 200, "bps_max": 300, "bps_max_length": 0})),
            "the burst length cannot be 0"
        );
        assert_eq!(
            err(json!({"bps": 100, "iops_size": 512})),
            "iops size requires an iops value to be set"
        );
        assert!(check(
            &args(json!({"bps": 200, "bps_max": 300, "bps_max_length": 86401})).config()
        )
        .is_ok());
        assert!(!enabled(&args(json!({})).config()));
    }

    #[test]
    fn drive_throttling_options_become_a_group_named_after_the_drive() {
        let mut o = json!({"driver": "raw", "throttling.iops-total": 10,
            "throttling.iops-total-max": 50})
        .as_object()
        .unwrap()
        .clone();
        let t = take_drive_throttling(&mut o, "d1").unwrap().unwrap();
        assert_eq!(t.group, "d1");
        assert_eq!(t.config.buckets[3].avg, 10);
        assert_eq!(t.config.buckets[3].max, 50);
        assert_eq!(t.config.buckets[3].burst_length, 1);
        assert_eq!(o.len(), 1);
        assert_eq!(drive_key("bps-read-max-length"), Some(true));
        assert_eq!(drive_key("bogus"), None);
    }
}
