// extern "C" entry points that run rho's CUDA kernels in the CPU emulator (emu.h), with the
// same grid and block shapes as the Rust launchers in src/cuda/ops.rs. Called by
// src/cuda/emu.rs. dtype: 0 bf16, 1 f16, 2 f32. Returns 0, or 1 for an unsupported case.
#include "../kernels/attention.cu"
#include "../kernels/token_ce.cu"
#include "../kernels/optim.cu"
#include "../kernels/norm.cu"
#include "../kernels/swiglu.cu"
#include "../kernels/rope.cu"

// Run CALL with T the element type of `DT` (0 bf16, 1 f16, 2 f32); return 1 from the entry
// point for any other.
#define RHO_EMU_DISPATCH(DT, CALL)                            \
    if (DT == 0) { typedef rho_bf16 T; CALL; }                \
    else if (DT == 1) { typedef rho_f16 T; CALL; }            \
    else if (DT == 2) { typedef float T; CALL; }              \
    else return 1;

template <typename T, int D, int BC, int NW, bool LSE>
static void flash(const void* q, const void* k, const void* v, void* o, const long long* st, int batch,
                  int n_heads, int n_kv_heads, int seq, float scale_log2, float* lse2, int window) {
    const unsigned tiles = (unsigned)((seq + 16 * NW - 1) / (16 * NW));
    emu::launch(tiles, (unsigned)n_heads, (unsigned)batch, 32 * NW, [&] {
        flash_attn_fwd_impl<T, D, BC, NW, LSE>((const T*)q, (const T*)k, (const T*)v, (T*)o, st[0], st[1], st[2], st[3],
                                  st[4], st[5], st[6], st[7], st[8], st[9], st[10], st[11], n_heads,
                                  n_kv_heads, seq, scale_log2, lse2, window);
    });
}

// The configurations compiled for the GPU (attention.cu's RHO_FLASH lines): head dim 64 with
// 64-key tiles and 4 or 8 warps; 32 and 80 with 64-key tiles, 128 with 32, 256 with 16; 4 warps.
// window: the kernel's (0: none).
extern "C" int rho_emu_flash_attn_fwd(int dtype, int head_dim, int warps, const void* q, const void* k,
                                      const void* v, void* o, const long long* strides12, int batch,
                                      int n_heads, int n_kv_heads, int seq, float scale_log2, float* lse2,
                                      int window) {
    if (seq <= 0) return 0;
#define RHO_EMU_FLASH(DT, T, D, BC, NW)                                                                      \
    if (dtype == DT && head_dim == D && warps == NW) {                                                   \
        if (lse2 != nullptr)                                                                             \
            flash<T, D, BC, NW, true>(q, k, v, o, strides12, batch, n_heads, n_kv_heads, seq, scale_log2, lse2, window); \
        else                                                                                             \
            flash<T, D, BC, NW, false>(q, k, v, o, strides12, batch, n_heads, n_kv_heads, seq, scale_log2, lse2, window); \
        return 0;                                                                                        \
    }
    RHO_EMU_FLASH(0, rho_bf16, 64, 64, 4)
    RHO_EMU_FLASH(0, rho_bf16, 64, 64, 8)
    RHO_EMU_FLASH(0, rho_bf16, 128, 32, 4)
    RHO_EMU_FLASH(1, rho_f16, 64, 64, 4)
    RHO_EMU_FLASH(1, rho_f16, 64, 64, 8)
    RHO_EMU_FLASH(1, rho_f16, 128, 32, 4)
    RHO_EMU_FLASH(0, rho_bf16, 32, 64, 4)
    RHO_EMU_FLASH(1, rho_f16, 32, 64, 4)
    RHO_EMU_FLASH(0, rho_bf16, 80, 64, 4)
    RHO_EMU_FLASH(1, rho_f16, 80, 64, 4)
    RHO_EMU_FLASH(0, rho_bf16, 256, 16, 4)
    RHO_EMU_FLASH(1, rho_f16, 256, 16, 4)
    return 1;
}

template <typename T>
static void ce_fwd(const void* x, long long sb, long long ss, long long seq, const uint32_t* tg, float* loss, float* lse, long long n,
                   long long vocab) {
    emu::launch((unsigned)n, 1, 1, RHO_CE_THREADS,
                [&] { token_ce_fwd_impl<T>((const T*)x, sb, ss, seq, tg, loss, lse, vocab); });
}

extern "C" int rho_emu_token_ce_fwd(int dtype, const void* logits, long long sb, long long ss, long long seq,
                                    const uint32_t* targets, float* loss, float* lse, long long n, long long vocab) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, ce_fwd<T>(logits, sb, ss, seq, targets, loss, lse, n, vocab))
    return 0;
}

template <typename T>
static void ce_bwd(const void* x, long long sb, long long ss, long long seq, const uint32_t* tg, const float* lse, const float* dloss,
                   void* dx, long long d_row_stride, long long n, long long vocab) {
    emu::launch((unsigned)n, 1, 1, RHO_CE_THREADS, [&] {
        token_ce_bwd_impl<T>((const T*)x, sb, ss, seq, tg, lse, dloss, (T*)dx, d_row_stride, vocab);
    });
}

extern "C" int rho_emu_token_ce_bwd(int dtype, const void* logits, long long sb, long long ss, long long seq,
                                    const uint32_t* targets, const float* lse, const float* dloss, void* dlogits,
                                    long long d_row_stride, long long n, long long vocab) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, ce_bwd<T>(logits, sb, ss, seq, targets, lse, dloss, dlogits, d_row_stride, n, vocab))
    return 0;
}

template <typename T, int D, int BC>
static void flash_bwd(const void* q, const void* k, const void* v, const void* g, const float* lse2,
                      const float* dsum, float* dq_acc, void* dk, void* dv, const long long* st, int batch,
                      int n_heads, int n_kv_heads, int seq, float scale_log2, float scale, int window) {
    emu::launch((unsigned)((seq + BC - 1) / BC), (unsigned)n_kv_heads, (unsigned)batch, 2 * BC, [&] {
        flash_attn_bwd_impl<T, D, BC>((const T*)q, (const T*)k, (const T*)v, (const T*)g, lse2, dsum, dq_acc, (T*)dk,
                                   (T*)dv, st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8], st[9],
                                   st[10], st[11], n_heads, n_kv_heads, seq, scale_log2, scale, window);
    });
}

// strides12: (batch, head, seq) of q, k, v and dout; window: the kernel's (0: none).
extern "C" int rho_emu_flash_attn_bwd(int dtype, int head_dim, const void* q, const void* k, const void* v,
                                      const void* dout, const float* lse2, const float* dsum, float* dq_acc,
                                      void* dk, void* dv, const long long* strides12, int batch, int n_heads,
                                      int n_kv_heads, int seq, float scale_log2, float scale, int window) {
    if (seq <= 0) return 0;
#define RHO_EMU_BWD(DT, T, D, BC)                                                                         \
    if (dtype == DT && head_dim == D) {                                                                  \
        flash_bwd<T, D, BC>(q, k, v, dout, lse2, dsum, dq_acc, dk, dv, strides12, batch, n_heads, n_kv_heads, \
                            seq, scale_log2, scale, window);                                             \
        return 0;                                                                                        \
    }
    RHO_EMU_BWD(0, rho_bf16, 64, 64)
    RHO_EMU_BWD(1, rho_f16, 64, 64)
    RHO_EMU_BWD(0, rho_bf16, 128, 32)
    RHO_EMU_BWD(1, rho_f16, 128, 32)
    RHO_EMU_BWD(0, rho_bf16, 32, 64)
    RHO_EMU_BWD(1, rho_f16, 32, 64)
    RHO_EMU_BWD(0, rho_bf16, 80, 32)
    RHO_EMU_BWD(1, rho_f16, 80, 32)
    return 1;
}

// The optimizer kernels (optim.cu) on a grid of `grid` blocks of RHO_OPT_THREADS threads (the
// Rust launcher's choice; any grid covers any n).
extern "C" int rho_emu_adam_moment(int dtype, void* state, const void* grad, long long n, float beta, float gscale,
                                   int square, unsigned grid) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_OPT_THREADS, [&] {
        adam_moment_impl<T>((T*)state, (const T*)grad, n, beta, gscale, square);
    }))
    return 0;
}

extern "C" int rho_emu_adam_apply(int dtype, void* w, const void* m, const void* v, long long n, float decay,
                                  float step, float inv_sqrt_bc2, float eps, unsigned grid) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_OPT_THREADS, [&] {
        adam_apply_impl<T>((T*)w, (const T*)m, (const T*)v, n, decay, step, inv_sqrt_bc2, eps);
    }))
    return 0;
}

extern "C" int rho_emu_sum_sq(int dtype, const void* x, long long n, float* out, unsigned grid) {
    *out = 0.f;
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_OPT_THREADS, [&] { sum_sq_impl<T>((const T*)x, n, out); }))
    return 0;
}

// RMSNorm (norm.cu): the forward on one block per row, the backward on `grid` blocks.
extern "C" int rho_emu_rms_norm_fwd(int dtype, const void* x, const void* w, void* y, long long rows, long long h,
                                    float eps) {
    if (rows <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch((unsigned)rows, 1, 1, RHO_NORM_THREADS, [&] {
        rms_norm_impl<T, T>((const T*)x, (const T*)w, (T*)y, h, eps);
    }))
    return 0;
}

extern "C" int rho_emu_rms_norm_bwd(int dtype, const void* x, const void* w, const void* dy, void* dx, float* dw,
                                    long long rows, long long h, float eps, unsigned grid) {
    for (long long j = 0; j < h; j++) dw[j] = 0.f;
    if (rows <= 0) return 0;
    if (h > RHO_NORM_MAX_H) return 1;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_NORM_THREADS, [&] {
        rms_norm_bwd_impl<T>((const T*)x, (const T*)w, (const T*)dy, (T*)dx, dw, rows, h, eps);
    }))
    return 0;
}

// Evaluation's f32 residual stream (norm.cu): the norm on one block per row, the add on `grid`
// blocks. dtype: the model's (output of the norm, input d of the add), bf16 or f16.
extern "C" int rho_emu_rms_norm_cast(int dtype, const float* x, const float* w, void* y, long long rows, long long h,
                                     float eps) {
    if (rows <= 0) return 0;
    if (dtype == 2) return 1;
    RHO_EMU_DISPATCH(dtype, emu::launch((unsigned)rows, 1, 1, RHO_NORM_THREADS, [&] {
        rms_norm_impl<float, T>(x, w, (T*)y, h, eps);
    }))
    return 0;
}

extern "C" int rho_emu_residual_add(int dtype, const float* x, const void* d, float* out, long long n, unsigned grid) {
    if (n <= 0) return 0;
    if (dtype == 2) return 1;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_NORM_THREADS, [&] { residual_add_impl<T>(x, (const T*)d, out, n); }))
    return 0;
}

// SwiGLU (swiglu.cu) and RoPE (rope.cu) on `grid` blocks (grid-stride loops: any grid covers any n).
extern "C" int rho_emu_swiglu_fwd(int dtype, const void* g, const void* u, void* h, long long n, unsigned grid) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_SWIGLU_THREADS, [&] {
        swiglu_fwd_impl<T>((const T*)g, (const T*)u, (T*)h, n);
    }))
    return 0;
}

extern "C" int rho_emu_swiglu_bwd(int dtype, const void* g, const void* u, const void* dh, void* dgu, long long n,
                                  unsigned grid) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_SWIGLU_THREADS, [&] {
        swiglu_bwd_impl<T>((const T*)g, (const T*)u, (const T*)dh, (T*)dgu, n);
    }))
    return 0;
}

extern "C" int rho_emu_rope(int dtype, const void* x, long long sb, long long ss, long long sh, const void* cos,
                            const void* sin, void* y, int seq, int heads, int d, int rot, float sign, int n,
                            unsigned grid) {
    if (n <= 0) return 0;
    RHO_EMU_DISPATCH(dtype, emu::launch(grid, 1, 1, RHO_ROPE_THREADS, [&] {
        rope_impl<T>((const T*)x, sb, ss, sh, (const T*)cos, (const T*)sin, (T*)y, seq, heads, d, rot, sign, n);
    }))
    return 0;
}

// Two deliberately racy kernels on one block of 64 threads (2 warps), for the test that the
// emulator's schedules expose races (src/cuda/emu.rs `race_probe`). out[t] after:
// mode 0: sm[t] = in[t], then a read of sm[(t + 32) % 64], another warp's, with no barrier;
// mode 1: in[0..64] copied into sm by cp.async, then a barrier but no cp.async wait, then
//         a read of sm[(t + 5) % 64] (another thread's copy).
// Both start from sm = -1 behind a barrier, so the result depends only on the schedule.
extern "C" int rho_emu_race_probe(int mode, const float* in, float* out) {
    if (mode != 0 && mode != 1) return 1;
    emu::launch(1, 1, 1, 64, [&] {
        RHO_SHARED float sm[64];
        const int t = rho_thread_x();
        sm[t] = -1.f;
        rho_sync_threads();
        if (mode == 0) {
            sm[t] = in[t];
            out[t] = sm[(t + 32) % 64];
        } else {
            if (t < 16) rho_cp_async16(&sm[4 * t], &in[4 * t], true);
            rho_cp_async_commit();
            rho_sync_threads();
            out[t] = sm[(t + 5) % 64];
        }
    });
    return 0;
}
