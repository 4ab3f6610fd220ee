//! Where enabled trace points go: through the log (`tracing`, target
//! [`TARGET`], which [`crate::logging::init`] always lets through at
//! `info`), or, once the broker passed one (`-trace file=`), to the trace
//! file: one `write` per line on a file the broker opened with
//! `O_APPEND`, so the lines of all processes interleave whole.

use std::fmt::{Debug, Write as _};
use std::fs::File;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `tracing` target trace lines are logged under.
pub const TARGET: &str = "bulkhead::trace";

static FILE: Mutex<Option<Arc<File>>> = Mutex::new(None);

/// Writes trace lines to `file` from now on instead of the log.
pub fn set_file(file: File) {
    *FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(file));
}

/// `name vcpu=N arg=value ...` (values in `Debug` form).
pub fn format_line(name: &str, args: &[&str], vcpu: Option<u32>, values: &[&dyn Debug]) -> String {
    let mut line = String::from(name);
    if let Some(v) = vcpu {
        let _ = write!(line, " vcpu={v}");
    }
    for (arg, value) in args.iter().zip(values) {
        let _ = write!(line, " {arg}={value:?}");
    }
    line
}

pub(super) fn write(
    process: &str,
    name: &str,
    args: &[&str],
    vcpu: Option<u32>,
    values: &[&dyn Debug],
) {
    let line = format_line(name, args, vcpu, values);
    let file = FILE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match file {
        Some(f) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let text = format!(
                "{}.{:06} {process}: {line}\n",
                now.as_secs(),
                now.subsec_micros()
            );
            // A full disk loses trace lines, never the process.
            let _ = (&*f).write_all(text.as_bytes());
        }
        None => tracing::info!(target: "bulkhead::trace", "{process}: {line}"),
    }
}
