//! Causal grouped-query attention on the CPU, forward (with each row's normaliser) and
//! backward: the flash attention op's CPU implementation, for training and evaluation.
//!
//! Same contracts as [`reference::causal_attention_lse`] and
//! [`reference::causal_attention_backward`] (f32 in and out, any batch/head/position strides,
//! the head dim contiguous), but in f32 with the matrix products on the `gemm` crate (the
//! kernels candle's CPU matmul uses, runtime-dispatched SIMD), one task per (batch, kv head) in
//! parallel, and blocks of [`BR`] query rows against only the keys up to the block's last row
//! (causal: half the work of a full product) and, with a sliding window w, from the first row's
//! first key (w - 1 before it) on: a windowed layer costs ~(w + BR) keys per row, not s. Keys
//! in that range but outside a row's own window are masked exactly. The [BR, keys] scores of a block live in the
//! task's buffers and are gone after it: the graph keeps o and the [b, s, heads] normalisers,
//! where candle's composed attention keeps ~5 tensors of [b, heads, s, s] (scores, mask sum,
//! max-shifted, exponentials, probabilities) and their gradients.
//!
//! Backward (FlashAttention-2's equations): P = exp(scale Q K^T - lse) from the forward's
//! normalisers, dV += P^T dO, dP = dO V^T, dS = P (dP - D) with D = rowsum(dO o),
//! dQ = scale dS K, dK += scale dS^T Q; the query heads of a group add into their kv head.
//!
//! [`reference::causal_attention_lse`]: super::reference::causal_attention_lse
//! [`reference::causal_attention_backward`]: super::reference::causal_attention_backward

use super::reference::{AttnShape, Strides};
use rayon::prelude::*;

/// Query rows per block.
pub const BR: usize = 64;

/// dst[m x n] (row stride `ldd`, columns contiguous) = (dst if `acc`) + alpha A B, A [m x k] and
/// B [k x n] given by their (row, column) element strides. Single-threaded (the callers run in
/// parallel over tasks).
///
/// # Safety
/// Every element addressed through the pointers and strides must lie in its buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(m: usize, n: usize, k: usize, dst: *mut f32, ldd: usize, acc: bool, a: *const f32, a_rs: usize, a_cs: usize, b: *const f32, b_rs: usize, b_cs: usize, alpha: f32) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        acc,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Rows 0..seq of head `h` of batch `b` as a contiguous [seq, d] copy.
fn head_rows(x: &[f32], st: Strides, b: usize, h: usize, seq: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(seq * d);
    for i in 0..seq {
        let at = st.at(b, i, h);
        out.extend_from_slice(&x[at..at + d]);
    }
    out
}

/// The tasks: (batch, kv head) pairs.
fn tasks(shape: AttnShape) -> impl ParallelIterator<Item = (usize, usize)> {
    (0..shape.batch * shape.n_kv_heads).into_par_iter().map(move |t| (t / shape.n_kv_heads, t % shape.n_kv_heads))
}

/// The first key row `r` attends with the sliding window `w` (0: none): r + 1 - w, or 0.
fn first_key(r: usize, w: usize) -> usize {
    if w == 0 {
        0
    } else {
        (r + 1).saturating_sub(w)
    }
}

/// The window as the loops use it: 0 for none (also for w >= seq, which masks nothing).
/// Panics on Some(0) (the op's callers refuse it first).
fn window_arg(window: Option<usize>, seq: usize) -> usize {
    match window {
        Some(0) => panic!("a sliding window must be at least 1"),
        Some(w) if w < seq => w,
        _ => 0,
    }
}

/// Causal attention (with a sliding `window`: query i attends keys i - w < j <= i) and each
/// row's log2 normaliser: (o [b, s, n_heads, d] contiguous, lse2 [b, s, n_heads]), as
/// [`super::reference::causal_attention_lse`].
#[allow(clippy::too_many_arguments)]
pub fn attention_lse(shape: AttnShape, q: &[f32], qs: Strides, k: &[f32], ks: Strides, v: &[f32], vs: Strides, scale: f32, window: Option<usize>) -> (Vec<f32>, Vec<f32>) {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let group = n_heads / n_kv_heads;
    let w = window_arg(window, seq);
    // the scores of a block: BR rows of at most BR + w - 1 keys (all keys up to the block's end without a window)
    let width = if w == 0 { seq } else { (BR + w - 1).min(seq) };
    // per task: the group's heads' outputs [group, seq, d] and normalisers [group, seq]
    let parts: Vec<(Vec<f32>, Vec<f32>)> = tasks(shape)
        .map(|(b, kvh)| {
            let (kf, vf) = (head_rows(k, ks, b, kvh, seq, d), head_rows(v, vs, b, kvh, seq, d));
            let mut o = vec![0f32; group * seq * d];
            let mut lse2 = vec![0f32; group * seq];
            let mut s = vec![0f32; BR * width];
            for gi in 0..group {
                let qf = head_rows(q, qs, b, kvh * group + gi, seq, d);
                for r0 in (0..seq).step_by(BR) {
                    let (r1, m) = ((r0 + BR).min(seq), (r0 + BR).min(seq) - r0);
                    let k0 = first_key(r0, w); // keys k0..r1: causal, and in the first row's window
                    let nk = r1 - k0;
                    assert!(nk <= width, "attention block of {nk} keys in a buffer of {width}");
                    // SAFETY: S [m, nk] in s (m <= BR, nk <= width); Q rows r0..r1 and K rows k0..r1 in bounds.
                    unsafe { mm(m, nk, d, s.as_mut_ptr(), nk, false, qf[r0 * d..].as_ptr(), d, 1, kf[k0 * d..].as_ptr(), 1, d, scale) };
                    for i in 0..m {
                        let row = &mut s[i * nk..(i + 1) * nk];
                        // the row's keys first..=last, relative to k0
                        let (first, last) = (first_key(r0 + i, w) - k0, r0 + i - k0);
                        let mx = row[first..=last].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                        let mut sum = 0f32;
                        for x in row[first..=last].iter_mut() {
                            *x = (*x - mx).exp();
                            sum += *x;
                        }
                        let inv = 1.0 / sum;
                        row[first..=last].iter_mut().for_each(|x| *x *= inv);
                        row[..first].iter_mut().for_each(|x| *x = 0.0);
                        row[last + 1..].iter_mut().for_each(|x| *x = 0.0);
                        lse2[gi * seq + r0 + i] = (mx + sum.ln()) * std::f32::consts::LOG2_E;
                    }
                    // SAFETY: O rows r0..r1 of head gi; P [m, nk]; V rows k0..r1.
                    unsafe { mm(m, d, nk, o[(gi * seq + r0) * d..].as_mut_ptr(), d, false, s.as_ptr(), nk, 1, vf[k0 * d..].as_ptr(), d, 1, 1.0) };
                }
            }
            (o, lse2)
        })
        .collect();
    let mut out = vec![0f32; batch * seq * n_heads * d];
    let mut lse2 = vec![0f32; batch * seq * n_heads];
    for (t, (o, l)) in parts.iter().enumerate() {
        let (b, kvh) = (t / n_kv_heads, t % n_kv_heads);
        put_heads(&mut out, o, (b, seq, n_heads), kvh * group, d);
        put_heads(&mut lse2, l, (b, seq, n_heads), kvh * group, 1);
    }
    (out, lse2)
}

/// A task's rows `part` [n, seq, w] (n consecutive heads from `first`) into their places in
/// `dst` [batch, seq, heads, w] for batch `b`.
fn put_heads(dst: &mut [f32], part: &[f32], (b, seq, heads): (usize, usize, usize), first: usize, w: usize) {
    if seq * w == 0 {
        return; // nothing to place (and chunks of 0 would panic)
    }
    for (g, rows) in part.chunks(seq * w).enumerate() {
        for (i, row) in rows.chunks(w).enumerate() {
            let at = ((b * seq + i) * heads + first + g) * w;
            dst[at..at + w].copy_from_slice(row);
        }
    }
}

/// Gradients of causal attention (with the sliding `window` of the forward) for the output
/// gradient `g` (strides `gs`), given the forward's output `o` ([b, s, n_heads, d] contiguous)
/// and normalisers `lse2`: (dq [b, s, n_heads, d], dk and dv [b, s, n_kv_heads, d]),
/// contiguous f32, as [`super::reference::causal_attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: AttnShape,
    q: &[f32],
    qs: Strides,
    k: &[f32],
    ks: Strides,
    v: &[f32],
    vs: Strides,
    o: &[f32],
    lse2: &[f32],
    g: &[f32],
    gs: Strides,
    scale: f32,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let group = n_heads / n_kv_heads;
    let os = Strides::contiguous(seq, n_heads, d);
    let w = window_arg(window, seq);
    let width = if w == 0 { seq } else { (BR + w - 1).min(seq) };
    // per task: dq of the group's heads [group, seq, d], dk and dv [seq, d]
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks(shape)
        .map(|(b, kvh)| {
            let (kf, vf) = (head_rows(k, ks, b, kvh, seq, d), head_rows(v, vs, b, kvh, seq, d));
            let mut dq = vec![0f32; group * seq * d];
            let (mut dk, mut dv) = (vec![0f32; seq * d], vec![0f32; seq * d]);
            let (mut p, mut ds) = (vec![0f32; BR * width], vec![0f32; BR * width]);
            for gi in 0..group {
                let h = kvh * group + gi;
                let (qf, gf) = (head_rows(q, qs, b, h, seq, d), head_rows(g, gs, b, h, seq, d));
                let of = head_rows(o, os, b, h, seq, d);
                for r0 in (0..seq).step_by(BR) {
                    let (r1, m) = ((r0 + BR).min(seq), (r0 + BR).min(seq) - r0);
                    let k0 = first_key(r0, w); // keys k0..r1, as the forward
                    let nk = r1 - k0;
                    assert!(nk <= width, "attention block of {nk} keys in a buffer of {width}");
                    // P = exp(scale Q K^T - lse), zero outside each row's keys
                    // SAFETY (all products below): P, dS [m, nk] within BR x width; Q, dO, dQ rows
                    // r0..r1 and K, V, dK, dV rows k0..r1 of [seq, d] buffers.
                    unsafe { mm(m, nk, d, p.as_mut_ptr(), nk, false, qf[r0 * d..].as_ptr(), d, 1, kf[k0 * d..].as_ptr(), 1, d, scale) };
                    for i in 0..m {
                        let (first, last) = (first_key(r0 + i, w) - k0, r0 + i - k0);
                        let lse = lse2[(b * seq + r0 + i) * n_heads + h] * std::f32::consts::LN_2;
                        let row = &mut p[i * nk..(i + 1) * nk];
                        row[first..=last].iter_mut().for_each(|x| *x = (*x - lse).exp());
                        row[..first].iter_mut().for_each(|x| *x = 0.0);
                        row[last + 1..].iter_mut().for_each(|x| *x = 0.0);
                    }
                    // dV[k0..r1] += P^T dO
                    unsafe { mm(nk, d, m, dv[k0 * d..].as_mut_ptr(), d, true, p.as_ptr(), 1, nk, gf[r0 * d..].as_ptr(), d, 1, 1.0) };
                    // dP = dO V^T, then dS = P (dP - D) in its place
                    unsafe { mm(m, nk, d, ds.as_mut_ptr(), nk, false, gf[r0 * d..].as_ptr(), d, 1, vf[k0 * d..].as_ptr(), 1, d, 1.0) };
                    for i in 0..m {
                        let r = r0 + i;
                        let dsum: f32 = gf[r * d..(r + 1) * d].iter().zip(&of[r * d..(r + 1) * d]).map(|(a, b)| a * b).sum();
                        for (x, &pv) in ds[i * nk..(i + 1) * nk].iter_mut().zip(&p[i * nk..(i + 1) * nk]) {
                            *x = pv * (*x - dsum);
                        }
                    }
                    // dQ rows r0..r1 = scale dS K; dK[k0..r1] += scale dS^T Q
                    unsafe { mm(m, d, nk, dq[(gi * seq + r0) * d..].as_mut_ptr(), d, false, ds.as_ptr(), nk, 1, kf[k0 * d..].as_ptr(), d, 1, scale) };
                    unsafe { mm(nk, d, m, dk[k0 * d..].as_mut_ptr(), d, true, ds.as_ptr(), 1, nk, qf[r0 * d..].as_ptr(), d, 1, scale) };
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![0f32; batch * seq * n_heads * d];
    let mut dk = vec![0f32; batch * seq * n_kv_heads * d];
    let mut dv = vec![0f32; batch * seq * n_kv_heads * d];
    for (t, (pq, pk, pv)) in parts.iter().enumerate() {
        let (b, kvh) = (t / n_kv_heads, t % n_kv_heads);
        put_heads(&mut dq, pq, (b, seq, n_heads), kvh * group, d);
        put_heads(&mut dk, pk, (b, seq, n_kv_heads), kvh, d);
        put_heads(&mut dv, pv, (b, seq, n_kv_heads), kvh, d);
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use super::*;

    fn normal(n: usize, seed: u64, std: f32) -> Vec<f32> {
        use rand::SeedableRng;
        super::super::check::normal(&mut rand::rngs::StdRng::seed_from_u64(seed), n, std)
    }

    /// max |got - want| / max |want| (absolute where want is all ~0: one key, no dq or dk)
    fn max_rel(got: &[f32], want: &[f32]) -> f32 {
        let mag = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / mag.max(0.1)
    }

    /// q, k, v as strided views of one fused projection [b, s, nh + 2 nkv, d] (offsets into `qkv`)
    fn fused_views(shape: AttnShape, seed: u64) -> (Vec<f32>, [(Strides, usize); 3]) {
        let AttnShape { batch, seq, n_heads: nh, n_kv_heads: nkv, head_dim: d } = shape;
        let width = (nh + 2 * nkv) * d;
        let st = |heads_before: usize| (Strides { batch: seq * width, seq: width, head: d }, heads_before * d);
        (normal(batch * seq * width, seed, 1.0), [st(0), st(nh), st(nh + nkv)])
    }

    /// attention_lse and attention_backward with `window` against the f64 reference: (max rel. error of o,
    /// max abs. error of lse2, max rel. errors of dq, dk, dv).
    fn errors(shape: AttnShape, seed: u64, window: Option<usize>) -> (f32, f32, [f32; 3]) {
        let AttnShape { batch, seq, n_heads: nh, head_dim: d, .. } = shape;
        let (qkv, [(qs, qo), (ks, ko), (vs, vo)]) = fused_views(shape, seed);
        let (q, k, v) = (&qkv[qo..], &qkv[ko..], &qkv[vo..]);
        let scale = 1.0 / (d as f32).sqrt() * 1.7;
        let (o, lse2) = attention_lse(shape, q, qs, k, ks, v, vs, scale, window);
        let (wo, wl) = reference::causal_attention_lse(shape, q, qs, k, ks, v, vs, scale, window);
        let lse_err = lse2.iter().zip(&wl).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let g = normal(batch * seq * nh * d, 100 + seed, 1.0);
        let gs = Strides::contiguous(seq, nh, d);
        let (dq, dk, dv) = attention_backward(shape, q, qs, k, ks, v, vs, &o, &lse2, &g, gs, scale, window);
        let (wq, wk, wv) = reference::causal_attention_backward(shape, q, qs, k, ks, v, vs, &g, gs, scale, window);
        (max_rel(&o, &wo), lse_err, [max_rel(&dq, &wq), max_rel(&dk, &wk), max_rel(&dv, &wv)])
    }

    #[test]
    fn forward_and_backward_match_the_f64_reference_on_strided_grouped_inputs() {
        // several query blocks and a partial one (seq 150 > 2 BR), one block exactly, a single
        // row; grouped-query heads; q, k, v as strided views of one fused projection
        for (ci, (batch, seq, nh, nkv, d)) in [(2usize, 150usize, 4usize, 2usize, 16usize), (1, 64, 2, 1, 8), (1, 1, 2, 2, 8), (1, 70, 3, 3, 32)].into_iter().enumerate() {
            let shape = AttnShape { batch, seq, n_heads: nh, n_kv_heads: nkv, head_dim: d };
            let (o, lse, [dq, dk, dv]) = errors(shape, 1 + ci as u64, None);
            assert!(o < 1e-5, "case {ci}: o {o}");
            assert!(lse < 1e-4, "case {ci}: lse2 {lse}");
            for (name, e) in [("dq", dq), ("dk", dk), ("dv", dv)] {
                assert!(e < 2e-5, "case {ci} {name}: max |fast - reference| / max |reference| = {e}");
            }
        }
    }

    #[test]
    fn a_sliding_window_matches_the_f64_reference() {
        // windows of 1 key, smaller than a block, one block, one more than a block, not a
        // multiple of it, seq - 1; blocks whose first rows' windows start inside the previous
        // block; grouped-query heads on strided views
        let gqa = |batch, seq, n_heads, n_kv_heads, head_dim| AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
        let cases = [
            (gqa(2, 150, 4, 2, 16), 1usize),
            (gqa(2, 150, 4, 2, 16), 5),
            (gqa(1, 150, 2, 1, 8), 64),
            (gqa(1, 150, 2, 1, 8), 65),
            (gqa(1, 200, 3, 1, 16), 100),
            (gqa(1, 150, 2, 2, 8), 149),
            (gqa(1, 70, 3, 3, 32), 7),
            (gqa(1, 64, 2, 1, 8), 63),
            (gqa(1, 2, 2, 1, 8), 1),
        ];
        for (ci, (shape, w)) in cases.into_iter().enumerate() {
            let (o, lse, [dq, dk, dv]) = errors(shape, 20 + ci as u64, Some(w));
            assert!(o < 1e-5, "case {ci} ({shape:?} window {w}): o {o}");
            assert!(lse < 1e-4, "case {ci} ({shape:?} window {w}): lse2 {lse}");
            for (name, e) in [("dq", dq), ("dk", dk), ("dv", dv)] {
                assert!(e < 2e-5, "case {ci} ({shape:?} window {w}) {name}: max |fast - reference| / max |reference| = {e}");
            }
        }
    }

    #[test]
    fn a_window_of_at_least_the_sequence_is_no_window_bit_for_bit() {
        let shape = AttnShape { batch: 2, seq: 150, n_heads: 4, n_kv_heads: 2, head_dim: 16 };
        let (qkv, [(qs, qo), (ks, ko), (vs, vo)]) = fused_views(shape, 9);
        let (q, k, v) = (&qkv[qo..], &qkv[ko..], &qkv[vo..]);
        let g = normal(2 * 150 * 4 * 16, 10, 1.0);
        let gs = Strides::contiguous(150, 4, 16);
        let run = |window| {
            let (o, l) = attention_lse(shape, q, qs, k, ks, v, vs, 0.3, window);
            let (dq, dk, dv) = attention_backward(shape, q, qs, k, ks, v, vs, &o, &l, &g, gs, 0.3, window);
            [o, l, dq, dk, dv].map(|x| x.into_iter().map(f32::to_bits).collect::<Vec<u32>>())
        };
        let plain = run(None);
        for w in [150, 151, 1 << 20, usize::MAX] {
            assert!(run(Some(w)) == plain, "window {w}");
        }
        // and a window shorter than the sequence changes the numbers
        assert!(run(Some(149)) != plain);
    }
}
