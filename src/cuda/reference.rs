//! CPU references for the CUDA kernels (src/cuda/kernels): plain f32/f64 loops that state
//! what each kernel computes, on the same strided layouts. Tests compare the kernels (in the
//! emulator here, on the GPU with `rho bench kernels`) against these.

/// Strides (in elements) of a `[batch, seq, heads, head_dim]` tensor whose head dim is contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strides {
    pub batch: usize,
    pub head: usize,
    pub seq: usize,
}

impl Strides {
    /// A contiguous `[batch, seq, heads, head_dim]` tensor.
    pub fn contiguous(seq: usize, heads: usize, head_dim: usize) -> Self {
        Strides { batch: seq * heads * head_dim, head: head_dim, seq: heads * head_dim }
    }
    pub fn at(&self, b: usize, s: usize, h: usize) -> usize {
        b * self.batch + s * self.seq + h * self.head
    }
}

/// Shape of a causal grouped-query attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Checks the head counts divide and that `len` elements hold every row of each input.
    pub fn check(&self, inputs: &[(&str, usize, Strides, usize)]) -> Result<(), String> {
        let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim } = *self;
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(format!("{n_heads} query heads are not a multiple of {n_kv_heads} key/value heads"));
        }
        for &(name, len, st, heads) in inputs {
            if batch == 0 || seq == 0 {
                continue;
            }
            let last = st.at(batch - 1, seq - 1, heads - 1) + head_dim;
            if last > len {
                return Err(format!("{name}: strides {st:?} reach element {last} of {len}"));
            }
        }
        Ok(())
    }
}

/// The keys query position `i` attends: j <= i and, with a sliding window of `w` (>= 1),
/// i - j < w (the query and the w - 1 keys before it; transformers' `sliding_window`
/// masks: `kv_idx > q_idx - sliding_window` on top of the causal mask). `None`: every j <= i.
pub fn attended_keys(i: usize, window: Option<usize>) -> std::ops::Range<usize> {
    match window {
        Some(w) => {
            assert!(w >= 1, "a sliding window must be at least 1");
            (i + 1).saturating_sub(w)..i + 1
        }
        None => 0..i + 1,
    }
}

/// Causal attention: out[b, i, h, :] = sum_{j in keys(i)} softmax_j(scale * q[b,i,h].k[b,j,h/G]) v[b,j,h/G],
/// G = n_heads / n_kv_heads, keys(i) = [`attended_keys`]`(i, window)` (j <= i, and i - j < w with a
/// sliding window w). q: [b, s, n_heads, d], k and v: [b, s, n_kv_heads, d] (strided),
/// out: contiguous [b, s, n_heads, d] f32. Dot products and sums in f64.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(shape: AttnShape, q: &[f32], qs: Strides, k: &[f32], ks: Strides, v: &[f32], vs: Strides, scale: f32, window: Option<usize>) -> Vec<f32> {
    causal_attention_lse(shape, q, qs, k, ks, v, vs, scale, window).0
}

/// [`causal_attention`] and each row's log2 normaliser lse2[b, i, h] = log2 sum_{j in keys(i)}
/// exp(scale q.k) ([b, s, n_heads], what the forward kernel saves for the backward).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_lse(
    shape: AttnShape,
    q: &[f32],
    qs: Strides,
    k: &[f32],
    ks: Strides,
    v: &[f32],
    vs: Strides,
    scale: f32,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let group = n_heads / n_kv_heads;
    let os = Strides::contiguous(seq, n_heads, d);
    let mut out = vec![0f32; batch * seq * n_heads * d];
    let mut lse2 = vec![0f32; batch * seq * n_heads];
    let mut w = vec![0f64; seq];
    for b in 0..batch {
        for h in 0..n_heads {
            let kvh = h / group;
            for i in 0..seq {
                let keys = attended_keys(i, window);
                let (mx, sum) = exp_scores(q, qs, k, ks, (b, i, h, kvh), d, scale, keys.clone(), &mut w);
                lse2[(b * seq + i) * n_heads + h] = ((mx + sum.ln()) * std::f64::consts::LOG2_E) as f32;
                let o = &mut out[os.at(b, i, h)..os.at(b, i, h) + d];
                for (c, oc) in o.iter_mut().enumerate() {
                    let mut acc = 0f64;
                    for j in keys.clone() {
                        acc += w[j] * v[vs.at(b, j, kvh) + c] as f64;
                    }
                    *oc = (acc / sum) as f32;
                }
            }
        }
    }
    (out, lse2)
}

/// exp(x_j - max) of the scores x_j = scale * q[b,i,h] . k[b,j,kvh], j in `keys`, into w[keys];
/// returns (max, sum of w[keys]): softmax = w / sum, log-sum-exp = max + ln sum.
#[allow(clippy::too_many_arguments)]
fn exp_scores(
    q: &[f32],
    qs: Strides,
    k: &[f32],
    ks: Strides,
    (b, i, h, kvh): (usize, usize, usize, usize),
    d: usize,
    scale: f32,
    keys: std::ops::Range<usize>,
    w: &mut [f64],
) -> (f64, f64) {
    let qi = &q[qs.at(b, i, h)..qs.at(b, i, h) + d];
    let mut mx = f64::NEG_INFINITY;
    for j in keys.clone() {
        let kj = &k[ks.at(b, j, kvh)..ks.at(b, j, kvh) + d];
        let dot: f64 = qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
        w[j] = dot * scale as f64;
        mx = mx.max(w[j]);
    }
    let mut sum = 0f64;
    for wj in &mut w[keys] {
        *wj = (*wj - mx).exp();
        sum += *wj;
    }
    (mx, sum)
}

/// Gradients of causal attention (with the sliding `window`, as [`causal_attention`]) for the
/// output gradient `dout` (strides `gs`):
/// (dq [b, s, n_heads, d], dk and dv [b, s, n_kv_heads, d]), contiguous f32, in f64 inside:
/// P = softmax(scale q k^T) (causal), dv = P^T dout, dP = dout v^T, dS = P (dP - rowsum(dP P)),
/// dq = scale dS k, dk = scale dS^T q; the query heads of a group add into their kv head.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
    shape: AttnShape,
    q: &[f32],
    qs: Strides,
    k: &[f32],
    ks: Strides,
    v: &[f32],
    vs: Strides,
    dout: &[f32],
    gs: Strides,
    scale: f32,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let group = n_heads / n_kv_heads;
    let (qo, ko) = (Strides::contiguous(seq, n_heads, d), Strides::contiguous(seq, n_kv_heads, d));
    let mut dq = vec![0f64; batch * seq * n_heads * d];
    let mut dk = vec![0f64; batch * seq * n_kv_heads * d];
    let mut dv = vec![0f64; batch * seq * n_kv_heads * d];
    let mut p = vec![0f64; seq];
    let mut dp = vec![0f64; seq];
    for b in 0..batch {
        for h in 0..n_heads {
            let kvh = h / group;
            for i in 0..seq {
                let keys = attended_keys(i, window);
                let (_, sum) = exp_scores(q, qs, k, ks, (b, i, h, kvh), d, scale, keys.clone(), &mut p);
                let g = &dout[gs.at(b, i, h)..gs.at(b, i, h) + d];
                let mut dsum = 0f64;
                for j in keys.clone() {
                    p[j] /= sum;
                    let vj = &v[vs.at(b, j, kvh)..vs.at(b, j, kvh) + d];
                    dp[j] = g.iter().zip(vj).map(|(a, b)| *a as f64 * *b as f64).sum();
                    dsum += p[j] * dp[j];
                    for c in 0..d {
                        dv[ko.at(b, j, kvh) + c] += p[j] * g[c] as f64;
                    }
                }
                for j in keys {
                    let ds = p[j] * (dp[j] - dsum) * scale as f64;
                    for c in 0..d {
                        dq[qo.at(b, i, h) + c] += ds * k[ks.at(b, j, kvh) + c] as f64;
                        dk[ko.at(b, j, kvh) + c] += ds * q[qs.at(b, i, h) + c] as f64;
                    }
                }
            }
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
    (f(dq), f(dk), f(dv))
}

/// Where the rows of a [b, s, vocab] logits tensor start: row r = (r / seq, r % seq) at
/// (r / seq) * stride_b + (r % seq) * stride_s elements (a narrowed [b, s - 1, vocab] view
/// of the model's logits is not evenly spaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub seq: usize,
    pub stride_b: usize,
    pub stride_s: usize,
}

impl Rows {
    /// Rows `stride` elements apart.
    pub fn uniform(stride: usize) -> Self {
        Rows { seq: 1, stride_b: stride, stride_s: 0 }
    }
    pub fn at(&self, r: usize) -> usize {
        (r / self.seq) * self.stride_b + (r % self.seq) * self.stride_s
    }
}

/// Per-row cross-entropy: (loss, lse) with lse = log sum_v exp(x[r, v]) and loss = lse - x[r, t_r].
/// logits: one row of `vocab` per target, placed by `rows`. Sums in f64. A target
/// outside the vocabulary gives a NaN loss (the kernel's contract).
pub fn token_ce(logits: &[f32], rows: Rows, targets: &[u32], vocab: usize) -> (Vec<f32>, Vec<f32>) {
    let mut loss = Vec::with_capacity(targets.len());
    let mut lse = Vec::with_capacity(targets.len());
    for (r, &t) in targets.iter().enumerate() {
        let x = &logits[rows.at(r)..rows.at(r) + vocab];
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &e| m.max(e as f64));
        let s: f64 = x.iter().map(|&e| (e as f64 - m).exp()).sum();
        let l = m + s.ln();
        lse.push(l as f32);
        loss.push(if (t as usize) < vocab { (l - x[t as usize] as f64) as f32 } else { f32::NAN });
    }
    (loss, lse)
}

/// Gradient of sum_r dloss[r] * loss[r] with respect to the logits:
/// (softmax(x[r]) - onehot(t_r)) * dloss[r], rows of `vocab` (contiguous output).
pub fn token_ce_backward(logits: &[f32], rows: Rows, targets: &[u32], dloss: &[f32], vocab: usize) -> Vec<f32> {
    let (_, lse) = token_ce(logits, rows, targets, vocab);
    let mut out = vec![0f32; targets.len() * vocab];
    for (r, &t) in targets.iter().enumerate() {
        let x = &logits[rows.at(r)..rows.at(r) + vocab];
        for (c, o) in out[r * vocab..(r + 1) * vocab].iter_mut().enumerate() {
            let p = (x[c] as f64 - lse[r] as f64).exp();
            *o = ((p - if c == t as usize { 1.0 } else { 0.0 }) * dloss[r] as f64) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_of_one_key_is_its_value_and_uniform_scores_average() {
        // seq 2, one head, d 2: row 0 sees only key 0; row 1 with q = 0 averages v0 and v1.
        let shape = AttnShape { batch: 1, seq: 2, n_heads: 1, n_kv_heads: 1, head_dim: 2 };
        let st = Strides::contiguous(2, 1, 2);
        let q = [1.0, 2.0, 0.0, 0.0];
        let k = [3.0, -1.0, 0.5, 0.5];
        let v = [1.0, 2.0, 3.0, 6.0];
        let o = causal_attention(shape, &q, st, &k, st, &v, st, 1.0, None);
        assert_eq!(o, vec![1.0, 2.0, 2.0, 4.0]);
    }

    #[test]
    fn a_window_keeps_the_query_and_the_keys_just_before_it() {
        assert_eq!(attended_keys(0, None), 0..1);
        assert_eq!(attended_keys(5, None), 0..6);
        assert_eq!(attended_keys(5, Some(1)), 5..6);
        assert_eq!(attended_keys(5, Some(3)), 3..6);
        assert_eq!(attended_keys(5, Some(6)), 0..6);
        assert_eq!(attended_keys(2, Some(100)), 0..3);
        // each row with window w is the last row of plain causal attention over its own window
        let (seq, d, w) = (9usize, 3usize, 4usize);
        let shape = AttnShape { batch: 1, seq, n_heads: 1, n_kv_heads: 1, head_dim: d };
        let st = Strides::contiguous(seq, 1, d);
        let x = |k: usize| (0..seq * d).map(|i| ((i * 7 + k * 13) % 11) as f32 / 5.0 - 1.0).collect::<Vec<f32>>();
        let (q, k, v) = (x(1), x(2), x(3));
        let (o, lse) = causal_attention_lse(shape, &q, st, &k, st, &v, st, 0.7, Some(w));
        for i in 0..seq {
            let j0 = (i + 1).saturating_sub(w);
            let n = i + 1 - j0;
            let sub = AttnShape { seq: n, ..shape };
            let sst = Strides::contiguous(n, 1, d);
            let (so, sl) = causal_attention_lse(sub, &q[j0 * d..(i + 1) * d], sst, &k[j0 * d..(i + 1) * d], sst, &v[j0 * d..(i + 1) * d], sst, 0.7, None);
            assert_eq!(&o[i * d..(i + 1) * d], &so[(n - 1) * d..], "row {i}");
            assert_eq!(lse[i], sl[n - 1], "row {i}");
        }
        // window 1: each query sees only itself
        let o1 = causal_attention(shape, &q, st, &k, st, &v, st, 0.7, Some(1));
        assert_eq!(o1, v);
    }

    #[test]
    fn ce_matches_the_definition_and_its_gradient_rows_sum_to_zero() {
        let x = [0.0f32, (2.0f32).ln(), 0.0, 9.0, 1.0, 2.0, 3.0, 9.0];
        let (loss, lse) = token_ce(&x, Rows::uniform(4), &[1, 9], 3);
        assert!((lse[0] - (4.0f32).ln()).abs() < 1e-6);
        assert!((loss[0] - (2.0f32).ln()).abs() < 1e-6, "{loss:?}");
        assert!(loss[1].is_nan(), "a target past the vocabulary is NaN");
        let g = token_ce_backward(&x, Rows::uniform(4), &[1, 2], &[2.0, 1.0], 3);
        assert!((g[0] - 0.5).abs() < 1e-6 && (g[1] - (1.0 - 2.0)).abs() < 1e-6, "{g:?}");
        for r in 0..2 {
            assert!(g[r * 3..r * 3 + 3].iter().sum::<f32>().abs() < 1e-6);
        }
    }
}
