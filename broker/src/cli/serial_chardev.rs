//! The guest's serial port through a character device, as QEMU and
//! libvirt write it: `-chardev null|stdio|file|pty,id=ID[,path=]` (or a
//! `socket,...,server=on,wait=off`) with `-serial chardev:ID` or
//! `-device isa-serial,chardev=ID[,id=][,index=0]`. bulkhead has one UART
//! (COM1), so only index 0. Also `-serial`'s own backends and the
//! default serial port (`-nographic`, `-nodefaults`, `-monitor stdio`).

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::monitors::legacy_pairs;
use super::{bad, parse_on_off, serial_tcp, suboptions, CliError, HmpSpec, Result, SerialSpec};

/// A `-chardev` that can back the serial port: (id, what it is), or
/// `None` if it is a Unix socket (handled elsewhere).
pub fn parse(s: &str) -> Result<Option<(String, SerialSpec)>> {
    let o = "-chardev";
    let pairs = legacy_pairs(o, s, Some("backend"))?;
    let backend = pairs
        .iter()
        .find(|(k, _)| k == "backend")
        .map_or(String::new(), |(_, v)| v.clone());
    let backend = backend.as_str();
    let spec = match backend {
        "socket" => {
            return Ok(serial_tcp::parse_chardev(s, &pairs)?.map(|(id, t)| (id, SerialSpec::Tcp(t))))
        }
        "null" => SerialSpec::Null,
        "stdio" => SerialSpec::Stdio,
        "file" => SerialSpec::File(PathBuf::new()),
        "pty" => SerialSpec::Pty(String::new()),
        "serial" | "tty" | "parallel" | "pipe" | "udp" | "ringbuf" | "memory" | "vc"
        | "spicevmc" | "spiceport" | "qemu-vdagent" | "dbus" => {
            return Err(bad(o, format!("'{backend}' chardevs are not supported by bulkhead (null, stdio, file, pty, socket are)")))
        }
        _ => return Err(bad(o, format!("Parameter 'backend' does not accept value '{backend}'"))),
    };
    let (mut id, mut path) = (None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "backend" => {}
            "id" => id = Some(v),
            "path" if backend == "file" => path = Some(PathBuf::from(v)),
            "signal" if backend == "stdio" && v == "on" => {}
            // Shared by the serial port and a readline monitor (QEMU's
            // explicit spelling of `-serial mon:stdio`).
            "mux" if backend == "stdio" && v == "on" => {}
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    let id = id.ok_or_else(|| bad(o, "Parameter 'id' is missing"))?;
    let spec = match spec {
        SerialSpec::File(_) => SerialSpec::File(
            path.ok_or_else(|| CliError::Plain("chardev: file: no filename given".into()))?,
        ),
        SerialSpec::Pty(_) => SerialSpec::Pty(id.clone()),
        other => other,
    };
    Ok(Some((id, spec)))
}

/// `-device isa-serial,chardev=ID[,id=][,index=0]`: the chardev id.
pub fn parse_isa_serial(props: &Map<String, Value>) -> Result<String> {
    let o = "-device";
    let mut chardev = None;
    for (k, v) in props {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match (k.as_str(), text.as_str()) {
            ("driver", _) | ("id", _) | ("index", "0") | ("iobase", "0x3f8" | "1016") => {}
            ("irq", "4") => {}
            ("chardev", _) => chardev = Some(text),
            ("index", _) => {
                return Err(bad(o, "isa-serial: bulkhead has one UART (COM1, index=0)"))
            }
            _ => {
                return Err(bad(
                    o,
                    format!("isa-serial: property '{k}' is not supported"),
                ))
            }
        }
    }
    chardev.ok_or_else(|| bad(o, "isa-serial: Property 'chardev' is required"))
}

/// Why `-mon chardev=ID` found no monitor socket: QEMU's "not found", or
/// that ID is a TCP socket (bulkhead's monitors listen on Unix sockets).
pub(super) fn mon_missing(id: &str, serial_chardevs: &[(String, SerialSpec)]) -> CliError {
    if serial_chardevs
        .iter()
        .any(|(c, s)| c == id && matches!(s, SerialSpec::Tcp(_)))
    {
        bad(
            "-mon",
            format!("chardev '{id}': bulkhead's monitors listen on Unix sockets (path=) only"),
        )
    } else {
        bad("-mon", format!("chardev \"{id}\" not found"))
    }
}

/// The serial port without `-serial`: as QEMU, `-nographic` puts it on
/// stdio, muxed with a human monitor unless a monitor was given
/// (`-qmp`, `-monitor`, `-mon`); `-nodefaults` removes it. Otherwise
/// bulkhead's default is stdio (QEMU's is a graphical console bulkhead
/// does not have), or none when `-monitor stdio` already holds stdio.
pub(super) fn default_serial(
    nodefaults: bool,
    nographic: bool,
    monitor: bool,
    hmp: &[HmpSpec],
) -> SerialSpec {
    if nodefaults {
        SerialSpec::Null
    } else if nographic && !monitor {
        SerialSpec::MonStdio
    } else if !nographic && hmp.contains(&HmpSpec::Stdio) {
        SerialSpec::Null
    } else {
        SerialSpec::Stdio
    }
}

pub(super) fn parse_serial(s: &str) -> Result<SerialSpec> {
    let (first, kv) = suboptions(s);
    match first {
        "stdio" => Ok(SerialSpec::Stdio),
        "null" | "none" => Ok(SerialSpec::Null),
        "pty" => Ok(SerialSpec::Pty("serial0".into())),
        "mon:stdio" => Ok(SerialSpec::MonStdio),
        _ => {
            if first.starts_with("tcp:") {
                return Ok(SerialSpec::Tcp(serial_tcp::parse_tcp(s)?));
            }
            if let Some(p) = first.strip_prefix("file:") {
                Ok(SerialSpec::File(PathBuf::from(p)))
            } else if let Some(p) = first.strip_prefix("unix:") {
                for (k, v) in kv {
                    match k {
                        "server" if parse_on_off("-serial", v)? => {}
                        "wait" if !parse_on_off("-serial", v)? => {}
                        _ => {
                            return Err(bad(
                                "-serial",
                                format!("unsupported suboption '{k}={v}' (use server=on,wait=off)"),
                            ))
                        }
                    }
                }
                Ok(SerialSpec::Unix(PathBuf::from(p)))
            } else {
                Err(bad("-serial", format!("'{s}' is not a supported backend")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_chardevs_parse_with_their_labels() {
        assert_eq!(
            parse("null,id=s").unwrap(),
            Some(("s".into(), SerialSpec::Null))
        );
        assert_eq!(
            parse("file,id=s,path=/tmp/x").unwrap(),
            Some(("s".into(), SerialSpec::File("/tmp/x".into())))
        );
        assert_eq!(parse("socket,id=s,path=/x").unwrap(), None);
        assert_eq!(
            parse("pty,id=charserial0").unwrap(),
            Some(("charserial0".into(), SerialSpec::Pty("charserial0".into())))
        );
        assert!(parse("pty,id=s,path=/x").is_err());
        assert!(parse("file,id=s").is_err());
        let props: Map<String, Value> = serde_json::from_str(
            r#"{"driver":"isa-serial","chardev":"c","id":"serial0","index":"0"}"#,
        )
        .unwrap();
        assert_eq!(parse_isa_serial(&props).unwrap(), "c");
    }

    #[test]
    fn serial_backends_parse() {
        assert_eq!(
            parse_serial("file:/tmp/s").unwrap(),
            SerialSpec::File("/tmp/s".into())
        );
        assert_eq!(
            parse_serial("unix:/tmp/s,server=on,wait=off").unwrap(),
            SerialSpec::Unix("/tmp/s".into())
        );
        assert_eq!(
            parse_serial("pty").unwrap(),
            SerialSpec::Pty("serial0".into())
        );
        assert!(matches!(
            parse_serial("tcp:127.0.0.1:4444").unwrap(),
            SerialSpec::Tcp(t) if t.port == 4444 && !t.server
        ));
        assert_eq!(parse_serial("mon:stdio").unwrap(), SerialSpec::MonStdio);
        assert!(parse_serial("mon:vc").is_err());
    }
}
