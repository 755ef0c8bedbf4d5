//! Scoring windows.
//!
//! A document of n tokens is scored against a model of context C as follows:
//! - n <= C: one window [0, n) scoring positions 1..n;
//! - else, with stride S = C / 2: the first window is [0, C) and scores 1..C; each
//!   next window ends at e = min(e_prev + S, n), is [e - C, e), and scores only the
//!   positions [e_prev, e) not scored yet. Every scored token then has at least
//!   min(p, C - S) >= min(p, C / 2) tokens of history (its whole prefix, or at least
//!   half a context), and every position >= 1 is scored exactly once.

/// One forward pass: tokens [start, end) of a document, scoring positions [score_from, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    /// First position (in document coordinates) whose loss this window reports.
    pub score_from: usize,
}

impl Window {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    pub fn n_scored(&self) -> usize {
        self.end - self.score_from
    }
}

/// The windows that score every position 1..n of a document of `n` tokens.
pub fn doc_windows(n: usize, ctx: usize) -> Vec<Window> {
    assert!(ctx >= 2, "context must be at least 2 tokens");
    if n <= 1 {
        return Vec::new();
    }
    if n <= ctx {
        return vec![Window { start: 0, end: n, score_from: 1 }];
    }
    let stride = ctx / 2;
    let mut out = vec![Window { start: 0, end: ctx, score_from: 1 }];
    let mut prev_end = ctx;
    while prev_end < n {
        let end = (prev_end + stride).min(n);
        out.push(Window { start: end - ctx, end, score_from: prev_end });
        prev_end = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_scored_once_with_half_context() {
        for ctx in [2usize, 3, 4, 7, 8, 64] {
            for n in 0..200usize {
                let ws = doc_windows(n, ctx);
                let mut seen = vec![0u32; n];
                for w in &ws {
                    assert!(w.len() <= ctx && w.score_from > w.start && w.score_from < w.end);
                    for p in w.score_from..w.end {
                        seen[p] += 1;
                        // history inside the window: the whole prefix, or at least half a context
                        assert!(p - w.start >= p.min(ctx - ctx / 2), "n={n} ctx={ctx} p={p} {w:?}");
                    }
                }
                if n >= 1 {
                    assert_eq!(seen[0], 0);
                }
                assert!(seen.iter().skip(1).all(|&c| c == 1), "n={n} ctx={ctx}: {ws:?}");
            }
        }
    }

    #[test]
    fn example_windows() {
        assert_eq!(doc_windows(1, 4), vec![]);
        assert_eq!(doc_windows(3, 4), vec![Window { start: 0, end: 3, score_from: 1 }]);
        assert_eq!(
            doc_windows(9, 4),
            vec![
                Window { start: 0, end: 4, score_from: 1 },
                Window { start: 2, end: 6, score_from: 4 },
                Window { start: 4, end: 8, score_from: 6 },
                Window { start: 5, end: 9, score_from: 8 },
            ]
        );
    }
}
