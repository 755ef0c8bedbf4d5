// SwiGLU, the gated MLP's elementwise step (Llama, Mistral, Qwen2: down(silu(gate) * up)),
// as one pass forward and one backward instead of candle's silu, then mul (and about six
// passes of their gradients). Math in f32 whatever the storage type (f32, bf16, f16); each
// result rounded once.
//
// forward:  h[i] = silu(g[i]) u[i],  silu(x) = x sigma(x), sigma(x) = 1 / (1 + e^-x)
// backward: dg[i] = dh[i] u[i] sigma(g) (1 + g (1 - sigma(g))),  du[i] = dh[i] silu(g[i])
//           dg and du are the two halves of one output [2, n].
// g, u, dh, h contiguous with n elements. Grid-stride loops: any grid covers any n; 16 bytes
// per load and store when every pointer is 16-byte aligned and n a whole number of vectors.
// CPU reference: src/cuda/swiglu.rs (the same arithmetic as Rust loops), itself checked
// against candle's autograd of silu(g) * u.
#include "compat.cuh"

#define RHO_SWIGLU_THREADS 256

RHO_DEVICE float rho_sigmoid(float x) { return 1.f / (1.f + rho_exp2(-x * 1.4426950408889634f)); }

template <typename T>
RHO_DEVICE void swiglu_fwd_impl(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ h, long long n) {
    const long long t0 = (long long)rho_block_x() * rho_block_dim_x() + rho_thread_x();
    const long long stride = (long long)rho_grid_dim_x() * rho_block_dim_x();
    constexpr int V = 16 / sizeof(T);  // 16-byte vectors where every pointer allows
    if (rho_aligned16(g) && rho_aligned16(u) && rho_aligned16(h) && n % V == 0) {
        for (long long c = t0; c < n / V; c += stride) {
            float a[V], b[V];
            rho_load16<T>(g + c * V, a);
            rho_load16<T>(u + c * V, b);
#pragma unroll
            for (int k = 0; k < V; k++) a[k] = a[k] * rho_sigmoid(a[k]) * b[k];
            rho_store16<T>(h + c * V, a);
        }
        return;
    }
    for (long long i = t0; i < n; i += stride) {
        const float x = rho_to_f32(g[i]);
        h[i] = rho_from_f32<T>(x * rho_sigmoid(x) * rho_to_f32(u[i]));
    }
}

template <typename T>
RHO_DEVICE void swiglu_bwd_impl(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ dh,
                                T* __restrict__ dgu, long long n) {
    const long long t0 = (long long)rho_block_x() * rho_block_dim_x() + rho_thread_x();
    const long long stride = (long long)rho_grid_dim_x() * rho_block_dim_x();
    constexpr int V = 16 / sizeof(T);
    if (rho_aligned16(g) && rho_aligned16(u) && rho_aligned16(dh) && rho_aligned16(dgu) && n % V == 0) {
        for (long long c = t0; c < n / V; c += stride) {
            float x[V], y[V], d[V], dg[V];
            rho_load16<T>(g + c * V, x);
            rho_load16<T>(u + c * V, y);
            rho_load16<T>(dh + c * V, d);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const float s = rho_sigmoid(x[k]);
                dg[k] = d[k] * y[k] * s * (1.f + x[k] * (1.f - s));
                y[k] = d[k] * x[k] * s;  // du
            }
            rho_store16<T>(dgu + c * V, dg);
            rho_store16<T>(dgu + n + c * V, y);
        }
        return;
    }
    for (long long i = t0; i < n; i += stride) {
        const float x = rho_to_f32(g[i]), d = rho_to_f32(dh[i]);
        const float s = rho_sigmoid(x);
        dgu[i] = rho_from_f32<T>(d * rho_to_f32(u[i]) * s * (1.f + x * (1.f - s)));
        dgu[n + i] = rho_from_f32<T>(d * x * s);
    }
}

#ifdef __CUDACC__
#define RHO_SWIGLU(SUFFIX, T)                                                                                 \
    RHO_GLOBAL void __launch_bounds__(RHO_SWIGLU_THREADS)                                                     \
        swiglu_fwd_##SUFFIX(const T* g, const T* u, T* h, long long n) {                                      \
        swiglu_fwd_impl<T>(g, u, h, n);                                                                       \
    }                                                                                                         \
    RHO_GLOBAL void __launch_bounds__(RHO_SWIGLU_THREADS)                                                     \
        swiglu_bwd_##SUFFIX(const T* g, const T* u, const T* dh, T* dgu, long long n) {                       \
        swiglu_bwd_impl<T>(g, u, dh, dgu, n);                                                                 \
    }
RHO_SWIGLU(bf16, rho_bf16)
RHO_SWIGLU(f16, rho_f16)
RHO_SWIGLU(f32, float)
#endif
