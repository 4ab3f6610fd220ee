//! The one log set-up every process uses (broker and workers), so their
//! lines look the same: `BULKHEAD_LOG` filter (default `warn`) on stderr,
//! colours only on a terminal, and when stderr is the journal
//! ([`logs_to_journal`]) the [`JournalFormat`]: `<N>target: message`, no
//! timestamps (the journal adds its own) and no colours. Workers inherit
//! the broker's stderr and `JOURNAL_STREAM`. Other lines carry a
//! timestamp only with `-msg timestamp=on` ([`TIMESTAMP_ENV`]), as QEMU's.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "BULKHEAD_LOG";

/// Set to `on` (by the broker for `-msg timestamp=on`, inherited by the
/// workers): log lines carry timestamps, as QEMU's messages then do.
pub const TIMESTAMP_ENV: &str = "BULKHEAD_LOG_TIMESTAMP";

/// Installs the process's log subscriber (does nothing if one is set).
pub fn init() {
    let timestamps = std::env::var_os(TIMESTAMP_ENV).is_some_and(|v| v == "on");
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Enabled trace points are always written (their state is the filter).
    let filter = match format!("{}=info", crate::trace::sink::TARGET).parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let journal = logs_to_journal();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal());
    // Errors only if a subscriber is already set (tests); nothing to do then.
    let _ = if journal {
        fmt.event_format(JournalFormat).try_init()
    } else if timestamps {
        fmt.try_init()
    } else {
        fmt.without_time().try_init()
    };
}

/// True when stderr is connected to the journal (`JOURNAL_STREAM` names
/// stderr's device and inode).
pub fn logs_to_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into `st`, which is large enough.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    v.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

/// A `tracing` line format for the journal: `<N>target: message fields`,
/// where `<N>` is the syslog priority journald reads (error 3, warn 4,
/// info 6, debug/trace 7); the journal adds its own timestamps.
#[derive(Debug, Default, Clone, Copy)]
pub struct JournalFormat;

/// The syslog priority of a `tracing` level.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "<{}>{}: ",
            syslog_priority(meta.level()),
            meta.target()
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
