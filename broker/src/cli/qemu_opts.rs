//! QEMU's everyday options that describe the machine and the process
//! (`-machine`, `-accel`, `-display`, `-name`, `-uuid`, `-msg`,
//! `-overcommit`, `-rtc`, `-boot`): what bulkhead has is accepted with
//! QEMU's meaning, the rest refused with QEMU's message — never ignored.

use super::{keyval_pairs, parse_on_off, CliError, Result};

/// The machine types bulkhead has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineType {
    /// `microvm`: bulkhead's machine (docs/platform.md).
    #[default]
    Microvm,
    /// `none`: no guest at all (for probing the monitor, as libvirt does).
    None,
}

/// (name, description) of the machines, as `-machine help` lists them.
pub const MACHINES: [(&str, &str); 2] = [("microvm", "microvm (i386)"), ("none", "empty machine")];

fn at(option: &str, value: &str, reason: impl Into<String>) -> CliError {
    CliError::At {
        option: option.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Checks an accelerator list (`kvm`, `kvm:tcg`): KVM must be in it
/// (it is always available to bulkhead and is what it uses).
fn accel_list(option: &str, value: &str, list: &str) -> Result<()> {
    let mut kvm = false;
    for a in list.split(':') {
        match a {
            "kvm" => kvm = true,
            "tcg" | "qtest" | "xen" | "hvf" | "whpx" | "nvmm" => {}
            _ => return Err(CliError::Plain(format!("invalid accelerator {a}"))),
        }
    }
    if !kvm {
        return Err(at(
            option,
            value,
            format!("bulkhead has only the kvm accelerator ('{list}' asked)"),
        ));
    }
    Ok(())
}

/// What `-machine` says.
pub type MachineOpts = (MachineType, bool, Option<String>, Option<bool>);

/// `-machine TYPE[,accel=kvm][,memory-backend=ID][,dump-guest-core=]` /
/// `-M`: the type, whether `accel=` was given, the memory backend named,
/// and `dump-guest-core` if given.
pub fn parse_machine(option: &str, s: &str) -> Result<MachineOpts> {
    let mut machine = None;
    let mut accel = false;
    let mut backend = None;
    let mut dump = None;
    for (k, v) in keyval_pairs(option, s, Some("type"))? {
        match k.as_str() {
            "type" => {
                machine = Some(match v.as_str() {
                    "microvm" => MachineType::Microvm,
                    "none" => MachineType::None,
                    _ => {
                        return Err(CliError::Plain(format!(
                            "unsupported machine type: \"{v}\"\nUse -machine help to list supported machines"
                        )))
                    }
                })
            }
            "accel" => {
                accel_list(option, s, &v)?;
                accel = true;
            }
            "memory-backend" => backend = Some(v),
            "dump-guest-core" => dump = Some(parse_on_off(option, &v)?),
            // Neither machine has USB: usb=off states it.
            "usb" => {
                if parse_on_off(option, &v)? {
                    return Err(at(option, s, "usb=on: bulkhead's machines have no USB"));
                }
            }
            _ => {
                let t = match machine {
                    Some(MachineType::None) => "none",
                    _ => "microvm",
                };
                return Err(CliError::Plain(format!("Property '{t}-machine.{k}' not found")));
            }
        }
    }
    Ok((machine.unwrap_or_default(), accel, backend, dump))
}

/// `-sandbox on[,obsolete=deny][,elevateprivileges=deny][,spawn=deny]
/// [,resourcecontrol=deny]` or `-sandbox off`: whether the workers are
/// sandboxed. QEMU's suboptions deny syscall groups to QEMU's one process;
/// bulkhead's guest-facing code runs in the workers, whose seccomp
/// allowlist already denies every one of these groups (no obsolete
/// syscalls, no set*id, no fork/exec, no scheduler or affinity changes),
/// so `deny` is what they get; `allow` (or `children`) is refused, as the
/// workers never get those. The broker itself is not filtered: it must
/// start and restart the workers.
pub fn parse_sandbox(s: &str) -> Result<bool> {
    let o = "-sandbox";
    let mut on = None;
    for (k, v) in keyval_pairs(o, s, Some("enable"))? {
        match k.as_str() {
            "enable" => on = Some(parse_on_off(o, &v)?),
            "obsolete" | "elevateprivileges" | "spawn" | "resourcecontrol" => match v.as_str() {
                "deny" => {}
                "allow" | "children" => {
                    return Err(at(
                        o,
                        s,
                        format!(
                            "{k}={v}: bulkhead's sandboxed workers never get this (only {k}=deny)"
                        ),
                    ))
                }
                _ => return Err(at(o, s, format!("invalid argument for {k}"))),
            },
            _ => return Err(at(o, s, format!("Invalid parameter '{k}'"))),
        }
    }
    let on = on.ok_or_else(|| at(o, s, "Parameter 'enable' is missing"))?;
    if !on && s.contains(',') {
        return Err(at(o, s, "the suboptions need the sandbox on"));
    }
    Ok(on)
}

/// `-audiodev none,id=ID` (keyval or JSON): accepted, as bulkhead has no
/// audio device for it to serve (QEMU's `none` driver discards audio);
/// every other driver is refused. Returns the id.
pub fn parse_audiodev(s: &str) -> Result<String> {
    let o = "-audiodev";
    let pairs = super::memory_backend::object_pairs_as(o, s, "driver")?;
    let (mut driver, mut id) = (None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "driver" => driver = Some(v),
            "id" => id = Some(v),
            _ => return Err(at(o, s, format!("Invalid parameter '{k}'"))),
        }
    }
    let driver = driver.ok_or_else(|| at(o, s, "Parameter 'driver' is missing"))?;
    if driver != "none" {
        return Err(at(
            o,
            s,
            format!("audiodev driver '{driver}': bulkhead has no audio device (only driver=none)"),
        ));
    }
    id.ok_or_else(|| at(o, s, "Parameter 'id' is missing"))
}

/// `-accel kvm` (one accelerator per option, QEMU tries them in order).
pub fn parse_accel(s: &str) -> Result<bool> {
    let mut it = keyval_pairs("-accel", s, Some("accel"))?.into_iter();
    let name = match it.next() {
        Some((k, v)) if k == "accel" => v,
        _ => return Err(at("-accel", s, "Parameter 'accel' is missing")),
    };
    if let Some((k, _)) = it.next() {
        return Err(at("-accel", s, format!("Invalid parameter '{k}'")));
    }
    match name.as_str() {
        "kvm" => Ok(true),
        "tcg" | "qtest" | "xen" | "hvf" | "whpx" | "nvmm" => Ok(false),
        _ => Err(at("-accel", s, format!("invalid accelerator {name}"))),
    }
}

/// `-display none` (bulkhead has no display).
pub fn parse_display(s: &str) -> Result<()> {
    let kind = s.split(',').next().unwrap_or("");
    match kind {
        "none" if kind == s => Ok(()),
        "none" => Err(at("-display", s, "Invalid parameter")),
        "sdl" | "gtk" | "vnc" | "curses" | "egl-headless" | "spice-app" | "dbus" | "cocoa" => {
            Err(CliError::Plain(format!(
                "Display '{kind}' is not available (bulkhead has no display)"
            )))
        }
        _ => Err(at(
            "-display",
            s,
            format!("Parameter 'type' does not accept value '{kind}'"),
        )),
    }
}

/// What `-name` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSpec {
    /// `guest=` (or the bare value).
    pub guest: Option<String>,
    /// `process=`: the broker's process name.
    pub process: Option<String>,
    /// `debug-threads=on`: vCPU threads named `CPU N/KVM`.
    pub debug_threads: bool,
}

/// `-name [guest=]NAME[,process=P][,debug-threads=on|off]`.
pub fn parse_name(s: &str) -> Result<NameSpec> {
    let mut n = NameSpec::default();
    for (k, v) in keyval_pairs("-name", s, Some("guest"))? {
        match k.as_str() {
            "guest" => n.guest = Some(v),
            "process" => n.process = Some(v),
            "debug-threads" => {
                n.debug_threads = parse_on_off("-name", &v).map_err(|_| {
                    at(
                        "-name",
                        s,
                        "Parameter 'debug-threads' expects 'on' or 'off'",
                    )
                })?
            }
            _ => return Err(at("-name", s, format!("Invalid parameter '{k}'"))),
        }
    }
    Ok(n)
}

/// `-uuid` in the canonical 8-4-4-4-12 form; returned lower-case.
pub fn parse_uuid(s: &str) -> Result<String> {
    let groups: Vec<&str> = s.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(at("-uuid", s, "failed to parse UUID string: wrong format"));
    }
    Ok(s.to_ascii_lowercase())
}

/// `-msg timestamp=on|off` (guest-name= too, as QEMU); returns
/// (timestamp, guest-name).
pub fn parse_msg(s: &str) -> Result<(bool, bool)> {
    let (mut ts, mut guest_name) = (false, false);
    for (k, v) in keyval_pairs("-msg", s, None)? {
        let on = |k: &str| {
            parse_on_off("-msg", &v)
                .map_err(|_| at("-msg", s, format!("Parameter '{k}' expects 'on' or 'off'")))
        };
        match k.as_str() {
            "timestamp" => ts = on("timestamp")?,
            "guest-name" => guest_name = on("guest-name")?,
            _ => return Err(at("-msg", s, format!("Invalid parameter '{k}'"))),
        }
    }
    Ok((ts, guest_name))
}

/// `-overcommit mem-lock=off,cpu-pm=off`: what bulkhead does (guest RAM
/// is not locked; the guest has no power management of its CPUs). `on`
/// is refused: bulkhead cannot do it.
pub fn parse_overcommit(s: &str) -> Result<()> {
    for (k, v) in keyval_pairs("-overcommit", s, None)? {
        match k.as_str() {
            "mem-lock" | "cpu-pm" => match v.as_str() {
                "off" | "false" | "no" => {}
                "on" | "true" | "yes" | "on-fault" => {
                    return Err(at(
                        "-overcommit",
                        s,
                        format!("{k}={v} is not supported by bulkhead"),
                    ))
                }
                _ => {
                    return Err(at(
                        "-overcommit",
                        s,
                        format!("Parameter '{k}' expects 'on' or 'off'"),
                    ))
                }
            },
            _ => return Err(at("-overcommit", s, format!("Invalid parameter '{k}'"))),
        }
    }
    Ok(())
}

/// `-rtc base=utc[,clock=host]`: bulkhead's guest has no RTC device; its
/// only clocks (TSC, kvmclock) follow the host's, in UTC — so `base=utc`
/// and `clock=host` state what is true and anything else is refused.
pub fn parse_rtc(s: &str) -> Result<()> {
    for (k, v) in keyval_pairs("-rtc", s, None)? {
        match (k.as_str(), v.as_str()) {
            ("base", "utc") | ("clock", "host") => {}
            ("base" | "clock" | "driftfix", _) => {
                return Err(at(
                    "-rtc",
                    s,
                    format!("{k}={v} is not supported: bulkhead's guest has no RTC (only base=utc, clock=host)"),
                ))
            }
            _ => return Err(at("-rtc", s, format!("Invalid parameter '{k}'"))),
        }
    }
    Ok(())
}

/// `-boot strict=on,menu=off`: bulkhead boots only `-kernel` (or its
/// built-in guest), with no firmware menu; other boot settings are refused.
pub fn parse_boot(s: &str) -> Result<()> {
    for (k, v) in keyval_pairs("-boot", s, Some("order"))? {
        match (k.as_str(), v.as_str()) {
            ("strict", "on") | ("menu", "off") => {}
            (
                "order" | "once" | "menu" | "splash" | "splash-time" | "reboot-timeout" | "strict",
                _,
            ) => {
                return Err(at(
                    "-boot",
                    s,
                    format!(
                        "{k}={v} is not supported: bulkhead boots only -kernel, without firmware"
                    ),
                ))
            }
            _ => {
                return Err(CliError::Plain(format!(
                    "Parameter 'boot.{k}' is unexpected"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_types_and_accel_follow_qemu() {
        assert_eq!(
            parse_machine("-M", "microvm").unwrap(),
            (MachineType::Microvm, false, None, None)
        );
        assert_eq!(
            parse_machine("-machine", "none,accel=kvm:tcg").unwrap(),
            (MachineType::None, true, None, None)
        );
        assert_eq!(
            parse_machine("-M", "type=microvm,accel=kvm,memory-backend=r").unwrap(),
            (MachineType::Microvm, true, Some("r".into()), None)
        );
        assert_eq!(
            parse_machine("-M", "pc").unwrap_err().to_string(),
            "unsupported machine type: \"pc\"\nUse -machine help to list supported machines"
        );
        assert_eq!(
            parse_machine("-M", "microvm,foo=bar")
                .unwrap_err()
                .to_string(),
            "Property 'microvm-machine.foo' not found"
        );
        assert!(parse_machine("-M", "microvm,accel=tcg").is_err());
        assert!(parse_machine("-M", "microvm,usb=off").is_ok());
        assert!(parse_machine("-M", "microvm,usb=on").is_err());
        assert_eq!(
            parse_machine("-M", "microvm,dump-guest-core=off")
                .unwrap()
                .3,
            Some(false)
        );
        assert!(parse_sandbox(
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        )
        .unwrap());
        assert!(!parse_sandbox("off").unwrap());
        assert!(parse_sandbox("on,spawn=allow").is_err());
        assert!(parse_sandbox("off,spawn=deny").is_err());
        assert!(parse_sandbox("on,frob=deny").is_err());
        assert_eq!(parse_audiodev("none,id=a").unwrap(), "a");
        assert_eq!(
            parse_audiodev(r#"{"id":"audio1","driver":"none"}"#).unwrap(),
            "audio1"
        );
        assert!(parse_audiodev("pa,id=a").is_err());
        assert!(parse_audiodev("none").is_err());
        assert!(parse_accel("kvm").unwrap());
        assert!(!parse_accel("tcg").unwrap());
        assert_eq!(
            parse_accel("foo").unwrap_err().to_string(),
            "-accel foo: invalid accelerator foo"
        );
    }

    #[test]
    fn name_uuid_msg_parse_and_refuse_like_qemu() {
        let n = parse_name("vm1,process=bh-vm1,debug-threads=on").unwrap();
        assert_eq!(n.guest.as_deref(), Some("vm1"));
        assert_eq!(n.process.as_deref(), Some("bh-vm1"));
        assert!(n.debug_threads);
        assert_eq!(parse_name("guest=x").unwrap().guest.as_deref(), Some("x"));
        assert_eq!(
            parse_name("foo,bogus=1").unwrap_err().to_string(),
            "-name foo,bogus=1: Invalid parameter 'bogus'"
        );
        assert_eq!(
            parse_uuid("8C6A0C6B-1E5C-4C47-9F5C-2E3F4A5B6C7D").unwrap(),
            "8c6a0c6b-1e5c-4c47-9f5c-2e3f4a5b6c7d"
        );
        assert_eq!(
            parse_uuid("xyz").unwrap_err().to_string(),
            "-uuid xyz: failed to parse UUID string: wrong format"
        );
        assert_eq!(parse_msg("timestamp=on").unwrap(), (true, false));
        assert_eq!(
            parse_msg("timestamp=maybe").unwrap_err().to_string(),
            "-msg timestamp=maybe: Parameter 'timestamp' expects 'on' or 'off'"
        );
    }

    #[test]
    fn what_bulkhead_cannot_do_is_refused() {
        assert!(parse_display("none").is_ok());
        assert!(parse_display("gtk").is_err());
        assert!(parse_overcommit("mem-lock=off,cpu-pm=off").is_ok());
        assert!(parse_overcommit("mem-lock=on").is_err());
        assert!(parse_rtc("base=utc,clock=host").is_ok());
        assert!(parse_rtc("base=localtime").is_err());
        assert!(parse_boot("strict=on").is_ok());
        assert!(parse_boot("order=c").is_err());
        assert_eq!(
            parse_boot("foo=bar").unwrap_err().to_string(),
            "Parameter 'boot.foo' is unexpected"
        );
    }
}
