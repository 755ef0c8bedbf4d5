// A CPU emulator for the CUDA subset in ../kernels/compat.cuh, so that rho's kernels are
// tested without a GPU (`cargo test`; src/cuda/emu.rs is the Rust side).
//
// A launch runs the grid's blocks one after another. Within a block, every CUDA thread is a
// fiber (ucontext) on one OS thread, scheduled round robin; `__syncthreads` and the warp
// collectives (shuffle, mma.sync) are barriers at which a fiber yields until every
// participant has arrived. A round in which no fiber makes progress is a deadlock (a
// barrier some threads never reach, undefined behaviour on a GPU) and aborts.
// Shared memory is `static` storage: one block runs at a time, and the Rust side holds a
// lock around every launch. Kernels must not rely on shared memory being initialised.
//
// Schedules (set_schedule): the order in which a round runs the fibers (forward, reverse, or
// a fresh random permutation every round), whether they take turns one yield at a time or a
// warp at a time (each warp running until its lanes reach __syncthreads, the last one on past
// it), and when a cp.async copy lands (at once, or as late as the PTX rules allow: at the
// issuing thread's cp.async.wait_group that covers it). A
// kernel whose result depends on the schedule has a race: a read not ordered after the write
// by a barrier, or a cp.async read before its wait (tests/kernels.rs runs every kernel under
// several schedules and requires the same bits).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <functional>

#define RHO_DEVICE static inline
#define RHO_SHARED alignas(16) static
#ifndef __restrict__
#define __restrict__ __restrict
#endif

struct rho_bf16 { uint16_t bits; };
struct rho_f16 { uint16_t bits; };

namespace emu {
// Run `body` once per CUDA thread: grid (gx, gy, gz) of blocks of `block` threads (a multiple of 32).
void launch(unsigned gx, unsigned gy, unsigned gz, unsigned block, const std::function<void()>& body);
int thread_x();
int block_x();
int block_y();
int block_z();
int block_dim_x();
int grid_dim_x();
void sync_block();
// Warp collectives: every lane of the warp must call them in the same order.
uint32_t warp_exchange(uint32_t v, int src_lane);
void warp_mma16816(float* d, const uint32_t* a, const uint32_t* b, bool bf16);
void warp_ldmatrix(uint32_t* r, const void* row, bool trans, int n_matrices);
// cp.async of 16 bytes (zeros when !pred), commit_group, wait_group n.
void cp_async16(void* dst, const void* src, bool pred);
void cp_async_commit();
void cp_async_wait(int n);
// order: 0 forward, 1 reverse, 2 shuffled (seed); cp_async_at_wait: 0 copy at issue, 1 at the
// wait; warp_at_a_time: 0 every thread in turn runs to its next yield, 1 one warp at a time
// runs until its lanes reach __syncthreads.
void set_schedule(int order, uint64_t seed, int cp_async_at_wait, int warp_at_a_time);

inline float bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, like __float2bfloat16_rn
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
// IEEE binary16 by bit manipulation (no compiler support for _Float16 needed).
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in f32
        float v = (float)m * (1.0f / 16777216.0f);
        std::memcpy(&x, &v, 4);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);  // inf, NaN (payload kept)
    } else {
        x = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline uint16_t f32_to_f16(float f) {  // round to nearest even, like __float2half_rn
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN stays NaN
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax < 0x38800000u) {  // below 2^-14: a multiple of 2^-24, rounded half to even
        float v;
        std::memcpy(&v, &ax, 4);
        const float r = v * 16777216.0f;  // exact: scaling by a power of two
        const float fl = std::floor(r);
        uint32_t m = (uint32_t)fl;
        const float rest = r - fl;
        if (rest > 0.5f || (rest == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);  // m = 1024 is the smallest normal, encoded right
    }
    uint32_t h = ax - 0x38000000u;  // rebias the exponent from 127 to 15
    h += 0xfffu + ((h >> 13) & 1u);  // round the 13 dropped bits, ties to even
    return (uint16_t)(sign | (h >> 13));
}
}  // namespace emu

RHO_DEVICE float rho_to_f32(rho_bf16 x) { return emu::bf16_to_f32(x.bits); }
RHO_DEVICE float rho_to_f32(rho_f16 x) { return emu::f16_to_f32(x.bits); }
RHO_DEVICE float rho_to_f32(float x) { return x; }
template <typename T> RHO_DEVICE T rho_from_f32(float x);
template <> inline rho_bf16 rho_from_f32<rho_bf16>(float x) { return rho_bf16{emu::f32_to_bf16(x)}; }
template <> inline rho_f16 rho_from_f32<rho_f16>(float x) { return rho_f16{emu::f32_to_f16(x)}; }
template <> inline float rho_from_f32<float>(float x) { return x; }
template <typename T> RHO_DEVICE uint32_t rho_pack2(float lo, float hi);
template <> inline uint32_t rho_pack2<rho_bf16>(float lo, float hi) {
    return (uint32_t)emu::f32_to_bf16(lo) | ((uint32_t)emu::f32_to_bf16(hi) << 16);
}
template <> inline uint32_t rho_pack2<rho_f16>(float lo, float hi) {
    return (uint32_t)emu::f32_to_f16(lo) | ((uint32_t)emu::f32_to_f16(hi) << 16);
}
RHO_DEVICE uint32_t rho_pack_u16(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }
template <typename T> RHO_DEVICE uint16_t rho_bits(const T* p, long long i) { return p[i].bits; }
template <typename T> RHO_DEVICE uint32_t rho_load_u32(const T* p) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    return w;
}
template <typename T> RHO_DEVICE void rho_store_u32(T* p, uint32_t w) { std::memcpy(p, &w, 4); }

RHO_DEVICE void rho_sync_threads() { emu::sync_block(); }
RHO_DEVICE float rho_shfl_xor(float v, int mask) {
    uint32_t x;
    std::memcpy(&x, &v, 4);
    x = emu::warp_exchange(x, (emu::thread_x() % 32) ^ mask);
    float r;
    std::memcpy(&r, &x, 4);
    return r;
}
RHO_DEVICE int rho_thread_x() { return emu::thread_x(); }
RHO_DEVICE int rho_block_x() { return emu::block_x(); }
RHO_DEVICE int rho_block_y() { return emu::block_y(); }
RHO_DEVICE int rho_block_z() { return emu::block_z(); }
RHO_DEVICE int rho_block_dim_x() { return emu::block_dim_x(); }
RHO_DEVICE int rho_grid_dim_x() { return emu::grid_dim_x(); }
RHO_DEVICE float rho_exp2(float x) { return std::exp2(x); }
RHO_DEVICE float rho_log(float x) { return std::log(x); }
RHO_DEVICE float rho_log2(float x) { return std::log2(x); }
RHO_DEVICE float rho_sqrt(float x) { return std::sqrt(x); }
RHO_DEVICE float rho_div_rn(float a, float b) { return a / b; }
RHO_DEVICE float rho_sqrt_rn(float x) { return std::sqrt(x); }
RHO_DEVICE void rho_atomic_add(float* p, float x) { *p += x; }  // one fiber runs at a time
RHO_DEVICE float rho_nan() { return NAN; }
template <typename T> RHO_DEVICE void rho_mma16816(float* d, const uint32_t* a, const uint32_t* b);
template <> inline void rho_mma16816<rho_bf16>(float* d, const uint32_t* a, const uint32_t* b) {
    emu::warp_mma16816(d, a, b, true);
}
template <> inline void rho_mma16816<rho_f16>(float* d, const uint32_t* a, const uint32_t* b) {
    emu::warp_mma16816(d, a, b, false);
}
template <typename T> RHO_DEVICE void rho_ldmatrix_x4(uint32_t* r, const T* row) { emu::warp_ldmatrix(r, row, false, 4); }
template <typename T> RHO_DEVICE void rho_ldmatrix_x2(uint32_t* r, const T* row) { emu::warp_ldmatrix(r, row, false, 2); }
template <typename T> RHO_DEVICE void rho_ldmatrix_x4_trans(uint32_t* r, const T* row) { emu::warp_ldmatrix(r, row, true, 4); }
// cp.async: the copy lands at issue or at the issuing thread's covering wait (the schedule's choice).
template <typename T> RHO_DEVICE void rho_cp_async16(T* dst, const T* src, bool pred) {
    emu::cp_async16((void*)dst, (const void*)src, pred);
}
RHO_DEVICE void rho_cp_async_commit() { emu::cp_async_commit(); }
template <int N> RHO_DEVICE void rho_cp_async_wait() { emu::cp_async_wait(N); }
// 16-byte vector load / store (16-byte aligned, like the hardware's; checked).
inline void rho_check_aligned16(const void* p, const char* what) {
    if ((reinterpret_cast<uintptr_t>(p) & 15) != 0) {
        std::fprintf(stderr, "emu: %s address %p is not 16-byte aligned\n", what, p);
        std::abort();
    }
}
template <typename T> RHO_DEVICE void rho_load16(const T* p, float* out) {
    rho_check_aligned16(p, "16-byte load");
    T v[16 / sizeof(T)];
    std::memcpy(v, p, 16);
    for (unsigned i = 0; i < 16 / sizeof(T); i++) out[i] = rho_to_f32(v[i]);
}
template <typename T> RHO_DEVICE void rho_store16(T* p, const float* v) {
    rho_check_aligned16(p, "16-byte store");
    T t[16 / sizeof(T)];
    for (unsigned i = 0; i < 16 / sizeof(T); i++) t[i] = rho_from_f32<T>(v[i]);
    std::memcpy(p, t, 16);
}
