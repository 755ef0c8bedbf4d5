// RMSNorm with its backward (training), rows of h elements, math in f32 whatever the storage
// type (f32, bf16, f16):
//
// forward:  y[r, j] = x[r, j] rs[r] w[j],  rs[r] = 1 / sqrt(sum_j x[r, j]^2 / h + eps)
//           one block per row.
// backward: dx[r, j] = rs dy[r, j] w[j] - x[r, j] rs^3 c[r] / h,  c[r] = sum_j dy[r, j] w[j] x[r, j]
//           dw[j] += sum_r dy[r, j] x[r, j] rs[r]   (f32, zeroed by the caller)
//           a grid-stride loop over rows; each block sums its rows' dw in shared memory
//           (h <= RHO_NORM_MAX_H) and adds it to dw once, atomically.
// x, dy, y, dx contiguous [rows, h]; w [h]. CPU reference: src/cuda/norm.rs (the same
// arithmetic as Rust loops), itself checked against candle's autograd of the composed ops.
// Rows are read and written 16 bytes at a time where the pointers are 16-byte aligned and h a
// whole number of vectors (h = 2048 in bf16: one vector per thread), element-wise otherwise.
#include "compat.cuh"

#define RHO_NORM_THREADS 256
#define RHO_NORM_MAX_H 8192

// Block-wide sums of two values (every thread gets them). RHO_NORM_THREADS threads.
RHO_DEVICE void rho_block_sum2(float& a, float& b) {
    RHO_SHARED float sa[RHO_NORM_THREADS / 32];
    RHO_SHARED float sb[RHO_NORM_THREADS / 32];
    const int tid = rho_thread_x();
    for (int off = 16; off > 0; off >>= 1) {
        a += rho_shfl_xor(a, off);
        b += rho_shfl_xor(b, off);
    }
    if (tid % 32 == 0) {
        sa[tid / 32] = a;
        sb[tid / 32] = b;
    }
    rho_sync_threads();
    a = 0.f;
    b = 0.f;
    for (int i = 0; i < RHO_NORM_THREADS / 32; i++) {
        a += sa[i];
        b += sb[i];
    }
    rho_sync_threads();  // sa, sb are reused by the next call
}

// The forward, x and w in TI, y in TO (T, T in training; float, the model's type for
// evaluation's f32 residual stream: rms_norm_cast below). Vectors of 16 bytes of TO, read as
// 16-byte loads of TI.
template <typename TI, typename TO>
RHO_DEVICE void rms_norm_impl(const TI* __restrict__ x, const TI* __restrict__ w, TO* __restrict__ y, long long h,
                              float eps) {
    const long long row = rho_block_x();
    const int tid = rho_thread_x();
    const TI* xr = x + row * h;
    TO* yr = y + row * h;
    constexpr int V = 16 / sizeof(TO), VI = 16 / sizeof(TI);  // 16-byte vectors where the rows and w allow
    const bool vec = rho_aligned16(xr) && rho_aligned16(yr) && rho_aligned16(w) && h % V == 0;
    float ss = rho_sum_sq_share(xr, h, tid, RHO_NORM_THREADS), unused = 0.f;
    rho_block_sum2(ss, unused);
    const float rs = 1.f / rho_sqrt(ss / (float)h + eps);
    if (vec) {
        for (long long c = tid; c < h / V; c += RHO_NORM_THREADS) {
            float e[V], g[V];
#pragma unroll
            for (int q = 0; q < V; q += VI) {
                rho_load16<TI>(xr + c * V + q, e + q);
                rho_load16<TI>(w + c * V + q, g + q);
            }
#pragma unroll
            for (int k = 0; k < V; k++) e[k] = e[k] * rs * g[k];
            rho_store16<TO>(yr + c * V, e);
        }
    } else {
        for (long long j = tid; j < h; j += RHO_NORM_THREADS) yr[j] = rho_from_f32<TO>(rho_to_f32(xr[j]) * rs * rho_to_f32(w[j]));
    }
}

template <typename T>
RHO_DEVICE void rms_norm_bwd_impl(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ dy,
                                  T* __restrict__ dx, float* __restrict__ dw, long long rows, long long h, float eps) {
    RHO_SHARED float dws[RHO_NORM_MAX_H];
    const int tid = rho_thread_x();
    constexpr int V = 16 / sizeof(T);
    // 16-byte vectors where every row start and w allow (h a whole number of vectors and
    // the bases aligned); the same choice for every row of the launch
    const bool vec = rho_aligned16(x) && rho_aligned16(dy) && rho_aligned16(dx) && rho_aligned16(w) && h % V == 0;
    for (long long j = tid; j < h; j += RHO_NORM_THREADS) dws[j] = 0.f;
    // dws is updated only after a row's rho_block_sum2, whose barriers order the zeroing
    // before it (the vector loop's columns of a thread are not its zeroing loop's)
    for (long long row = rho_block_x(); row < rows; row += rho_grid_dim_x()) {
        const T* xr = x + row * h;
        const T* gr = dy + row * h;
        T* dxr = dx + row * h;
        float ss = 0.f, c = 0.f;
        if (vec) {
            for (long long q = tid; q < h / V; q += RHO_NORM_THREADS) {
                float e[V], g[V], wk[V];
                rho_load16<T>(xr + q * V, e);
                rho_load16<T>(gr + q * V, g);
                rho_load16<T>(w + q * V, wk);
#pragma unroll
                for (int k = 0; k < V; k++) {
                    ss += e[k] * e[k];
                    c += g[k] * wk[k] * e[k];
                }
            }
        } else {
            for (long long j = tid; j < h; j += RHO_NORM_THREADS) {
                const float e = rho_to_f32(xr[j]);
                ss += e * e;
                c += rho_to_f32(gr[j]) * rho_to_f32(w[j]) * e;
            }
        }
        rho_block_sum2(ss, c);
        const float rs = 1.f / rho_sqrt(ss / (float)h + eps);
        const float k3 = rs * rs * rs * c / (float)h;
        if (vec) {
            for (long long q = tid; q < h / V; q += RHO_NORM_THREADS) {
                float e[V], g[V], wk[V];
                rho_load16<T>(xr + q * V, e);
                rho_load16<T>(gr + q * V, g);
                rho_load16<T>(w + q * V, wk);
#pragma unroll
                for (int k = 0; k < V; k++) {
                    dws[q * V + k] += g[k] * e[k] * rs;
                    e[k] = rs * g[k] * wk[k] - e[k] * k3;
                }
                rho_store16<T>(dxr + q * V, e);
            }
        } else {
            for (long long j = tid; j < h; j += RHO_NORM_THREADS) {
                const float e = rho_to_f32(xr[j]), g = rho_to_f32(gr[j]);
                dxr[j] = rho_from_f32<T>(rs * g * rho_to_f32(w[j]) - e * k3);
                dws[j] += g * e * rs;
            }
        }
    }
    rho_sync_threads();  // every column's sum is complete before any thread reads it
    for (long long j = tid; j < h; j += RHO_NORM_THREADS) rho_atomic_add(dw + j, dws[j]);
}

// Evaluation of a bf16 / f16 model with its residual stream in f32 (src/model/transformer.rs,
// `Transformer::residual`); forward only:
//
// rms_norm_cast: y[r, j] = T(x[r, j] rs[r] w[j]), x [rows, h] and w [h] in f32, y in the model's
//                type T: the norm's output rounded once, for the matmuls. One block per row
//                (rms_norm_impl<float, T>).
// residual_add:  out[i] = x[i] + d[i], x and out f32, d (a sublayer's output) in T: the exact
//                conversion of d, one f32 rounding. Grid-stride loop.
//
// Bytes per element: the norm reads 4 and writes 2, the add reads 6 and writes 4, where
// candle's ops (an f32 norm, then a cast; a cast of d, then an f32 add) move 12 and 18, in four
// launches instead of two. 16-byte vectors of T (8 halves = two f32 vectors) where every
// pointer is 16-byte aligned and h (n) a whole number of them, element by element otherwise.
// CPU reference: src/cuda/norm.rs (`rms_norm_cast`, `residual_add`: the same arithmetic as
// Rust loops).
template <typename T>
RHO_DEVICE void residual_add_impl(const float* __restrict__ x, const T* __restrict__ d, float* __restrict__ out,
                                  long long n) {
    const long long t0 = (long long)rho_block_x() * rho_block_dim_x() + rho_thread_x();
    const long long stride = (long long)rho_grid_dim_x() * rho_block_dim_x();
    constexpr int V = 16 / sizeof(T);
    if (rho_aligned16(x) && rho_aligned16(d) && rho_aligned16(out) && n % V == 0) {
        for (long long c = t0; c < n / V; c += stride) {
            float a[V], b[V];
            rho_load16<T>(d + c * V, b);
#pragma unroll
            for (int q = 0; q < V; q += 4) rho_load16<float>(x + c * V + q, a + q);
#pragma unroll
            for (int k = 0; k < V; k++) a[k] += b[k];
#pragma unroll
            for (int q = 0; q < V; q += 4) rho_store16<float>(out + c * V + q, a + q);
        }
        return;
    }
    for (long long i = t0; i < n; i += stride) out[i] = x[i] + rho_to_f32(d[i]);
}

#ifdef __CUDACC__
#define RHO_NORM(SUFFIX, T)                                                                                  \
    RHO_GLOBAL void __launch_bounds__(RHO_NORM_THREADS)                                                      \
        rms_norm_fwd_##SUFFIX(const T* x, const T* w, T* y, long long h, float eps) {                       \
        rms_norm_impl<T, T>(x, w, y, h, eps);                                                               \
    }                                                                                                        \
    RHO_GLOBAL void __launch_bounds__(RHO_NORM_THREADS)                                                      \
        rms_norm_bwd_##SUFFIX(const T* x, const T* w, const T* dy, T* dx, float* dw, long long rows,        \
                              long long h, float eps) {                                                      \
        rms_norm_bwd_impl<T>(x, w, dy, dx, dw, rows, h, eps);                                                \
    }
RHO_NORM(bf16, rho_bf16)
RHO_NORM(f16, rho_f16)
RHO_NORM(f32, float)
#define RHO_NORM_CAST(SUFFIX, T)                                                                             \
    RHO_GLOBAL void __launch_bounds__(RHO_NORM_THREADS)                                                      \
        rms_norm_cast_##SUFFIX(const float* x, const float* w, T* y, long long h, float eps) {              \
        rms_norm_impl<float, T>(x, w, y, h, eps);                                                              \
    }                                                                                                        \
    RHO_GLOBAL void __launch_bounds__(RHO_NORM_THREADS)                                                      \
        residual_add_##SUFFIX(const float* x, const T* d, float* out, long long n) {                        \
        residual_add_impl<T>(x, d, out, n);                                                                  \
    }
RHO_NORM_CAST(bf16, rho_bf16)
RHO_NORM_CAST(f16, rho_f16)
#endif
