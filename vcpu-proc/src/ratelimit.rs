//! Rate limiting for logs a guest can trigger: at most [`BURST`] messages
//! per call site per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Messages allowed per call site per second.
pub const BURST: u64 = 10;

/// The state of one call site.
#[derive(Debug, Default)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    /// A fresh limiter.
    pub const fn new() -> Self {
        RateLimit {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// True when a message may be logged now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < BURST
    }
}

/// `tracing::warn!` limited per call site.
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
    fn burst_is_limited_within_a_second() {
        let l = RateLimit::new();
        let allowed = (0..1000).filter(|_| l.allow()).count() as u64;
        // At most two windows can be touched by this loop.
        assert!(allowed <= 2 * BURST);
        assert!(allowed >= BURST);
    }
}
