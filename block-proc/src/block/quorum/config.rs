//! A quorum's options, checked in QEMU's order with QEMU's messages
//! (`quorum_open`, `quorum_valid_threshold`). Two combinations QEMU 10
//! accepts and then ignores are refused here, since nothing would honour
//! them: `rewrite-corrupted` and `blkverify` with `read-pattern=fifo`
//! (fifo never votes, so it never rewrites or compares).

use ipc_proto::block::{QuorumOptions, QuorumReadPattern};

use super::QuorumError;

/// A quorum's checked settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// `vote-threshold`.
    pub threshold: usize,
    /// `read-pattern`.
    pub read_pattern: QuorumReadPattern,
    /// `rewrite-corrupted`.
    pub rewrite_corrupted: bool,
    /// `blkverify`.
    pub blkverify: bool,
}

impl Config {
    /// Checks `o`; the error is QEMU's message.
    pub fn check(o: &QuorumOptions) -> Result<Config, QuorumError> {
        let Some(threshold) = o.vote_threshold else {
            return Err(QuorumError::ThresholdMissing);
        };
        let n = o.children.len();
        if n < 1 {
            return Err(QuorumError::NoChildren);
        }
        if threshold < 1 {
            return Err(QuorumError::ThresholdTooLow);
        }
        let threshold = usize::try_from(threshold).unwrap_or(usize::MAX);
        if threshold > n {
            return Err(QuorumError::ThresholdTooHigh);
        }
        let read_pattern = o.read_pattern.unwrap_or(QuorumReadPattern::Quorum);
        let blkverify = o.blkverify.unwrap_or(false);
        let rewrite_corrupted = o.rewrite_corrupted.unwrap_or(false);
        match read_pattern {
            QuorumReadPattern::Quorum => {
                if blkverify && (n != 2 || threshold != 2) {
                    return Err(QuorumError::BlkverifyShape);
                }
                if rewrite_corrupted && blkverify {
                    return Err(QuorumError::RewriteWithBlkverify);
                }
            }
            QuorumReadPattern::Fifo => {
                if rewrite_corrupted {
                    return Err(QuorumError::RewriteWithFifo);
                }
                if blkverify {
                    return Err(QuorumError::BlkverifyWithFifo);
                }
            }
        }
        Ok(Config {
            threshold,
            read_pattern,
            rewrite_corrupted,
            blkverify,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::block::BlockdevOptions;

    fn check(v: serde_json::Value) -> Result<Config, String> {
        let mut v = v;
        v["driver"] = "quorum".into();
        match serde_json::from_value(v).unwrap() {
            BlockdevOptions::Quorum(q) => Config::check(&q).map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn thresholds_are_checked_with_qemu_messages() {
        let c = serde_json::json!(["a", "b", "c"]);
        assert_eq!(
            check(serde_json::json!({"children": c, "vote-threshold": 4})).unwrap_err(),
            "threshold may not exceed children count"
        );
        assert_eq!(
            check(serde_json::json!({"children": c, "vote-threshold": 0})).unwrap_err(),
            "Parameter 'vote-threshold' expects a value >= 1"
        );
        assert_eq!(
            check(serde_json::json!({"children": [], "vote-threshold": 1})).unwrap_err(),
            "Number of provided children must be 1 or more"
        );
        assert_eq!(
            check(serde_json::json!({"children": c})).unwrap_err(),
            "Parameter 'vote-threshold' is missing"
        );
        let ok = check(serde_json::json!({"children": c, "vote-threshold": 2})).unwrap();
        assert_eq!(ok.threshold, 2);
        assert_eq!(ok.read_pattern, QuorumReadPattern::Quorum);
    }

    #[test]
    fn blkverify_and_rewrite_rules() {
        assert_eq!(
            check(serde_json::json!({"children": ["a", "b", "c"], "vote-threshold": 2, "blkverify": true}))
                .unwrap_err(),
            "blkverify=on can only be set if there are exactly two files and vote-threshold is 2"
        );
        assert_eq!(
            check(serde_json::json!({"children": ["a", "b"], "vote-threshold": 2, "blkverify": true, "rewrite-corrupted": true}))
                .unwrap_err(),
            "rewrite-corrupted=on cannot be used with blkverify=on"
        );
        assert!(check(
            serde_json::json!({"children": ["a", "b"], "vote-threshold": 2, "blkverify": true})
        )
        .is_ok());
        assert!(check(serde_json::json!({"children": ["a", "b"], "vote-threshold": 1, "read-pattern": "fifo", "rewrite-corrupted": true}))
            .unwrap_err()
            .starts_with("rewrite-corrupted=on cannot be used with read-pattern=fifo"));
    }
}
