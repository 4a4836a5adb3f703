//! "Did you mean …?": the nearest of a set of names to one an operator
//! typed, by edit distance (insertions, deletions, substitutions and
//! swaps of two neighbours each count one). Bounded: names longer than
//! [`MAX_NAME`] get no suggestion, and each comparison stops as soon as it
//! cannot come within the threshold.

/// Names longer than this get no suggestion (the work is quadratic in it).
pub const MAX_NAME: usize = 64;

/// How far a suggestion may be from what was typed: one edit in a short
/// name, two in a medium one, three in a long one.
fn threshold(len: usize) -> usize {
    match len {
        0..=4 => 1,
        5..=10 => 2,
        _ => 3,
    }
}

/// The candidate nearest to `name` within the threshold (the first in
/// iteration order among equals), never `name` itself.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if name.len() > MAX_NAME {
        return None;
    }
    let limit = threshold(name.len());
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c == name || c.len() > MAX_NAME || c.len().abs_diff(name.len()) > limit {
            continue;
        }
        let bound = best.map_or(limit, |(d, _)| d.saturating_sub(1));
        if let Some(d) = distance_within(name.as_bytes(), c.as_bytes(), bound) {
            best = Some((d, c));
            if d == 1 {
                // Nothing but `name` itself is nearer.
                break;
            }
        }
    }
    best.map(|(_, c)| c)
}

/// The optimal-string-alignment distance of `a` and `b` if it is at most
/// `limit`, else `None`. Both are at most [`MAX_NAME`] bytes.
fn distance_within(a: &[u8], b: &[u8], limit: usize) -> Option<usize> {
    let width = b.len() + 1;
    // Three rows: two back (for swaps), one back, this one.
    let mut before: Vec<usize> = vec![0; width];
    let mut prev: Vec<usize> = (0..width).collect();
    let mut row: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        row[0] = i;
        let mut smallest = row[0];
        for j in 1..width {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            row[j] = d;
            smallest = smallest.min(d);
        }
        if smallest > limit {
            return None;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut row);
    }
    Some(prev[b.len()]).filter(|&d| d <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_the_name_they_meant() {
        let labels = ["edge", "eu-west", "core"];
        assert_eq!(nearest("egde", labels), Some("edge"));
        assert_eq!(nearest("edg", labels), Some("edge"));
        assert_eq!(nearest("eu-wset", labels), Some("eu-west"));
        assert_eq!(nearest("edeg-1", ["edge-1", "edge-2"]), Some("edge-1"));
        assert_eq!(
            nearest("web-10", ["web-1", "web-100", "web-11"]),
            Some("web-1")
        );
    }

    #[test]
    fn names_too_far_or_too_long_get_no_suggestion() {
        assert_eq!(nearest("db", ["edge", "api"]), None);
        assert_eq!(nearest("database", ["edge"]), None);
        assert_eq!(nearest("edge", ["edge"]), None);
        let long = "e".repeat(MAX_NAME + 1);
        assert_eq!(nearest(&long, [&long[1..]]), None);
    }

    #[test]
    fn distances_count_swaps_as_one_edit_and_stop_past_the_limit() {
        assert_eq!(distance_within(b"ab", b"ba", 3), Some(1));
        assert_eq!(distance_within(b"kitten", b"sitting", 3), Some(3));
        assert_eq!(distance_within(b"kitten", b"sitting", 2), None);
        assert_eq!(distance_within(b"", b"abc", 3), Some(3));
        assert_eq!(distance_within(b"abc", b"", 2), None);
    }
}
