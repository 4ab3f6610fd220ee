//! `-device` / `device_add` properties: the drivers bulkhead has
//! (`virtio-blk-device`, `vhost-user-blk`, `virtio-net-device`) and their
//! properties, checked with QEMU's messages.

use ipc_proto::FlatError;
use serde_json::{Map, Value};

use super::generic;

/// QEMU's virtio-blk device for a virtio-mmio bus.
pub const VIRTIO_BLK: &str = "virtio-blk-device";
/// QEMU's vhost-user-blk device for a virtio-mmio bus.
pub const VHOST_USER_BLK: &str = "vhost-user-blk";
/// Accepted as another spelling of [`VHOST_USER_BLK`].
pub const VHOST_USER_BLK_ALIAS: &str = "vhost-user-blk-device";
/// QEMU's virtio-net device for a virtio-mmio bus.
pub const VIRTIO_NET: &str = "virtio-net-device";
/// virtio-mmio slots of the platform (docs/platform.md).
pub const SLOTS: u32 = 8;
const DEFAULT_QUEUE_SIZE: u16 = 256;

/// A `-device` / `device_add` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// `id`.
    pub id: String,
    /// `driver`.
    pub driver: &'static str,
    /// `drive` (virtio-blk-device).
    pub drive: Option<String>,
    /// `chardev` (vhost-user-blk).
    pub chardev: Option<String>,
    /// `bus=virtio-mmio-bus.N`.
    pub slot: Option<u32>,
    /// `num-queues`.
    pub num_queues: u16,
    /// `queue-size`.
    pub queue_size: u16,
    /// `serial`.
    pub serial: String,
    /// `logical_block_size`.
    pub logical_block_size: u32,
    /// `netdev` (virtio-net-device).
    pub netdev: Option<String>,
    /// `mac` (virtio-net-device; the default is filled in when added).
    pub mac: Option<[u8; 6]>,
    /// `host_mtu` (virtio-net-device).
    pub host_mtu: Option<u16>,
}

fn prop_str(driver: &str, key: &str, v: &Value) -> Result<String, FlatError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(generic(format!(
            "Invalid parameter type for '{driver}.{key}', expected: string"
        ))),
    }
}

fn prop_uint(driver: &str, key: &str, v: &Value, max: u64) -> Result<u64, FlatError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(generic(format!(
            "Property {driver}.{key} doesn't take value {n} (maximum: {max})"
        ))),
        None => Err(generic(format!(
            "Parameter '{key}' expects uint{}",
            if max > u64::from(u16::MAX) { 32 } else { 16 }
        ))),
    }
}

/// QEMU's `id_wellformed`.
pub(crate) fn id_wellformed(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '-' | '.' | '_'))
}

/// Validates `device_add` / `-device` properties with QEMU's messages.
pub fn parse_spec(props: &Map<String, Value>) -> Result<DeviceSpec, FlatError> {
    let driver = match props.get("driver") {
        None => return Err(generic("Parameter 'driver' is missing")),
        Some(v) => prop_str("device", "driver", v)?,
    };
    let driver: &'static str = match driver.as_str() {
        VIRTIO_BLK => VIRTIO_BLK,
        VHOST_USER_BLK | VHOST_USER_BLK_ALIAS => VHOST_USER_BLK,
        VIRTIO_NET => VIRTIO_NET,
        other => {
            return Err(generic(format!(
                "'{other}' is not a valid device model name"
            )))
        }
    };
    let mut spec = DeviceSpec {
        id: String::new(),
        driver,
        drive: None,
        chardev: None,
        slot: None,
        num_queues: 1,
        queue_size: DEFAULT_QUEUE_SIZE,
        serial: String::new(),
        logical_block_size: 512,
        netdev: None,
        mac: None,
        host_mtu: None,
    };
    for (k, v) in props {
        match (k.as_str(), driver) {
            ("driver", _) => {}
            ("id", _) => spec.id = prop_str(driver, k, v)?,
            ("bus", _) => {
                let bus = prop_str(driver, k, v)?;
                let slot = bus
                    .strip_prefix("virtio-mmio-bus.")
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n < SLOTS)
                    .ok_or_else(|| generic(format!("Bus '{bus}' not found")))?;
                spec.slot = Some(slot);
            }
            ("drive", VIRTIO_BLK) => spec.drive = Some(prop_str(driver, k, v)?),
            ("chardev", VHOST_USER_BLK) => spec.chardev = Some(prop_str(driver, k, v)?),
            ("num-queues", d) if d != VIRTIO_NET => {
                spec.num_queues = prop_uint(driver, k, v, 16)? as u16
            }
            ("queue-size", d) if d != VIRTIO_NET => {
                spec.queue_size = prop_uint(driver, k, v, 1024)? as u16
            }
            ("netdev", VIRTIO_NET) => spec.netdev = Some(prop_str(driver, k, v)?),
            ("mac", VIRTIO_NET) => {
                let text = prop_str(driver, k, v)?;
                let mac = super::net::parse_mac(&text).ok_or_else(|| {
                    generic(format!(
                        "Property '{driver}.mac' doesn't take value '{text}'"
                    ))
                })?;
                spec.mac = Some(mac);
            }
            ("host_mtu", VIRTIO_NET) => {
                let mtu = prop_uint(driver, k, v, 65_535)?;
                if mtu < 68 {
                    return Err(generic(format!(
                        "Property {driver}.host_mtu doesn't take value {mtu} (minimum: 68)"
                    )));
                }
                spec.host_mtu = Some(mtu as u16);
            }
            ("serial", VIRTIO_BLK) => spec.serial = prop_str(driver, k, v)?,
            ("logical_block_size", VIRTIO_BLK) => {
                spec.logical_block_size = prop_uint(driver, k, v, u64::from(u32::MAX))? as u32
            }
            _ => {
                return Err(generic(format!("Property '{driver}.{k}' not found")));
            }
        }
    }
    if spec.id.is_empty() {
        return Err(generic(
            "Parameter 'id' is missing (bulkhead needs an id to manage the device)",
        ));
    }
    if !id_wellformed(&spec.id) {
        return Err(generic("Parameter 'id' expects an identifier"));
    }
    if spec.num_queues == 0 {
        return Err(generic("num-queues property must be larger than 0"));
    }
    if !spec.queue_size.is_power_of_two() || spec.queue_size < 2 {
        return Err(generic(format!(
            "invalid queue-size property ({}), must be a power of 2",
            spec.queue_size
        )));
    }
    if !matches!(spec.logical_block_size, 512 | 4096) {
        return Err(generic(format!(
            "Property {driver}.logical_block_size doesn't take value {} (must be 512 or 4096)",
            spec.logical_block_size
        )));
    }
    match driver {
        VIRTIO_BLK if spec.drive.is_none() => Err(generic("drive property not set")),
        VHOST_USER_BLK if spec.chardev.is_none() => Err(generic("chardev is mandatory")),
        // QEMU lets a NIC have no peer (it drops everything); bulkhead
        // wants the netdev that gives it one.
        VIRTIO_NET if spec.netdev.is_none() => Err(generic(
            "netdev property not set (a virtio-net-device needs a netdev in bulkhead)",
        )),
        _ => Ok(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn err(v: Value) -> String {
        parse_spec(&props(v)).unwrap_err().desc
    }

    #[test]
    fn virtio_blk_properties_parse_with_defaults() {
        let s = parse_spec(&props(
            json!({"driver": "virtio-blk-device", "drive": "d0", "id": "vda"}),
        ))
        .unwrap();
        assert_eq!(s.driver, VIRTIO_BLK);
        assert_eq!(s.drive.as_deref(), Some("d0"));
        assert_eq!(
            (s.num_queues, s.queue_size, s.logical_block_size),
            (1, 256, 512)
        );
        let s = parse_spec(&props(json!({"driver": "virtio-blk-device", "drive": "d0",
            "id": "vda", "num-queues": "2", "queue-size": 128, "serial": "abc",
            "bus": "virtio-mmio-bus.3"})))
        .unwrap();
        assert_eq!((s.num_queues, s.queue_size, s.slot), (2, 128, Some(3)));
        assert_eq!(s.serial, "abc");
    }

    #[test]
    fn bad_properties_give_qemu_messages() {
        assert_eq!(err(json!({"id": "x"})), "Parameter 'driver' is missing");
        assert_eq!(
            err(json!({"driver": "e1000", "id": "x"})),
            "'e1000' is not a valid device model name"
        );
        assert_eq!(
            err(json!({"driver": "virtio-blk-device", "drive": "d", "id": "x", "foo": 1})),
            "Property 'virtio-blk-device.foo' not found"
        );
        assert_eq!(
            err(json!({"driver": "virtio-blk-device", "id": "x"})),
            "drive property not set"
        );
        assert_eq!(
            err(json!({"driver": "vhost-user-blk", "id": "x"})),
            "chardev is mandatory"
        );
        assert_eq!(
            err(json!({"driver": "virtio-blk-device", "drive": "d", "id": "0x"})),
            "Parameter 'id' expects an identifier"
        );
        assert_eq!(
            err(json!({"driver": "virtio-blk-device", "drive": "d", "id": "x", "bus": "pci.0"})),
            "Bus 'pci.0' not found"
        );
        assert!(err(
            json!({"driver": "virtio-blk-device", "drive": "d", "id": "x",
            "queue-size": 100})
        )
        .contains("power of 2"));
    }

    #[test]
    fn virtio_net_takes_netdev_mac_and_host_mtu_with_qemu_messages() {
        let s = parse_spec(&props(
            json!({"driver": "virtio-net-device", "netdev": "n0",
            "id": "nic0", "mac": "52:54:00:aa:bb:cc", "host_mtu": "9000"}),
        ))
        .unwrap();
        assert_eq!(s.netdev.as_deref(), Some("n0"));
        assert_eq!(s.mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(s.host_mtu, Some(9000));
        assert_eq!(
            err(json!({"driver": "virtio-net-device", "netdev": "n0", "id": "x", "mac": "zz"})),
            "Property 'virtio-net-device.mac' doesn't take value 'zz'"
        );
        assert_eq!(
            err(
                json!({"driver": "virtio-net-device", "netdev": "n0", "id": "x",
                "num-queues": 2})
            ),
            "Property 'virtio-net-device.num-queues' not found"
        );
        assert!(err(json!({"driver": "virtio-net-device", "id": "x"})).contains("netdev"));
    }

    #[test]
    fn vhost_user_blk_takes_a_chardev_and_both_spellings() {
        for d in ["vhost-user-blk", "vhost-user-blk-device"] {
            let s = parse_spec(&props(json!({"driver": d, "chardev": "c0", "id": "vdb"}))).unwrap();
            assert_eq!(s.driver, VHOST_USER_BLK);
            assert_eq!(s.chardev.as_deref(), Some("c0"));
        }
        assert_eq!(
            err(json!({"driver": "vhost-user-blk", "chardev": "c0", "id": "x", "drive": "d"})),
            "Property 'vhost-user-blk.drive' not found"
        );
    }
}
