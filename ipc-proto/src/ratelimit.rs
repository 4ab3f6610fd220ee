//! Rate limiting for logs a guest can trigger (a guest must not be able to
//! flood the host's journal): at most [`RateLimit::BURST`] messages per
//! [`RateLimit::WINDOW_SECS`] per call site, then silence until the window
//! passes. Every worker logs guest-triggered conditions through
//! [`warn_limited!`](crate::warn_limited).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A per-call-site log limiter.
#[derive(Debug)]
pub struct RateLimit {
    window_start: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    /// Messages allowed per window.
    pub const BURST: u64 = 10;
    /// Window length in seconds.
    pub const WINDOW_SECS: u64 = 5;

    /// A fresh limiter.
    pub const fn new() -> Self {
        RateLimit {
            window_start: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Whether a message may be logged now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let start = self.window_start.load(Ordering::Relaxed);
        if now >= start + Self::WINDOW_SECS {
            self.window_start.store(now, Ordering::Relaxed);
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::BURST
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!`, at most [`RateLimit::BURST`] times per window from
/// this call site. The calling crate must depend on `tracing`.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if LIMIT.allow() {
            tracing::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_refuses() {
        let l = RateLimit::new();
        let allowed = (0..100).filter(|_| l.allow()).count();
        assert_eq!(allowed as u64, RateLimit::BURST);
    }
}
