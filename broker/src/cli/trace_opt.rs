//! `-trace [enable=]PATTERN,events=FILE,file=FILE`, as QEMU parses it:
//! `enable=` (the implied key) enables the points matching a pattern,
//! `events=` reads a file of patterns now (one a line, `#` comments, a
//! leading `-` disables), `file=` is where enabled points are written. The
//! patterns are applied, in command-line order, to each process's points
//! once the broker learns them (`machine::trace_state`).

use std::path::PathBuf;

use super::{keyval_pairs, CliError, Result};

/// One enable/disable of the command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOp {
    /// A name or a pattern (`*`, `?`).
    pub pattern: String,
    /// Enable (or, `-NAME` in an events file, disable).
    pub enable: bool,
    /// Where it was given, for QEMU's warning about a name that matches
    /// no point (`-trace enable=x`, `FILE:LINE`).
    pub origin: String,
}

/// What the `-trace` options say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceOptions {
    /// The enables and disables, in order.
    pub ops: Vec<TraceOp>,
    /// `file=`: the trace output file (the last one given).
    pub file: Option<PathBuf>,
}

impl TraceOptions {
    /// Adds one `-trace` option's value.
    pub fn parse(&mut self, value: &str) -> Result<()> {
        let (mut enable, mut events, mut file) = (None, None, None);
        // Later keys of one option win, as in QemuOpts.
        for (k, v) in keyval_pairs("-trace", value, Some("enable"))? {
            match k.as_str() {
                "enable" => enable = Some(v),
                "events" => events = Some(v),
                "file" => file = Some(v),
                _ => {
                    return Err(CliError::At {
                        option: "-trace".into(),
                        value: value.into(),
                        reason: format!("Invalid parameter '{k}'"),
                    })
                }
            }
        }
        if let Some(pattern) = enable {
            self.ops.push(TraceOp {
                pattern,
                enable: true,
                origin: format!("-trace {value}"),
            });
        }
        if let Some(path) = events {
            self.read_events(&path)?;
        }
        if let Some(f) = file {
            self.file = Some(PathBuf::from(f));
        }
        Ok(())
    }

    /// An events file: each line longer than its newline is a pattern;
    /// `#` starts a comment line, `-` a disable (QEMU's
    /// `trace_init_events`, which trims nothing else).
    fn read_events(&mut self, path: &str) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Plain(format!("{path}: {}", io_reason(&e))))?;
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pattern, enable) = match line.strip_prefix('-') {
                Some(rest) => (rest, false),
                None => (line, true),
            };
            self.ops.push(TraceOp {
                pattern: pattern.to_owned(),
                enable,
                origin: format!("{path}:{}", i + 1),
            });
        }
        Ok(())
    }
}

/// An I/O error as QEMU's messages say it (`strerror`, no "(os error N)").
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implied_key_is_enable_and_file_is_kept() {
        let mut t = TraceOptions::default();
        t.parse("virtio_*").unwrap();
        t.parse("enable=kvm_exit_io_in,file=/tmp/t.log").unwrap();
        let pats: Vec<_> = t
            .ops
            .iter()
            .map(|o| (o.pattern.as_str(), o.enable))
            .collect();
        assert_eq!(pats, [("virtio_*", true), ("kvm_exit_io_in", true)]);
        assert_eq!(t.file, Some(PathBuf::from("/tmp/t.log")));
        assert_eq!(t.ops[0].origin, "-trace virtio_*");
    }

    #[test]
    fn unknown_key_gets_qemus_message() {
        let err = TraceOptions::default().parse("bogus=1").unwrap_err();
        assert_eq!(err.to_string(), "-trace bogus=1: Invalid parameter 'bogus'");
    }

    #[test]
    fn events_file_lines_enable_disable_and_skip_comments() {
        let dir = std::env::temp_dir().join(format!("bulkhead-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events");
        std::fs::write(&path, "virtio_*\n# a comment\n\n-virtio_mmio_read\n").unwrap();
        let mut t = TraceOptions::default();
        t.parse(&format!("events={}", path.display())).unwrap();
        let ops: Vec<_> = t
            .ops
            .iter()
            .map(|o| (o.pattern.as_str(), o.enable))
            .collect();
        assert_eq!(ops, [("virtio_*", true), ("virtio_mmio_read", false)]);
        assert_eq!(t.ops[1].origin, format!("{}:4", path.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_events_file_is_an_error_with_qemus_text() {
        let err = TraceOptions::default()
            .parse("events=/nonexistent/events")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/events: No such file or directory"
        );
    }
}
