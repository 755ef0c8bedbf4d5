// Rotary position embedding (rotate-half convention: Llama, GPT-NeoX, Mistral, Qwen2) on x
// [b, s, heads, d] in the layout the projections produce (any strides for batch, position and
// head; the head dim contiguous), written contiguous; forward and backward are one kernel:
//
//   for j < r = rotary_dim / 2 (cos, sin: [s, r] tables at the row's position p):
//     y[j]     = x[j] cos[p, j] - sign x[j + r] sin[p, j]
//     y[j + r] = x[j + r] cos[p, j] + sign x[j] sin[p, j]
//   y[j] = x[j] for rotary_dim <= j < d (partial rotary: GPT-NeoX / Pythia)
//
// sign = 1: the forward; sign = -1: the backward (the transposed rotation, dx = R^T dy).
// One thread per output element, a grid-stride loop; math in f32, one rounding.
// CPU reference: src/cuda/rope.rs (the same arithmetic), checked against candle-nn's rope.
#include "compat.cuh"

#define RHO_ROPE_THREADS 256

template <typename T>
RHO_DEVICE void rope_impl(const T* __restrict__ x, long long sb, long long ss, long long sh, const T* __restrict__ cos,
                          const T* __restrict__ sin, T* __restrict__ y, int seq, int heads, int d, int rot, float sign,
                          int n) {
    // 32-bit index arithmetic (n < 2^31, checked by the launcher): 64-bit division is slow on a GPU
    const int r = rot / 2;
    const int stride = rho_grid_dim_x() * rho_block_dim_x();
    for (int i = rho_block_x() * rho_block_dim_x() + rho_thread_x(); i < n; i += stride) {
        const int j = i % d, row = i / d, hh = row % heads, p = (row / heads) % seq, b = row / (heads * seq);
        const T* xr = x + b * sb + p * ss + hh * sh;
        float v;
        if (j < r) {
            const float c = rho_to_f32(cos[p * r + j]), sn = rho_to_f32(sin[p * r + j]);
            v = rho_to_f32(xr[j]) * c - sign * rho_to_f32(xr[j + r]) * sn;
        } else if (j < rot) {
            const float c = rho_to_f32(cos[p * r + j - r]), sn = rho_to_f32(sin[p * r + j - r]);
            v = rho_to_f32(xr[j]) * c + sign * rho_to_f32(xr[j - r]) * sn;
        } else {
            v = rho_to_f32(xr[j]);
        }
        y[i] = rho_from_f32<T>(v);
    }
}

#ifdef __CUDACC__
#define RHO_ROPE(SUFFIX, T)                                                                                    \
    RHO_GLOBAL void __launch_bounds__(RHO_ROPE_THREADS)                                                        \
        rope_##SUFFIX(const T* x, long long sb, long long ss, long long sh, const T* cos, const T* sin, T* y,  \
                      int seq, int heads, int d, int rot, float sign, int n) {                                 \
        rope_impl<T>(x, sb, ss, sh, cos, sin, y, seq, heads, d, rot, sign, n);                                 \
    }
RHO_ROPE(bf16, rho_bf16)
RHO_ROPE(f16, rho_f16)
RHO_ROPE(f32, float)
#endif
