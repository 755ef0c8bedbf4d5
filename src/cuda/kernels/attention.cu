// Causal flash attention, forward only (evaluation), grouped-query heads, bf16 or f16.
//
// q: [b, s, n_heads, D]-like, k/v: [b, s, n_kv_heads, D]-like, o like q: any strides for
// batch, head and position (in elements), the head dim contiguous; q and o rows 4-byte
// aligned, k and v rows 16-byte aligned (the launcher checks).
// o[b, i, h] = sum_j softmax_j(q[b,i,h] . k[b,j,h/G] * scale, j <= i) v[b,j,h/G], G = n_heads / n_kv_heads.
//
// One block of NW warps per (16 NW query rows, head, batch), the longest rows first; each
// warp owns 16 query rows, its Q fragments in registers. Tiles of BC keys (up to the
// diagonal) are staged in shared memory by cp.async, two stages so that tile j + 1 loads
// while tile j is used. Per tile each warp computes S = Q K^T with mma.sync m16n8k16 (f32
// accumulators, K's fragments by ldmatrix), masks only on tiles that reach the diagonal or
// the end, updates the running row max and sum (FlashAttention-2's online softmax, exp2
// domain), rounds P to the input type and accumulates O += P V (V's fragments by a
// transposing ldmatrix). [s, s] never exists. Rows are normalised once at the end.
// CPU reference: src/cuda/reference.rs; CPU emulation of this source: src/cuda/emu.
#include "compat.cuh"

template <typename T, int D, int BC, int NW>
RHO_DEVICE void flash_attn_fwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                    T* __restrict__ o, long long q_sb, long long q_sh, long long q_ss,
                                    long long k_sb, long long k_sh, long long k_ss, long long v_sb,
                                    long long v_sh, long long v_ss, long long o_sb, long long o_sh,
                                    long long o_ss, int n_heads, int n_kv_heads, int seq, float scale_log2) {
    constexpr int BR = 16 * NW;         // query rows per block, 16 per warp
    constexpr int LD = D + 8;           // smem row pitch: 8 rows of an ldmatrix hit 32 distinct banks
    constexpr int CH = D / 8;           // 16-byte chunks per row
    RHO_SHARED T ks[2][BC * LD];        // two stages: tile j + 1 loads while tile j is used
    RHO_SHARED T vs[2][BC * LD];
    const int tid = rho_thread_x(), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    // The longest query tiles (most keys) first.
    const int q0 = (rho_grid_dim_x() - 1 - rho_block_x()) * BR;
    const int h = rho_block_y(), b = rho_block_z();
    const int kvh = h / (n_heads / n_kv_heads);
    const T* qp = q + b * q_sb + h * q_sh;
    const T* kp = k + b * k_sb + kvh * k_sh;
    const T* vp = v + b * v_sb + kvh * v_sh;
    const int w0 = q0 + warp * 16;      // the warp's first query row
    const int r0 = w0 + g, r1 = r0 + 8; // this thread's two query rows

    // The warp's 16 x D block of Q as A fragments, one per 16 columns (read once).
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int c = kk * 16 + 2 * t;
        qa[kk][0] = r0 < seq ? rho_load_u32(qp + r0 * q_ss + c) : 0u;
        qa[kk][1] = r1 < seq ? rho_load_u32(qp + r1 * q_ss + c) : 0u;
        qa[kk][2] = r0 < seq ? rho_load_u32(qp + r0 * q_ss + c + 8) : 0u;
        qa[kk][3] = r1 < seq ? rho_load_u32(qp + r1 * q_ss + c + 8) : 0u;
    }

    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};  // this thread's share; summed over the 4 threads of a row at the end
    float acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        for (int i = 0; i < 4; ++i) acc[dt][i] = 0.f;

    // K and V rows c0 .. c0 + BC of stage st, 16 bytes per copy, zeros past the end.
    auto load_tile = [&](int c0, int st) {
        for (int w = tid; w < BC * CH; w += 32 * NW) {
            const int row = w / CH, col = (w % CH) * 8;
            const bool in = c0 + row < seq;
            const long long r = in ? c0 + row : 0;
            rho_cp_async16(&ks[st][row * LD + col], kp + r * k_ss + col, in);
            rho_cp_async16(&vs[st][row * LD + col], vp + r * v_ss + col, in);
        }
        rho_cp_async_commit();
    };

    const int last = (q0 + BR < seq ? q0 + BR : seq) - 1;  // last query row of the block
    const int n_tiles = last / BC + 1;
    load_tile(0, 0);
    for (int j = 0; j < n_tiles; ++j) {
        const int c0 = j * BC, st = j & 1;
        if (j + 1 < n_tiles) {
            load_tile(c0 + BC, st ^ 1);  // that stage was released by the barrier ending j - 1
            rho_cp_async_wait<1>();      // tile j has landed (tile j + 1 may be in flight)
        } else {
            rho_cp_async_wait<0>();
        }
        rho_sync_threads();
        // A tile entirely after this warp's rows adds nothing (causal): skip its math.
        if (c0 <= w0 + 15 && w0 < seq) {
            const T* kt = ks[st];
            const T* vt = vs[st];
            // S = Q K^T: 16 rows x BC keys per warp, as BC / 8 C fragments. One ldmatrix
            // gives the B fragments of 8 keys for two 16-column steps of Q.
            float s[BC / 8][4];
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) {
                for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
#pragma unroll
                for (int kk = 0; kk < D / 16; kk += 2) {
                    uint32_t bf[4];
                    rho_ldmatrix_x4(bf, kt + (nt * 8 + lane % 8) * LD + kk * 16 + (lane / 8) * 8);
                    rho_mma16816<T>(s[nt], qa[kk], bf);
                    rho_mma16816<T>(s[nt], qa[kk + 1], bf + 2);
                }
            }
            // Scale into the exp2 domain; mask keys after the query (only on tiles that
            // reach the diagonal) and past the end.
            const bool edge = c0 + BC - 1 > w0 || c0 + BC > seq;
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt)
                for (int i = 0; i < 4; ++i) {
                    const int row = i < 2 ? r0 : r1, col = c0 + nt * 8 + 2 * t + (i & 1);
                    s[nt][i] = (edge && (col > row || col >= seq)) ? -INFINITY : s[nt][i] * scale_log2;
                }
            // Online softmax, per row (r = 0: row g, r = 1: row g + 8).
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = row_max[r];
                for (int nt = 0; nt < BC / 8; ++nt) {
                    mx = fmaxf(mx, s[nt][2 * r]);
                    mx = fmaxf(mx, s[nt][2 * r + 1]);
                }
                mx = fmaxf(mx, rho_shfl_xor(mx, 1));
                mx = fmaxf(mx, rho_shfl_xor(mx, 2));
                const float base = mx == -INFINITY ? 0.f : mx;  // a row with no key yet stays all zero
                const float alpha = rho_exp2(row_max[r] - base);
                row_max[r] = mx;
                row_sum[r] *= alpha;
                for (int dt = 0; dt < D / 8; ++dt) {
                    acc[dt][2 * r] *= alpha;
                    acc[dt][2 * r + 1] *= alpha;
                }
                for (int nt = 0; nt < BC / 8; ++nt) {
                    const float p0 = rho_exp2(s[nt][2 * r] - base), p1 = rho_exp2(s[nt][2 * r + 1] - base);
                    s[nt][2 * r] = p0;
                    s[nt][2 * r + 1] = p1;
                    row_sum[r] += p0 + p1;
                }
            }
            // O += P V. Two adjacent C fragments of P are one A fragment (16 keys); one
            // transposing ldmatrix gives V's B fragments for 16 keys and two 8-column steps.
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                const uint32_t pa[4] = {
                    rho_pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                    rho_pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                    rho_pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                    rho_pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
                };
#pragma unroll
                for (int dt = 0; dt < D / 8; dt += 2) {
                    uint32_t bf[4];
                    rho_ldmatrix_x4_trans(bf, vt + (kk * 16 + (lane / 8 % 2) * 8 + lane % 8) * LD + (dt + lane / 16) * 8);
                    rho_mma16816<T>(acc[dt], pa, bf);
                    rho_mma16816<T>(acc[dt + 1], pa, bf + 2);
                }
            }
        }
        rho_sync_threads();  // everyone is done with stage st before it is refilled
    }
    // Normalise and store (two adjacent output columns per register pair).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = row_sum[r];
        l += rho_shfl_xor(l, 1);
        l += rho_shfl_xor(l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int row = r ? r1 : r0;
        if (row < seq) {
            T* op = o + b * o_sb + h * o_sh + row * o_ss + 2 * t;
            for (int dt = 0; dt < D / 8; ++dt)
                rho_store_u32(op + dt * 8, rho_pack2<T>(acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv));
        }
    }
}

#ifdef __CUDACC__
// MINB: blocks per SM the register allocation must allow (65536 / (32 NW MINB) registers per thread).
#define RHO_FLASH(NAME, T, D, BC, NW, MINB)                                                              \
    RHO_GLOBAL void __launch_bounds__(32 * NW, MINB)                                                     \
        NAME(const T* q, const T* k, const T* v, T* o, long long q_sb, long long q_sh, long long q_ss,  \
             long long k_sb, long long k_sh, long long k_ss, long long v_sb, long long v_sh,              \
             long long v_ss, long long o_sb, long long o_sh, long long o_ss, int n_heads,                 \
             int n_kv_heads, int seq, float scale_log2) {                                                \
        flash_attn_fwd_impl<T, D, BC, NW>(q, k, v, o, q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, \
                                  o_sh, o_ss, n_heads, n_kv_heads, seq, scale_log2);                     \
    }
// (head dim, keys per tile, warps, min blocks per SM): the variants of cuda::FlashVariant
RHO_FLASH(flash_attn_fwd_bf16_d64, rho_bf16, 64, 64, 4, 3)
RHO_FLASH(flash_attn_fwd_bf16_d64_m4, rho_bf16, 64, 64, 4, 4)
RHO_FLASH(flash_attn_fwd_bf16_d64_w8, rho_bf16, 64, 64, 8, 2)
RHO_FLASH(flash_attn_fwd_bf16_d128, rho_bf16, 128, 32, 4, 3)
RHO_FLASH(flash_attn_fwd_f16_d64, rho_f16, 64, 64, 4, 3)
RHO_FLASH(flash_attn_fwd_f16_d64_m4, rho_f16, 64, 64, 4, 4)
RHO_FLASH(flash_attn_fwd_f16_d64_w8, rho_f16, 64, 64, 8, 2)
RHO_FLASH(flash_attn_fwd_f16_d128, rho_f16, 128, 32, 4, 3)
#endif
