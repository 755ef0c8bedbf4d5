// The few device primitives rho's kernels use, in two implementations:
//   * nvcc (__CUDACC__): the real intrinsics and PTX (mma.sync, shuffles, bf16/f16 types);
//   * anything else: the CPU emulator in ../emu/emu.h, which runs every CUDA thread of a
//     block as a fiber, so that the same kernel source is tested by `cargo test` on a
//     machine without a GPU (src/cuda/emu.rs).
// Kernels use only what is here: no other intrinsic, no dynamic shared memory.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define RHO_DEVICE __device__ __forceinline__
#define RHO_GLOBAL extern "C" __global__
#define RHO_SHARED __shared__ __align__(16)

typedef __nv_bfloat16 rho_bf16;
typedef __half rho_f16;

RHO_DEVICE float rho_to_f32(rho_bf16 x) { return __bfloat162float(x); }
RHO_DEVICE float rho_to_f32(rho_f16 x) { return __half2float(x); }
RHO_DEVICE float rho_to_f32(float x) { return x; }

// Two floats -> one 32-bit word of two 16-bit values (the first in the low half), round to nearest.
template <typename T> RHO_DEVICE uint32_t rho_pack2(float lo, float hi);
template <> RHO_DEVICE uint32_t rho_pack2<rho_bf16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
template <> RHO_DEVICE uint32_t rho_pack2<rho_f16>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
// Two 16-bit values (a, b) -> one word, a in the low half.
RHO_DEVICE uint32_t rho_pack_u16(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }
template <typename T> RHO_DEVICE T rho_from_f32(float x);
template <> RHO_DEVICE rho_bf16 rho_from_f32<rho_bf16>(float x) { return __float2bfloat16_rn(x); }
template <> RHO_DEVICE rho_f16 rho_from_f32<rho_f16>(float x) { return __float2half_rn(x); }
template <> RHO_DEVICE float rho_from_f32<float>(float x) { return x; }
// The raw 16 bits of element i.
template <typename T> RHO_DEVICE uint16_t rho_bits(const T* p, long long i) {
    return reinterpret_cast<const uint16_t*>(p)[i];
}
// 32-bit load/store of two adjacent 16-bit elements (p 4-byte aligned).
template <typename T> RHO_DEVICE uint32_t rho_load_u32(const T* p) { return *reinterpret_cast<const uint32_t*>(p); }
template <typename T> RHO_DEVICE void rho_store_u32(T* p, uint32_t w) { *reinterpret_cast<uint32_t*>(p) = w; }

RHO_DEVICE void rho_sync_threads() { __syncthreads(); }
RHO_DEVICE float rho_shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
RHO_DEVICE int rho_thread_x() { return threadIdx.x; }
RHO_DEVICE int rho_block_x() { return blockIdx.x; }
RHO_DEVICE int rho_block_y() { return blockIdx.y; }
RHO_DEVICE int rho_block_z() { return blockIdx.z; }
RHO_DEVICE int rho_block_dim_x() { return blockDim.x; }
RHO_DEVICE int rho_grid_dim_x() { return gridDim.x; }
RHO_DEVICE float rho_exp2(float x) { return exp2f(x); }
RHO_DEVICE float rho_log(float x) { return logf(x); }
RHO_DEVICE float rho_log2(float x) { return log2f(x); }
RHO_DEVICE float rho_sqrt(float x) { return sqrtf(x); }
// IEEE round-to-nearest division and square root whatever --use_fast_math says (the optimizer:
// its f32 update as exact as PyTorch's; fast math's approximations measured 5 ulp on the H200)
RHO_DEVICE float rho_div_rn(float a, float b) { return __fdiv_rn(a, b); }
RHO_DEVICE float rho_sqrt_rn(float x) { return __fsqrt_rn(x); }
RHO_DEVICE void rho_atomic_add(float* p, float x) { atomicAdd(p, x); }
RHO_DEVICE float rho_nan() { return __int_as_float(0x7fc00000); }

// D[16x8] += A[16x16] * B[16x8], A row-major, B column-major, f32 accumulators.
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"),
// with g = lane / 4 and t = lane % 4:
//   A: a[0] = (row g,   cols 2t, 2t+1)   a[1] = (row g+8, cols 2t, 2t+1)
//      a[2] = (row g,   cols 2t+8, +9)   a[3] = (row g+8, cols 2t+8, +9)
//   B: b[0] = (rows k = 2t, 2t+1; col g)  b[1] = (rows 2t+8, 2t+9; col g)
//   C: c[0], c[1] = (row g, cols 2t, 2t+1)   c[2], c[3] = (row g+8, cols 2t, 2t+1)
template <typename T> RHO_DEVICE void rho_mma16816(float* d, const uint32_t* a, const uint32_t* b);
template <> RHO_DEVICE void rho_mma16816<rho_bf16>(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> RHO_DEVICE void rho_mma16816<rho_f16>(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8x8 matrices of 16-bit elements from shared memory (ldmatrix .x4): lane L gives the
// address of row L % 8 of matrix L / 8 (16 bytes, 16-byte aligned). Lane l receives r[i] =
// (M_i[l / 4][2 (l % 4)], M_i[l / 4][2 (l % 4) + 1]), or with trans
// (M_i[2 (l % 4)][l / 4], M_i[2 (l % 4) + 1][l / 4]): exactly an mma B fragment of K (plain) or
// of V (trans) stored row-major.
template <typename T> RHO_DEVICE void rho_ldmatrix_x4(uint32_t* r, const T* row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
// Two matrices (lanes 0-15 give the rows; the other lanes' addresses are not read).
template <typename T> RHO_DEVICE void rho_ldmatrix_x2(uint32_t* r, const T* row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
template <typename T> RHO_DEVICE void rho_ldmatrix_x4_trans(uint32_t* r, const T* row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
// 16 bytes global -> shared without registers (cp.async, sm_80+); zero-filled when !pred
// (src must still be a valid address). Completion: commit, then wait until at most N newer
// groups are pending, then __syncthreads before other threads read.
template <typename T> RHO_DEVICE void rho_cp_async16(T* dst, const T* src, bool pred) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(pred ? 16 : 0));
}
RHO_DEVICE void rho_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> RHO_DEVICE void rho_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// 16 bytes at p (16-byte aligned) as 16 / sizeof(T) floats: one vector load, so that a
// streaming kernel keeps enough bytes in flight per thread.
template <typename T> RHO_DEVICE void rho_load16(const T* p, float* out);
template <> RHO_DEVICE void rho_load16<float>(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}
template <> RHO_DEVICE void rho_load16<rho_bf16>(const rho_bf16* p, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <> RHO_DEVICE void rho_load16<rho_f16>(const rho_f16* p, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}
// 16 / sizeof(T) floats rounded to T (nearest even), one 16-byte store at p (16-byte aligned).
template <typename T> RHO_DEVICE void rho_store16(T* p, const float* v);
template <> RHO_DEVICE void rho_store16<float>(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
template <> RHO_DEVICE void rho_store16<rho_bf16>(rho_bf16* p, const float* v) {
    *reinterpret_cast<uint4*>(p) = make_uint4(rho_pack2<rho_bf16>(v[0], v[1]), rho_pack2<rho_bf16>(v[2], v[3]),
                                              rho_pack2<rho_bf16>(v[4], v[5]), rho_pack2<rho_bf16>(v[6], v[7]));
}
template <> RHO_DEVICE void rho_store16<rho_f16>(rho_f16* p, const float* v) {
    *reinterpret_cast<uint4*>(p) = make_uint4(rho_pack2<rho_f16>(v[0], v[1]), rho_pack2<rho_f16>(v[2], v[3]),
                                              rho_pack2<rho_f16>(v[4], v[5]), rho_pack2<rho_f16>(v[6], v[7]));
}

#else
#include "../emu/emu.h"
#endif

// Whether p may be read or written 16 bytes at a time (rho_load16 / rho_store16).
RHO_DEVICE bool rho_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// sum of x[i]^2 (f32) over one thread's share of n elements: i = t0, t0 + stride, ... in
// 16-byte vectors where x is 16-byte aligned and n a whole number of them, else element-wise.
// (RMSNorm's rows and the optimizer's gradient norm.)
template <typename T>
RHO_DEVICE float rho_sum_sq_share(const T* __restrict__ x, long long n, long long t0, long long stride) {
    constexpr int V = 16 / sizeof(T);
    float s = 0.f;
    if (rho_aligned16(x) && n % V == 0) {
        for (long long c = t0; c < n / V; c += stride) {
            float e[V];
            rho_load16<T>(x + c * V, e);
#pragma unroll
            for (int k = 0; k < V; k++) s += e[k] * e[k];
        }
    } else {
        for (long long i = t0; i < n; i += stride) {
            const float e = rho_to_f32(x[i]);
            s += e * e;
        }
    }
    return s;
}

// Two adjacent 16x8 C fragments (columns 0-7 and 8-15 of a 16x16 block, f32) as one A
// fragment of the input type: the C layout of m16n8 is the A layout of m16n8k16 split in two.
template <typename T> RHO_DEVICE void rho_c_to_a(uint32_t* a, const float* c0, const float* c1) {
    a[0] = rho_pack2<T>(c0[0], c0[1]);
    a[1] = rho_pack2<T>(c0[2], c0[3]);
    a[2] = rho_pack2<T>(c1[0], c1[1]);
    a[3] = rho_pack2<T>(c1[2], c1[3]);
}

// Online log-sum-exp state (m, s) meaning s * exp(m); merging two is associative.
RHO_DEVICE void rho_lse_merge(float& m, float& s, float m2, float s2) {
    float mx = m > m2 ? m : m2;
    if (mx == -INFINITY) return;  // both empty
    s = s * rho_exp2((m - mx) * 1.4426950408889634f) + s2 * rho_exp2((m2 - mx) * 1.4426950408889634f);
    m = mx;
}
