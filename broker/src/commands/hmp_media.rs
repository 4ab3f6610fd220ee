//! HMP's removable-medium commands, `eject [-f] device` and
//! `change device [-f] filename [format [read-only-mode]]`, run through
//! the QMP commands as QEMU's `hmp_eject` / `hmp_change_medium` do (the
//! device is a block backend name, as in QEMU's HMP).

use serde_json::{json, Map, Value};

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::Ctx;

/// The help lines (QEMU's texts).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "change",
        "device [-f] filename [format [read-only-mode]]",
        "change a removable medium, optional format, use -f to force the operation",
    ),
    (
        "eject",
        "[-f] device",
        "eject a removable medium (use -f to force it)",
    ),
];

fn call(ctx: &Ctx<'_>, name: &str, args: Value) -> Result<String> {
    let entry = ctx
        .registry
        .get(name)
        .ok_or_else(|| QmpError::generic(format!("internal: no command {name}")))?;
    let args: Map<String, Value> = match args {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    entry.call(args, ctx).map(|_| String::new())
}

fn usage(cmd: &str, what: &str) -> String {
    format!("{cmd}: {what}\nTry \"help {cmd}\" for more information\n")
}

/// Runs `eject` / `change` (`words` after the command name); `None` for
/// another command.
pub fn run(cmd: &str, words: &[&str], ctx: &Ctx<'_>) -> Option<Result<String>> {
    let force = words.contains(&"-f");
    let rest: Vec<&str> = words.iter().copied().filter(|w| *w != "-f").collect();
    Some(match (cmd, rest.as_slice()) {
        ("eject", []) => Ok(usage(cmd, "block device name expected")),
        ("eject", [device]) => call(ctx, "eject", json!({"device": device, "force": force})),
        ("change", []) => Ok(usage(cmd, "block device name expected")),
        ("change", [_]) => Ok(usage(cmd, "filename expected")),
        ("change", [device, filename, more @ ..]) if more.len() <= 2 => {
            let mut args = json!({"device": device, "filename": filename, "force": force});
            if let Some(f) = more.first() {
                args["format"] = json!(f);
            }
            if let Some(m) = more.get(1) {
                args["read-only-mode"] = json!(m);
            }
            call(ctx, "blockdev-change-medium", args)
        }
        ("eject" | "change", _) => Ok(usage(cmd, "extraneous characters at the end of line")),
        _ => return None,
    })
}
