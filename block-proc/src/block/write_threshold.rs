//! `block-set-write-threshold`: a one-shot threshold on the highest
//! offset written on a node. The first write that ends past it sends
//! `BLOCK_WRITE_THRESHOLD` (with how far past) and clears it, as QEMU's
//! `block/write-threshold.c` does; 0 means none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use ipc_proto::block::BlockEvent;

use crate::vhost::export::ExportEvent;

/// A node's write threshold and where its event goes.
#[derive(Debug, Default)]
pub struct WriteThreshold {
    offset: AtomicU64,
    events: Mutex<Option<Sender<ExportEvent>>>,
}

impl WriteThreshold {
    /// Set (or with 0 clear) the threshold; its event goes to `events`.
    pub fn set(&self, threshold: u64, events: Sender<ExportEvent>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events);
        self.offset.store(threshold, Ordering::SeqCst);
    }

    /// The threshold (0: none).
    pub fn get(&self) -> u64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// A write of `[offset, offset + len)` on node `node`: past the
    /// threshold, clear it and send the event (once, whichever writer
    /// clears it).
    pub fn check(&self, node: &str, offset: u64, len: u64) {
        let t = self.offset.load(Ordering::Relaxed);
        let end = offset.saturating_add(len);
        if t == 0 || end <= t {
            return;
        }
        if self
            .offset
            .compare_exchange(t, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let tx = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(ExportEvent::Block(BlockEvent::WriteThreshold {
                node_name: node.to_string(),
                amount_exceeded: end - t,
                write_threshold: t,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_write_past_the_threshold_fires_once_and_clears_it() {
        let w = WriteThreshold::default();
        let (tx, rx) = std::sync::mpsc::channel();
        w.set(1 << 20, tx);
        w.check("n", 0, 1 << 20);
        assert!(
            rx.try_recv().is_err(),
            "ending at the threshold is below it"
        );
        w.check("n", (1 << 20) - 512, 4096);
        match rx.try_recv() {
            Ok(ExportEvent::Block(BlockEvent::WriteThreshold {
                node_name,
                amount_exceeded,
                write_threshold,
            })) => {
                assert_eq!(node_name, "n");
                assert_eq!(amount_exceeded, 3584);
                assert_eq!(write_threshold, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.get(), 0);
        w.check("n", 8 << 20, 4096);
        assert!(rx.try_recv().is_err(), "one-shot");
    }
}
