// The optimizer's elementwise work (training): AdamW as torch.optim.AdamW computes it, and the
// squared L2 norm of a gradient for global-norm clipping. Math in f32 whatever the storage type
// (f32, bf16, f16); one pass over each tensor, in place.
//
// adam_moment: state[i] = beta state[i] + (1 - beta) f(grad[i] gscale), f(x) = x (first moment)
//              or x^2 (second moment).                     reads grad, state; writes state
// adam_apply:  w[i] = w[i] decay - step m[i] / (sqrt(v[i]) inv_sqrt_bc2 + eps), with
//              decay = 1 - lr wd, step = lr / (1 - beta1^t), inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t).
//                                                          reads w, m, v; writes w
// sum_sq:      out[0] += sum_i x[i]^2 (f32; out zeroed by the caller; blocks add atomically).
//
// Grid-stride loops: any grid size covers any n; 16 bytes per load and store where every pointer
// is 16-byte aligned and n a whole number of vectors (else element by element). CPU references: src/cuda/optim.rs (the same
// update as Rust loops) and train::optim::AdamW::step_composed (one candle op per term).
#include "compat.cuh"

#define RHO_OPT_THREADS 256

template <typename T>
RHO_DEVICE void adam_moment_impl(T* __restrict__ state, const T* __restrict__ grad, long long n, float beta,
                                 float gscale, int square) {
    const long long t0 = (long long)rho_block_x() * rho_block_dim_x() + rho_thread_x();
    const long long stride = (long long)rho_grid_dim_x() * rho_block_dim_x();
    constexpr int V = 16 / sizeof(T);  // 16-byte vectors where the pointers and n allow
    if (rho_aligned16(state) && rho_aligned16(grad) && n % V == 0) {
        for (long long c = t0; c < n / V; c += stride) {
            float st[V], g[V];
            rho_load16<T>(state + c * V, st);
            rho_load16<T>(grad + c * V, g);
#pragma unroll
            for (int k = 0; k < V; k++) {
                float x = g[k] * gscale;
                if (square) x *= x;
                st[k] = beta * st[k] + (1.f - beta) * x;
            }
            rho_store16<T>(state + c * V, st);
        }
        return;
    }
    for (long long i = t0; i < n; i += stride) {
        float g = rho_to_f32(grad[i]) * gscale;
        if (square) g *= g;
        state[i] = rho_from_f32<T>(beta * rho_to_f32(state[i]) + (1.f - beta) * g);
    }
}

template <typename T>
RHO_DEVICE void adam_apply_impl(T* __restrict__ w, const T* __restrict__ m, const T* __restrict__ v, long long n,
                                float decay, float step, float inv_sqrt_bc2, float eps) {
    const long long t0 = (long long)rho_block_x() * rho_block_dim_x() + rho_thread_x();
    const long long stride = (long long)rho_grid_dim_x() * rho_block_dim_x();
    constexpr int V = 16 / sizeof(T);
    if (rho_aligned16(w) && rho_aligned16(m) && rho_aligned16(v) && n % V == 0) {
        for (long long c = t0; c < n / V; c += stride) {
            float wk[V], mk[V], vk[V];
            rho_load16<T>(w + c * V, wk);
            rho_load16<T>(m + c * V, mk);
            rho_load16<T>(v + c * V, vk);
#pragma unroll
            for (int k = 0; k < V; k++) wk[k] = wk[k] * decay - rho_div_rn(step * mk[k], rho_sqrt_rn(vk[k]) * inv_sqrt_bc2 + eps);
            rho_store16<T>(w + c * V, wk);
        }
        return;
    }
    for (long long i = t0; i < n; i += stride) {
        const float denom = rho_sqrt_rn(rho_to_f32(v[i])) * inv_sqrt_bc2 + eps;
        w[i] = rho_from_f32<T>(rho_to_f32(w[i]) * decay - rho_div_rn(step * rho_to_f32(m[i]), denom));
    }
}

template <typename T>
RHO_DEVICE void sum_sq_impl(const T* __restrict__ x, long long n, float* __restrict__ out) {
    RHO_SHARED float part[RHO_OPT_THREADS / 32];
    const int tid = rho_thread_x();
    const long long t0 = (long long)rho_block_x() * rho_block_dim_x() + tid;
    const long long stride = (long long)rho_grid_dim_x() * rho_block_dim_x();
    float s = rho_sum_sq_share(x, n, t0, stride);
    for (int off = 16; off > 0; off >>= 1) s += rho_shfl_xor(s, off);
    if (tid % 32 == 0) part[tid / 32] = s;
    rho_sync_threads();
    if (tid < 32) {
        s = tid < rho_block_dim_x() / 32 ? part[tid] : 0.f;
        for (int off = 16; off > 0; off >>= 1) s += rho_shfl_xor(s, off);
        if (tid == 0) rho_atomic_add(out, s);
    }
}

#ifdef __CUDACC__
#define RHO_OPT(SUFFIX, T)                                                                                   \
    RHO_GLOBAL void __launch_bounds__(RHO_OPT_THREADS)                                                       \
        adam_moment_##SUFFIX(T* state, const T* grad, long long n, float beta, float gscale, int square) {  \
        adam_moment_impl<T>(state, grad, n, beta, gscale, square);                                           \
    }                                                                                                        \
    RHO_GLOBAL void __launch_bounds__(RHO_OPT_THREADS)                                                       \
        adam_apply_##SUFFIX(T* w, const T* m, const T* v, long long n, float decay, float step,             \
                            float inv_sqrt_bc2, float eps) {                                                 \
        adam_apply_impl<T>(w, m, v, n, decay, step, inv_sqrt_bc2, eps);                                      \
    }                                                                                                        \
    RHO_GLOBAL void __launch_bounds__(RHO_OPT_THREADS) sum_sq_##SUFFIX(const T* x, long long n, float* out) { \
        sum_sq_impl<T>(x, n, out);                                                                           \
    }
RHO_OPT(bf16, rho_bf16)
RHO_OPT(f16, rho_f16)
RHO_OPT(f32, float)
#endif
