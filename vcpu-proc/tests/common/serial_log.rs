//! A test VM's serial output, collected by a thread as the guest prints
//! it, with the waits the tests need.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_vm::pump_serial;

/// What the guest printed so far.
#[derive(Clone, Default)]
pub struct SerialLog(Arc<Mutex<Vec<u8>>>);

impl SerialLog {
    /// Collects what comes out of the serial pipe's `read` end.
    pub fn spawn(read: OwnedFd) -> Self {
        let log = SerialLog::default();
        let sink = log.0.clone();
        pump_serial(read, move |bytes| {
            sink.lock().unwrap().extend_from_slice(bytes);
            true
        });
        log
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Whether the guest printed `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Waits until the guest printed `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        self.wait_until(&format!("{needle:?}"), timeout, |text| {
            text.contains(needle)
        });
    }

    /// The last `pass N ok` of the `blk-loop` guest (0: none yet).
    pub fn last_pass(&self) -> u64 {
        last_pass(&self.text())
    }

    /// Waits until `blk-loop` reported pass `n`; fails on its FAIL verdict.
    pub fn wait_pass(&self, n: u64, timeout: Duration) {
        self.wait_until(&format!("pass {n}"), timeout, |text| {
            assert!(!text.contains("VERDICT: FAIL"), "{text}");
            last_pass(text) >= n
        });
    }

    /// Waits until `done` holds for what the guest printed; the failure
    /// names `what`.
    fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if done(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not seen on serial; got:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The highest N of the `pass N ok` lines in `text` (0: none).
fn last_pass(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("pass ")?.strip_suffix(" ok")?.parse().ok())
        .max()
        .unwrap_or(0)
}
