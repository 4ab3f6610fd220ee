//! The read vote of a quorum: the children's answers to one read,
//! grouped by identical content; the largest group wins if it reaches the
//! threshold (QEMU's `quorum_vote`, comparing contents directly instead of
//! hashing them: the children are few and a comparison stops at the first
//! difference).

/// What the vote decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `winner`'s content is the answer; `losers` read successfully but
    /// differ from it (they are reported, and rewritten with
    /// `rewrite-corrupted`).
    Winner {
        /// Index of a child holding the winning content.
        winner: usize,
        /// Children whose successful read differs from the winner.
        losers: Vec<usize>,
    },
    /// Fewer than the threshold succeeded, or no content was read by
    /// enough of them.
    NoQuorum,
}

/// Votes over the children's reads (`None`: that child's read failed).
/// Among groups of equal size the one first seen in child order wins.
pub fn vote(reads: &[Option<&[u8]>], threshold: usize) -> Outcome {
    let ok = reads.iter().filter(|r| r.is_some()).count();
    if ok < threshold || ok == 0 {
        return Outcome::NoQuorum;
    }
    // groups[g] = children with the same content, in child order.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in reads.iter().enumerate() {
        let Some(data) = r else { continue };
        match groups.iter_mut().find(|g| reads[g[0]] == Some(data)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let mut best = 0;
    for (g, members) in groups.iter().enumerate() {
        if members.len() > groups[best].len() {
            best = g;
        }
    }
    if groups[best].len() < threshold {
        return Outcome::NoQuorum;
    }
    let losers = groups
        .iter()
        .enumerate()
        .filter(|(g, _)| *g != best)
        .flat_map(|(_, m)| m.iter().copied())
        .collect::<Vec<_>>();
    let mut losers = losers;
    losers.sort_unstable();
    Outcome::Winner {
        winner: groups[best][0],
        losers,
    }
}

/// The error a failed quorum request returns: the errno most children
/// failed with (QEMU's `quorum_vote_error`), EIO when none failed.
pub fn vote_error(errors: &[i32]) -> i32 {
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for &e in errors {
        match counts.iter_mut().find(|(x, _)| *x == e) {
            Some((_, n)) => *n += 1,
            None => counts.push((e, 1)),
        }
    }
    let mut best: Option<(i32, usize)> = None;
    for (e, n) in counts {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((e, n));
        }
    }
    best.map_or(libc::EIO, |(e, _)| e)
}

/// First sector and sector count of a request, as QEMU reports them.
pub fn sectors(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / 512;
    let end = offset.saturating_add(len).div_ceil(512);
    (start, end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_corrupted_child_of_three_is_outvoted() {
        let (good, bad) = (vec![1u8; 4096], vec![2u8; 4096]);
        let reads = [Some(&good[..]), Some(&bad[..]), Some(&good[..])];
        assert_eq!(
            vote(&reads, 2),
            Outcome::Winner {
                winner: 0,
                losers: vec![1]
            }
        );
    }

    #[test]
    fn the_majority_wins_even_when_the_first_child_is_the_bad_one() {
        let (good, bad) = (vec![1u8; 512], vec![9u8; 512]);
        let reads = [Some(&bad[..]), Some(&good[..]), Some(&good[..])];
        assert_eq!(
            vote(&reads, 2),
            Outcome::Winner {
                winner: 1,
                losers: vec![0]
            }
        );
    }

    #[test]
    fn three_different_contents_reach_no_quorum_of_two() {
        let (a, b, c) = (vec![1u8; 512], vec![2u8; 512], vec![3u8; 512]);
        assert_eq!(
            vote(&[Some(&a[..]), Some(&b[..]), Some(&c[..])], 2),
            Outcome::NoQuorum
        );
        // Threshold 1: some content always wins; the first seen of equals.
        assert_eq!(
            vote(&[Some(&a[..]), Some(&b[..]), Some(&c[..])], 1),
            Outcome::Winner {
                winner: 0,
                losers: vec![1, 2]
            }
        );
    }

    #[test]
    fn failed_reads_do_not_vote_and_too_many_failures_lose() {
        let a = vec![7u8; 512];
        assert_eq!(
            vote(&[None, Some(&a[..]), Some(&a[..])], 2),
            Outcome::Winner {
                winner: 1,
                losers: vec![]
            }
        );
        assert_eq!(vote(&[None, None, Some(&a[..])], 2), Outcome::NoQuorum);
        assert_eq!(vote(&[None, None], 1), Outcome::NoQuorum);
    }

    #[test]
    fn two_corrupted_children_agreeing_outvote_the_good_one() {
        // Quorum votes on content, not on truth.
        let (good, bad) = (vec![1u8; 512], vec![0u8; 512]);
        assert_eq!(
            vote(&[Some(&good[..]), Some(&bad[..]), Some(&bad[..])], 2),
            Outcome::Winner {
                winner: 1,
                losers: vec![0]
            }
        );
    }

    #[test]
    fn the_most_common_errno_is_returned() {
        assert_eq!(
            vote_error(&[libc::EIO, libc::ENOSPC, libc::ENOSPC]),
            libc::ENOSPC
        );
        assert_eq!(vote_error(&[]), libc::EIO);
    }

    #[test]
    fn sectors_round_out_to_whole_sectors() {
        assert_eq!(sectors(0, 4096), (0, 8));
        assert_eq!(sectors(512, 1), (1, 1));
        assert_eq!(sectors(1000, 24), (1, 1));
        assert_eq!(sectors(1000, 25), (1, 2));
    }
}
