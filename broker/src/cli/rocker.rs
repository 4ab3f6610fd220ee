//! `-device rocker` (a host-side switch). Its ports name netdevs of the
//! one netdev layer (`-netdev`, `machine::netdevs`).
//!
//! Forms accepted, as QEMU: the reference era's
//! `-device rocker,name=sw1,len-ports=2,ports[0]=p0,ports[1]=p1` and QEMU
//! 10's `-device '{"driver":"rocker","name":"sw1","ports":["p0","p1"]}'`;
//! `switch_id=` sets the id `query-rocker` shows.

use serde_json::{Map, Value};

use super::CliError;

/// The most ports a switch has (QEMU's `ROCKER_FP_PORTS_MAX`).
pub const MAX_PORTS: usize = 62;
/// The longest switch name (QEMU: interface names `NAMEpNbN` fit 15 chars).
pub const MAX_NAME_LEN: usize = 9;
/// Seconds a learned MAC lives without traffic (the Linux bridge default).
pub const DEFAULT_AGEING_SECS: u32 = 300;

/// One `-device rocker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// The switch name.
    pub name: String,
    /// Its id.
    pub id: u64,
    /// Its ports' netdev ids, pport 1 first.
    pub ports: Vec<String>,
}

/// The switches of the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RockerConfig {
    /// `-device rocker` in command-line order.
    pub switches: Vec<SwitchConfig>,
}

fn at(text: &str, reason: impl Into<String>) -> CliError {
    CliError::At {
        option: "-device".into(),
        value: text.into(),
        reason: reason.into(),
    }
}

impl RockerConfig {
    /// Takes one `-device rocker` (its properties as `parse_device` gave
    /// them; `text` as given, for messages).
    pub fn add_switch(&mut self, text: &str, d: &Map<String, Value>) -> Result<(), CliError> {
        let json = text.trim_start().starts_with('{');
        let mut name = None;
        let mut id = None;
        let mut len_ports = None;
        let mut listed: Option<Vec<String>> = None;
        let mut indexed: Vec<(usize, String)> = Vec::new();
        for (k, v) in d {
            let string = || -> Result<String, CliError> {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    at(
                        text,
                        format!("Invalid parameter type for '{k}', expected: string"),
                    )
                })
            };
            let number = || -> Result<u64, CliError> {
                match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| at(text, format!("Parameter '{k}' expects uint64")))
            };
            match k.as_str() {
                "driver" => {}
                "name" => name = Some(string()?),
                "switch_id" => id = Some(number()?),
                "len-ports" if !json => len_ports = Some(number()?),
                "ports" if json => {
                    let arr = v.as_array().ok_or_else(|| {
                        at(text, "Invalid parameter type for 'ports', expected: array")
                    })?;
                    let mut ports = Vec::new();
                    for p in arr {
                        ports.push(p.as_str().map(str::to_owned).ok_or_else(|| {
                            at(text, "Invalid parameter type for 'ports', expected: string")
                        })?);
                    }
                    listed = Some(ports);
                }
                other => {
                    let index = other
                        .strip_prefix("ports[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|i| i.parse::<usize>().ok())
                        .filter(|_| !json);
                    match index {
                        Some(i) => indexed.push((i, string()?)),
                        None => {
                            return Err(at(text, format!("Property 'rocker.{other}' not found")))
                        }
                    }
                }
            }
        }
        let ports = match listed {
            Some(p) => p,
            None => {
                let len = len_ports.unwrap_or(0) as usize;
                let mut ports = vec![None; len.min(MAX_PORTS + 1)];
                for (i, netdev) in indexed {
                    match ports.get_mut(i) {
                        Some(slot) => *slot = Some(netdev),
                        None => {
                            return Err(at(text, format!("Property 'rocker.ports[{i}]' not found")))
                        }
                    }
                }
                let mut out = Vec::new();
                for (i, p) in ports.into_iter().enumerate() {
                    out.push(p.ok_or_else(|| {
                        at(text, format!("rocker: port {i} (ports[{i}]) has no netdev"))
                    })?);
                }
                out
            }
        };
        if ports.len() > MAX_PORTS {
            return Err(at(
                text,
                format!("len-ports greater than maximum {MAX_PORTS}"),
            ));
        }
        let name = name.unwrap_or_else(|| "rocker".into());
        if self.switches.iter().any(|s| s.name == name) {
            return Err(at(text, format!("{name} already exists")));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(at(
                text,
                format!("name too long; please shorten to at most {MAX_NAME_LEN} chars"),
            ));
        }
        for (i, p) in ports.iter().enumerate() {
            if ports[..i].contains(p) || self.switches.iter().any(|s| s.ports.contains(p)) {
                return Err(at(
                    text,
                    format!("Property 'rocker.ports' can't take value '{p}', it's in use"),
                ));
            }
        }
        // QEMU's default: the first port MAC 52:54:00:12:35:01, its fifth
        // byte advanced per switch, read as a little-endian integer.
        let index = self.switches.len() as u8;
        let id = id.filter(|i| *i != 0).unwrap_or_else(|| {
            u64::from_le_bytes([
                0x52,
                0x54,
                0x00,
                0x12,
                0x35u8.wrapping_add(index),
                0x01,
                0,
                0,
            ])
        });
        self.switches.push(SwitchConfig { name, id, ports });
        Ok(())
    }

    /// Checks every port names one of the `-netdev` ids `netdevs` (they
    /// may come after the `-device`, as in QEMU). What kind of netdev it
    /// is gets checked when the switch is created (`machine::rocker`).
    pub fn check(&self, netdevs: &[&str], texts: &[String]) -> Result<(), CliError> {
        for (s, text) in self.switches.iter().zip(texts) {
            for p in &s.ports {
                if !netdevs.contains(&p.as_str()) {
                    return Err(at(
                        text,
                        format!("Property 'rocker.ports' can't find value '{p}'"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(cfg: &mut RockerConfig, text: &str) -> Result<(), CliError> {
        let d = super::super::parse_device(text)?;
        cfg.add_switch(text, &d)
    }

    #[test]
    fn both_device_forms_give_the_same_switch() {
        let mut a = RockerConfig::default();
        device(
            &mut a,
            "rocker,name=sw1,len-ports=2,ports[0]=p0,ports[1]=p1",
        )
        .unwrap();
        let mut b = RockerConfig::default();
        device(
            &mut b,
            r#"{"driver":"rocker","name":"sw1","ports":["p0","p1"]}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.switches[0].ports, vec!["p0", "p1"]);
        assert_eq!(a.switches[0].id, 1_327_446_905_938);
    }

    #[test]
    fn bad_switches_get_qemus_messages() {
        let mut c = RockerConfig::default();
        device(&mut c, r#"{"driver":"rocker","ports":[]}"#).unwrap();
        assert_eq!(c.switches[0].name, "rocker");
        let e = device(&mut c, r#"{"driver":"rocker","ports":[]}"#).unwrap_err();
        assert!(e.to_string().ends_with(": rocker already exists"), "{e}");
        let e = device(&mut c, r#"{"driver":"rocker","name":"sw1234567890"}"#).unwrap_err();
        assert!(e.to_string().ends_with("at most 9 chars"), "{e}");
        let e = device(&mut c, r#"{"driver":"rocker","name":"s","ports":"p0"}"#).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("Invalid parameter type for 'ports', expected: array"));
        let e = device(&mut c, r#"{"driver":"rocker","name":"s","bogus":1}"#).unwrap_err();
        assert!(
            e.to_string().ends_with("Property 'rocker.bogus' not found"),
            "{e}"
        );
        let e = device(&mut c, "rocker,name=s,len-ports=1,ports[1]=p0").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("Property 'rocker.ports[1]' not found"),
            "{e}"
        );
        let e = device(&mut c, "rocker,name=s,len-ports=2,ports[0]=p0").unwrap_err();
        assert!(e.to_string().contains("has no netdev"), "{e}");
        device(&mut c, r#"{"driver":"rocker","name":"sw1","ports":["x"]}"#).unwrap();
        let texts = vec![String::new(), "T".to_string()];
        let e = c.check(&["p0"], &texts).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-device T: Property 'rocker.ports' can't find value 'x'"
        );
    }
}
