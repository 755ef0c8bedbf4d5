// Per-token cross-entropy in f32 over logits of any float type, streamed over the vocabulary.
//
// forward:  logits [b, s, vocab] (strides sb, ss in elements, vocab contiguous; row r = (r / s, r % s)),
//           targets [b * s] (u32)
//           -> loss[r] = lse[r] - logits[r, targets[r]] and lse[r] = log sum_v exp(logits[r, v]),
//           both f32. One pass per row with an online (max, sum) per thread, merged across the
//           block; nothing of size vocab is written. A target outside the vocabulary gives NaN
//           (the caller checks targets first). NaN logits give NaN.
// backward: dlogits[r, v] = (exp(logits[r, v] - lse[r]) - [v == targets[r]]) * dloss[r], in the
//           logits' type: the gradient of the loss with respect to the logits, never in f32.
// One block of 256 threads per row; rows read (and the gradient written) 16 bytes at a time
// where they are 16-byte aligned and the vocabulary a multiple of 16 bytes, else element-wise. CPU references: src/model/loss.rs (FusedTokenLoss) and
// src/cuda/reference.rs.
#include "compat.cuh"

#define RHO_CE_THREADS 256
#define RHO_LOG2E 1.4426950408889634f

// One logit into a thread's online log-sum-exp state (m, s): s * exp(m) = sum exp(e) so far.
// A NaN makes s NaN; -inf adds nothing.
RHO_DEVICE void rho_lse_push(float& m, float& s, float e) {
    if (e != e) {
        s = rho_nan();
    } else if (e > m) {
        s = s * rho_exp2((m - e) * RHO_LOG2E) + 1.f;
        m = e;
    } else if (e > -INFINITY) {
        s += rho_exp2((e - m) * RHO_LOG2E);
    }
}

template <typename T>
RHO_DEVICE void token_ce_fwd_impl(const T* __restrict__ logits, long long sb, long long ss, long long seq,
                                  const uint32_t* __restrict__ targets, float* __restrict__ loss,
                                  float* __restrict__ lse_out, long long vocab) {
    RHO_SHARED float wm[RHO_CE_THREADS / 32];
    RHO_SHARED float ws[RHO_CE_THREADS / 32];
    const long long row = rho_block_x();
    const int tid = rho_thread_x(), nt = rho_block_dim_x();
    const T* x = logits + (row / seq) * sb + (row % seq) * ss;
    float m = -INFINITY, s = 0.f;
    // 16-byte loads where the row allows (aligned, whole vectors): the loop keeps 16 bytes in
    // flight per thread instead of 2, which a streaming read needs to approach the bandwidth.
    constexpr int V = 16 / sizeof(T);
    if (rho_aligned16(x) && vocab % V == 0) {
        for (long long i = (long long)tid * V; i < vocab; i += (long long)nt * V) {
            float e[V];
            rho_load16<T>(x + i, e);
#pragma unroll
            for (int k = 0; k < V; k++) rho_lse_push(m, s, e[k]);
        }
    } else {
        for (long long i = tid; i < vocab; i += nt) rho_lse_push(m, s, rho_to_f32(x[i]));
    }
    for (int off = 16; off > 0; off >>= 1) {
        const float m2 = rho_shfl_xor(m, off), s2 = rho_shfl_xor(s, off);
        rho_lse_merge(m, s, m2, s2);
    }
    if (tid % 32 == 0) {
        wm[tid / 32] = m;
        ws[tid / 32] = s;
    }
    rho_sync_threads();
    if (tid < 32) {
        m = tid < nt / 32 ? wm[tid] : -INFINITY;
        s = tid < nt / 32 ? ws[tid] : 0.f;
        for (int off = 16; off > 0; off >>= 1) {
            const float m2 = rho_shfl_xor(m, off), s2 = rho_shfl_xor(s, off);
            rho_lse_merge(m, s, m2, s2);
        }
        if (tid == 0) {
            const float lse = m + rho_log(s);
            const uint32_t tg = targets[row];
            loss[row] = tg < vocab ? lse - rho_to_f32(x[tg]) : rho_nan();
            lse_out[row] = lse;
        }
    }
}

template <typename T>
RHO_DEVICE void token_ce_bwd_impl(const T* __restrict__ logits, long long sb, long long ss, long long seq,
                                  const uint32_t* __restrict__ targets, const float* __restrict__ lse,
                                  const float* __restrict__ dloss, T* __restrict__ dlogits,
                                  long long d_row_stride, long long vocab) {
    const long long row = rho_block_x();
    const T* x = logits + (row / seq) * sb + (row % seq) * ss;
    T* dx = dlogits + row * d_row_stride;
    const float l = lse[row], g = dloss[row];
    const long long tg = targets[row];
    constexpr int V = 16 / sizeof(T);
    if (rho_aligned16(x) && rho_aligned16(dx) && vocab % V == 0) {
        for (long long i = (long long)rho_thread_x() * V; i < vocab; i += (long long)rho_block_dim_x() * V) {
            float e[V];
            rho_load16<T>(x + i, e);
#pragma unroll
            for (int k = 0; k < V; k++) e[k] = (rho_exp2((e[k] - l) * RHO_LOG2E) - (i + k == tg ? 1.f : 0.f)) * g;
            rho_store16<T>(dx + i, e);
        }
    } else {
        for (long long i = rho_thread_x(); i < vocab; i += rho_block_dim_x()) {
            const float p = rho_exp2((rho_to_f32(x[i]) - l) * RHO_LOG2E);
            dx[i] = rho_from_f32<T>((p - (i == tg ? 1.f : 0.f)) * g);
        }
    }
}

#ifdef __CUDACC__
#define RHO_CE(SUFFIX, T)                                                                               \
    RHO_GLOBAL void __launch_bounds__(RHO_CE_THREADS)                                                   \
        token_ce_fwd_##SUFFIX(const T* logits, long long sb, long long ss, long long seq,               \
                              const uint32_t* targets, float* loss, float* lse, long long vocab) {     \
        token_ce_fwd_impl<T>(logits, sb, ss, seq, targets, loss, lse, vocab);                          \
    }                                                                                                   \
    RHO_GLOBAL void __launch_bounds__(RHO_CE_THREADS)                                                   \
        token_ce_bwd_##SUFFIX(const T* logits, long long sb, long long ss, long long seq,               \
                              const uint32_t* targets, const float* lse, const float* dloss, T* dlogits, \
                              long long d_row_stride, long long vocab) {                                \
        token_ce_bwd_impl<T>(logits, sb, ss, seq, targets, lse, dloss, dlogits, d_row_stride, vocab);  \
    }
RHO_CE(bf16, rho_bf16)
RHO_CE(f16, rho_f16)
RHO_CE(f32, float)
#endif
