//! QEMU's trace-event name patterns: a name with a `*` is a pattern
//! (`trace_event_is_pattern`), matched as GLib's `g_pattern_match_simple`
//! matches (`*` any run of characters, `?` any one character). Written by
//! hand: a dozen lines, and no glob crate follows GLib's rules exactly.

/// True if `name` is a pattern (it holds a `*`), as QEMU decides.
pub fn is_pattern(name: &str) -> bool {
    name.contains('*')
}

/// True if `name` matches `pattern` (`*` and `?` wildcards).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative glob with one backtrack point: linear for a single `*`,
    // O(len(p) * len(n)) at worst, never recursive.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_question_mark_match_as_glib_does() {
        assert!(matches("virtio_blk_*", "virtio_blk_request"));
        assert!(matches("*", ""));
        assert!(matches("*blk_req?comp*", "virtio_blk_req_complete"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(!matches("virtio_blk_*", "virtio_mmio_read"));
        assert!(matches("kvm_exit_io", "kvm_exit_io"));
        assert!(!matches("kvm_exit_io", "kvm_exit_iox"));
    }

    #[test]
    fn only_a_star_makes_a_pattern() {
        assert!(is_pattern("virtio_*"));
        assert!(!is_pattern("virtio_blk_req?complete"));
    }
}
