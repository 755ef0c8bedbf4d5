//! What to score: documents -> token rows and forward-pass units.

use crate::data::tokenizer::Encoded;
use crate::data::windows::doc_windows;

/// One forward pass over `tokens`; it reports the losses of local positions
/// `score_from..tokens.len()` as rows `row_start..row_start + n_scored()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub tokens: Vec<u32>,
    pub score_from: usize,
    pub row_start: usize,
}

impl Unit {
    pub fn n_scored(&self) -> usize {
        self.tokens.len() - self.score_from
    }
}

/// The scored tokens of a study, one entry per row (column-wise).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Document index (default) or packed window index (`--pack`).
    pub seq: Vec<u32>,
    /// Index of the predicted token in its sequence (>= 1).
    pub pos: Vec<u32>,
    /// The document the token comes from.
    pub doc: Vec<u32>,
    pub token_id: Vec<u32>,
    /// Byte span of the token in its document.
    pub start: Vec<u32>,
    pub end: Vec<u32>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.seq.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
    /// The rows `r` (a shard's part). A column the caller emptied (to save memory)
    /// stays empty.
    pub fn slice(&self, r: std::ops::Range<usize>) -> Rows {
        let part = |v: &Vec<u32>| if v.is_empty() { Vec::new() } else { v[r.clone()].to_vec() };
        Rows {
            seq: part(&self.seq),
            pos: part(&self.pos),
            doc: part(&self.doc),
            token_id: part(&self.token_id),
            start: part(&self.start),
            end: part(&self.end),
        }
    }
    fn push(&mut self, seq: usize, pos: usize, doc: usize, id: u32, span: (usize, usize)) {
        self.seq.push(seq as u32);
        self.pos.push(pos as u32);
        self.doc.push(doc as u32);
        self.token_id.push(id);
        self.start.push(span.0 as u32);
        self.end.push(span.1 as u32);
    }
}

/// Every document on its own, long ones in overlapping windows (see `data::windows`).
/// `max_tokens` stops after that many scored tokens.
pub fn plan_documents(encs: &[Encoded], ctx: usize, max_tokens: Option<usize>) -> (Rows, Vec<Unit>) {
    let limit = max_tokens.unwrap_or(usize::MAX);
    let mut rows = Rows::default();
    let mut units = Vec::new();
    'docs: for (d, enc) in encs.iter().enumerate() {
        for w in doc_windows(enc.ids.len(), ctx) {
            let room = limit - rows.len();
            if room == 0 {
                break 'docs;
            }
            let end = w.end.min(w.score_from.saturating_add(room));
            units.push(Unit {
                tokens: enc.ids[w.start..end].to_vec(),
                score_from: w.score_from - w.start,
                row_start: rows.len(),
            });
            for p in w.score_from..end {
                rows.push(d, p, d, enc.ids[p], enc.offsets[p]);
            }
        }
    }
    (rows, units)
}

/// Documents concatenated with EOS after each (unless the tokenizer already ends
/// it with EOS) and cut into windows of `ctx` tokens, as in training. `seq` is the
/// window index and `pos` the position in the window.
pub fn plan_packed(encs: &[Encoded], eos: u32, ctx: usize, max_tokens: Option<usize>) -> (Rows, Vec<Unit>) {
    // The packed stream with, for each token, its document and byte span.
    let mut ids = Vec::new();
    let mut src: Vec<(u32, (usize, usize))> = Vec::new();
    for (d, enc) in encs.iter().enumerate() {
        ids.extend_from_slice(&enc.ids);
        src.extend(enc.offsets.iter().map(|&o| (d as u32, o)));
        if enc.ids.last() != Some(&eos) {
            let end = enc.offsets.iter().map(|o| o.1).max().unwrap_or(0);
            ids.push(eos);
            src.push((d as u32, (end, end)));
        }
    }
    let limit = max_tokens.unwrap_or(usize::MAX);
    let mut rows = Rows::default();
    let mut units = Vec::new();
    for (k, start) in (0..ids.len()).step_by(ctx).enumerate() {
        let room = limit - rows.len();
        if room == 0 {
            break;
        }
        let end = (start + ctx).min(ids.len()).min((start + 1).saturating_add(room));
        if end - start < 2 {
            break;
        }
        units.push(Unit { tokens: ids[start..end].to_vec(), score_from: 1, row_start: rows.len() });
        for i in start + 1..end {
            rows.push(k, i - start, src[i].0 as usize, ids[i], src[i].1);
        }
    }
    (rows, units)
}

/// Group units into batches of at most `batch_tokens` padded tokens (at least one
/// unit per batch), longest first so that padding stays small.
pub fn batches(units: &[Unit], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| units[b].tokens.len().cmp(&units[a].tokens.len()).then(a.cmp(&b)));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_len = 0;
    for i in order {
        let l = units[i].tokens.len();
        if !cur.is_empty() && (cur.len() + 1) * cur_len.max(l) > batch_tokens {
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur_len = l;
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(n: usize, base: u32) -> Encoded {
        Encoded { ids: (0..n as u32).map(|i| base + i).collect(), offsets: (0..n).map(|i| (i, i + 1)).collect() }
    }

    #[test]
    fn documents_rows_and_units_agree() {
        let encs = vec![enc(1, 0), enc(5, 10), enc(10, 100)];
        let (rows, units) = plan_documents(&encs, 4, None);
        assert_eq!(rows.len(), 4 + 9);
        assert_eq!(rows.seq[0], 1);
        assert_eq!(rows.pos[0], 1);
        let mut n = 0;
        for u in &units {
            assert_eq!(u.row_start, n);
            for j in u.score_from..u.tokens.len() {
                assert_eq!(u.tokens[j], rows.token_id[u.row_start + j - u.score_from]);
            }
            n += u.n_scored();
        }
        assert_eq!(n, rows.len());
        let (rows, units) = plan_documents(&encs, 4, Some(6));
        assert_eq!(rows.len(), 6);
        assert_eq!(units.iter().map(|u| u.n_scored()).sum::<usize>(), 6);
    }

    #[test]
    fn packed_appends_eos_and_cuts_windows() {
        let encs = vec![enc(3, 10), enc(2, 20)];
        let (rows, units) = plan_packed(&encs, 0, 4, None);
        // stream: 10 11 12 0 20 21 0 -> windows [10 11 12 0] [20 21 0]
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].tokens, vec![20, 21, 0]);
        assert_eq!(rows.seq, vec![0, 0, 0, 1, 1]);
        assert_eq!(rows.pos, vec![1, 2, 3, 1, 2]);
        assert_eq!(rows.doc, vec![0, 0, 0, 1, 1]);
        assert_eq!(rows.token_id, vec![11, 12, 0, 21, 0]);
    }

    #[test]
    fn batches_respect_budget() {
        let units: Vec<Unit> = [5usize, 3, 8, 8, 2]
            .iter()
            .map(|&l| Unit { tokens: vec![0; l], score_from: 1, row_start: 0 })
            .collect();
        let b = batches(&units, 16);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        for batch in &b {
            let max = batch.iter().map(|&i| units[i].tokens.len()).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * max <= 16);
        }
    }
}
