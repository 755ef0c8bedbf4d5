// Causal flash attention, forward (evaluation; training with LSE), grouped-query heads, bf16
// or f16, optionally in a sliding window.
//
// q: [b, s, n_heads, D]-like, k/v: [b, s, n_kv_heads, D]-like, o like q: any strides for
// batch, head and position (in elements), the head dim contiguous; q and o rows 4-byte
// aligned, k and v rows 16-byte aligned (the launcher checks).
// o[b, i, h] = sum_j softmax_j(q[b,i,h] . k[b,j,h/G] * scale) v[b,j,h/G] over the keys j <= i
// and, with window w > 0, i - j < w (the query and the w - 1 keys before it: transformers'
// sliding_window); G = n_heads / n_kv_heads. window = 0: no window (the launcher also passes 0
// for a window of at least s keys, which masks nothing).
//
// One block of NW warps per (16 NW query rows, head, batch), the longest rows first; each
// warp owns 16 query rows, its Q fragments in registers. Tiles of BC keys (up to the
// diagonal; with a window, from the tile of the block's first row's first key) are staged in
// shared memory by cp.async, two stages so that tile j + 1 loads while tile j is used. Per
// tile each warp computes S = Q K^T with mma.sync m16n8k16 (f32 accumulators, K's fragments by
// ldmatrix; a tile before all of the warp's rows' windows is skipped), masks only on tiles that
// reach the diagonal, the end, or the window's start of the warp's last row, updates the
// running row max and sum (FlashAttention-2's online softmax, exp2
// domain), rounds P to the input type and accumulates O += P V (V's fragments by a
// transposing ldmatrix). [s, s] never exists. Rows are normalised once at the end.
// CPU reference: src/cuda/reference.rs; CPU emulation of this source: src/cuda/emu.
#include "compat.cuh"

// acc[D / 8][4] += A B for one warp: A is one 16x16 A fragment (16 rows x 16 inner), B the 16
// rows k0 .. k0 + 15 of `b` (row-major in shared memory, pitch LD, D columns), whose B
// fragments come from a transposing ldmatrix, two 8-column steps at a time.
template <typename T, int D, int LD>
RHO_DEVICE void warp_a_times_rows(float (*acc)[4], const uint32_t* a, const T* b, int k0, int lane) {
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t bf[4];
        rho_ldmatrix_x4_trans(bf, b + (k0 + (lane / 8 % 2) * 8 + lane % 8) * LD + (dt + lane / 16) * 8);
        rho_mma16816<T>(acc[dt], a, bf);
        rho_mma16816<T>(acc[dt + 1], a, bf + 2);
    }
}

template <typename T, int D, int BC, int NW, bool LSE>
RHO_DEVICE void flash_attn_fwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                    T* __restrict__ o, long long q_sb, long long q_sh, long long q_ss,
                                    long long k_sb, long long k_sh, long long k_ss, long long v_sb,
                                    long long v_sh, long long v_ss, long long o_sb, long long o_sh,
                                    long long o_ss, int n_heads, int n_kv_heads, int seq, float scale_log2,
                                    float* __restrict__ lse2, int window) {
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
    // with a window: the first tile holding a key of the block's first row's window
    const int j0 = window > 0 && q0 >= window ? (q0 - window + 1) / BC : 0;
    load_tile(j0 * BC, j0 & 1);
    for (int j = j0; j < n_tiles; ++j) {
        const int c0 = j * BC, st = j & 1;
        if (j + 1 < n_tiles) {
            load_tile(c0 + BC, st ^ 1);  // that stage was released by the barrier ending j - 1
            rho_cp_async_wait<1>();      // tile j has landed (tile j + 1 may be in flight)
        } else {
            rho_cp_async_wait<0>();
        }
        rho_sync_threads();
        // A tile entirely after this warp's rows (causal), or entirely before the window of its
        // first row (key c0 + BC - 1 <= w0 - window), adds nothing: skip its math.
        if (c0 <= w0 + 15 && w0 < seq && (window == 0 || c0 + BC + window > w0 + 1)) {
            const T* kt = ks[st];
            const T* vt = vs[st];
            // S = Q K^T: 16 rows x BC keys per warp, as BC / 8 C fragments. One ldmatrix
            // gives the B fragments of 8 keys for two 16-column steps of Q.
            float s[BC / 8][4];
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) {
                for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
#pragma unroll
                for (int kk = 0; kk + 1 < D / 16; kk += 2) {
                    uint32_t bf[4];
                    rho_ldmatrix_x4(bf, kt + (nt * 8 + lane % 8) * LD + kk * 16 + (lane / 8) * 8);
                    rho_mma16816<T>(s[nt], qa[kk], bf);
                    rho_mma16816<T>(s[nt], qa[kk + 1], bf + 2);
                }
                if constexpr ((D / 16) % 2 == 1) {  // head dims 80, 112, ...: the last 16 columns alone
                    constexpr int kk = D / 16 - 1;
                    uint32_t bf[2];
                    rho_ldmatrix_x2(bf, kt + (nt * 8 + lane % 8) * LD + kk * 16 + (lane / 8 % 2) * 8);
                    rho_mma16816<T>(s[nt], qa[kk], bf);
                }
            }
            // Scale into the exp2 domain; mask keys after the query (only on tiles that
            // reach the diagonal), past the end, and (window) at or before row - window (only
            // on tiles that start before the window of the warp's last row).
            const bool wedge = window > 0 && c0 + window < w0 + 16;
            const bool edge = c0 + BC - 1 > w0 || c0 + BC > seq || wedge;
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt)
                for (int i = 0; i < 4; ++i) {
                    const int row = i < 2 ? r0 : r1, col = c0 + nt * 8 + 2 * t + (i & 1);
                    const bool out = col > row || col >= seq || (wedge && col <= row - window);
                    s[nt][i] = (edge && out) ? -INFINITY : s[nt][i] * scale_log2;
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
                uint32_t pa[4];
                rho_c_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
                warp_a_times_rows<T, D, LD>(acc, pa, vt, kk * 16, lane);
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
            // training: log2 of each row's normaliser (scores in the exp2 domain), [b, s, n_heads]
            // (a separate instantiation: keeping lse2 live costs the eval kernels a spill)
            if constexpr (LSE) {
                if (t == 0) lse2[((long long)b * seq + row) * n_heads + h] = row_max[r] + rho_log2(l);
            }
        }
    }
}


// acc = A B^T for one warp: A = the 16 rows at `a` (each lane's ldmatrix row already applied:
// a = base + a_off), B = the R rows of `b`, both row-major in shared memory with pitch LD and
// D columns; acc as R / 8 C fragments (rows of A x rows of B).
template <typename T, int D, int R, int LD>
RHO_DEVICE void warp_rows_times_tile_t(float (*acc)[4], const T* a, const T* b, int lane) {
#pragma unroll
    for (int nt = 0; nt < R / 8; ++nt)
        for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk + 1 < D / 16; kk += 2) {
        uint32_t a0[4], a1[4];
        rho_ldmatrix_x4(a0, a + kk * 16);
        rho_ldmatrix_x4(a1, a + kk * 16 + 16);
#pragma unroll
        for (int nt = 0; nt < R / 8; ++nt) {
            uint32_t bf[4];
            rho_ldmatrix_x4(bf, b + (nt * 8 + lane % 8) * LD + kk * 16 + (lane / 8) * 8);
            rho_mma16816<T>(acc[nt], a0, bf);
            rho_mma16816<T>(acc[nt], a1, bf + 2);
        }
    }
    if constexpr ((D / 16) % 2 == 1) {  // head dim 80: the last 16 columns alone
        constexpr int kk = D / 16 - 1;
        uint32_t a0[4];
        rho_ldmatrix_x4(a0, a + kk * 16);
#pragma unroll
        for (int nt = 0; nt < R / 8; ++nt) {
            uint32_t bf[2];
            rho_ldmatrix_x2(bf, b + (nt * 8 + lane % 8) * LD + kk * 16 + (lane / 8 % 2) * 8);
            rho_mma16816<T>(acc[nt], a0, bf);
        }
    }
}

// Backward of the causal attention above (training), FlashAttention-2's algorithm, head dim
// 32 or 64 (64-key blocks), 80 or 128 (32-key blocks).
//
// Inputs: q, k, v, dout (= dL/do) with the forward's layouts (any batch/head/position strides,
// rows 16-byte aligned), lse2 and dsum [b, s, n_heads] f32: the forward's log2 normaliser
// per row (scores in the exp2 domain) and D_i = sum_d dout[i, d] o[i, d].
// Outputs: dq_acc [b, s, n_heads, D] f32, zeroed by the caller, to which every key block adds
// its share (atomically); dk, dv [b, s, n_kv_heads, D] contiguous, written once.
//
// window > 0: the forward's sliding window (query i attends keys i - window < j <= i); 0: none.
//
// One block of BC / 16 warps per (BC keys, kv head, batch); each warp owns 16 keys. For each
// query head of the group and each BC-query tile at or after the keys (causal) and, with a
// window, up to the tile of the last query that sees the block's last key, with Q, dO,
// lse2 and D of the tile in shared memory (a warp whose keys no query of the tile sees
// skips to dS^T = 0):
//   S^T = K Q^T, P^T = exp2(S^T scale_log2 - lse2) (masked), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q;
// dS^T goes through shared memory so that the block can compute dQ = dS K for the tile's
// queries (warp w: queries 16w..16w+15) and add it to dq_acc. dK and dV are scaled and
// stored at the end. CPU reference: reference::causal_attention_backward.
template <typename T, int D, int BC>
RHO_DEVICE void flash_attn_bwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                    const T* __restrict__ dout, const float* __restrict__ lse2,
                                    const float* __restrict__ dsum, float* __restrict__ dq_acc,
                                    T* __restrict__ dk, T* __restrict__ dv, long long q_sb, long long q_sh,
                                    long long q_ss, long long k_sb, long long k_sh, long long k_ss,
                                    long long v_sb, long long v_sh, long long v_ss, long long g_sb,
                                    long long g_sh, long long g_ss, int n_heads, int n_kv_heads, int seq,
                                    float scale_log2, float scale, int window) {
    // BC keys per block, 16 per warp; query tiles of BR = BC rows (the dQ step gives each
    // warp 16 of them). 64 for head dims 32 and 64, 32 for 80 and 128: within 48 KB of
    // shared memory (2 (BC + BR) (D + 8) + BC (BR + 8) elements: 40 KB at d64, 34 KB at
    // d128, 25 KB at d80, 29 KB at d32; d80 with 64 keys would need 54 KB).
    constexpr int BR = BC, NW = BC / 16, LD = D + 8, LS = BR + 8, CH = D / 8;
    RHO_SHARED T kt[BC * LD];
    RHO_SHARED T vt[BC * LD];
    RHO_SHARED T qt[BR * LD];
    RHO_SHARED T gt[BR * LD];   // dO tile
    RHO_SHARED T dst[BC * LS];  // dS^T tile: [key][query]
    RHO_SHARED float lse_s[BR];
    RHO_SHARED float dsum_s[BR];
    const int tid = rho_thread_x(), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int k0 = rho_block_x() * BC, kvh = rho_block_y(), b = rho_block_z();
    const int group = n_heads / n_kv_heads;
    const int kw0 = k0 + warp * 16;  // the warp's first key

    // K and V tiles, then each warp's 16 keys as A fragments (ldmatrix: matrices rows 0-7 /
    // 8-15 x columns 0-7 / 8-15 of a 16x16 block give a0..a3).
    {
        const T* kp = k + b * k_sb + kvh * k_sh;
        const T* vp = v + b * v_sb + kvh * v_sh;
        for (int w = tid; w < BC * CH; w += 32 * NW) {
            const int row = w / CH, col = (w % CH) * 8;
            const bool in = k0 + row < seq;
            const long long r = in ? k0 + row : 0;
            rho_cp_async16(&kt[row * LD + col], kp + r * k_ss + col, in);
            rho_cp_async16(&vt[row * LD + col], vp + r * v_ss + col, in);
        }
        rho_cp_async_commit();
        rho_cp_async_wait<0>();
        rho_sync_threads();
    }
    // The warp's 16 keys of K or V as the A fragment of 16 columns kk (ldmatrix: matrices
    // rows 0-7 / 8-15 x columns 0-7 / 8-15 of the 16x16 block give a0..a3); read from shared
    // memory at each use, which leaves the registers to the dK and dV accumulators.
    const int a_off = (warp * 16 + (lane / 8 % 2) * 8 + lane % 8) * LD + (lane / 16) * 8;
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        for (int i = 0; i < 4; ++i) dk_acc[dt][i] = dv_acc[dt][i] = 0.f;

    const int n_qt = (seq + BR - 1) / BR;
    for (int gi = 0; gi < group; ++gi) {
        const int h = kvh * group + gi;
        const T* qp = q + b * q_sb + h * q_sh;
        const T* gp = dout + b * g_sb + h * g_sh;
        // (window) up to the tile of the last query that sees a key of the block, k0 + BC - 1 + window - 1
        // (a bound in the loop's test: a separate bound variable costs d128 a register spill)
        for (int qi = k0 / BR; qi < n_qt && (window == 0 || qi * BR < k0 + BC - 1 + window); ++qi) {
            const int q0 = qi * BR;
            rho_sync_threads();  // the previous tile's readers are done
            for (int w = tid; w < BR * CH; w += 32 * NW) {
                const int row = w / CH, col = (w % CH) * 8;
                const bool in = q0 + row < seq;
                const long long r = in ? q0 + row : 0;
                rho_cp_async16(&qt[row * LD + col], qp + r * q_ss + col, in);
                rho_cp_async16(&gt[row * LD + col], gp + r * g_ss + col, in);
            }
            rho_cp_async_commit();
            for (int i = tid; i < BR; i += 32 * NW) {
                const bool in = q0 + i < seq;
                const long long at = ((long long)b * seq + (in ? q0 + i : 0)) * n_heads + h;
                lse_s[i] = in ? lse2[at] : INFINITY;  // rows past the end: P = 0
                dsum_s[i] = in ? dsum[at] : 0.f;
            }
            rho_cp_async_wait<0>();
            rho_sync_threads();

            // (window) the tile's first query sees none of the warp's keys: q0 - (kw0 + 15) >= window
            if (kw0 < seq && (window == 0 || q0 < kw0 + 15 + window)) {
                // S^T = K Q^T: the warp's 16 keys x BR queries.
                float st[BR / 8][4];
                warp_rows_times_tile_t<T, D, BR, LD>(st, kt + a_off, qt, lane);
                // P^T; masked where the query is before the key or past the end (the
                // diagonal tile and the last tiles only), keys past the end, and (window)
                // queries at or after key + window (tiles whose last query reaches kw0 + window).
                const int wlim = window > 0 ? window : 1 << 30;
                const bool edge = q0 < kw0 + 16 || q0 + BR > seq || k0 + BC > seq || q0 + BR - 1 - kw0 >= wlim;
#pragma unroll
                for (int nt = 0; nt < BR / 8; ++nt)
                    for (int i = 0; i < 4; ++i) {
                        const int key = kw0 + g + 8 * (i >> 1), ql = nt * 8 + 2 * t + (i & 1);
                        const bool masked = edge && (q0 + ql < key || q0 + ql >= seq || key >= seq || q0 + ql - key >= wlim);
                        st[nt][i] = masked ? 0.f : rho_exp2(st[nt][i] * scale_log2 - lse_s[ql]);
                    }
                // dV += P^T dO (A: P^T from C fragments; B: dO by transposing ldmatrix).
#pragma unroll
                for (int kq = 0; kq < BR / 16; ++kq) {
                    uint32_t pa[4];
                    rho_c_to_a<T>(pa, st[2 * kq], st[2 * kq + 1]);
                    warp_a_times_rows<T, D, LD>(dv_acc, pa, gt, kq * 16, lane);
                }
                // dP^T = V dO^T, then dS^T = P^T (dP^T - D) in place of P^T.
                float dp[BR / 8][4];
                warp_rows_times_tile_t<T, D, BR, LD>(dp, vt + a_off, gt, lane);
#pragma unroll
                for (int nt = 0; nt < BR / 8; ++nt)
                    for (int i = 0; i < 4; ++i) st[nt][i] *= dp[nt][i] - dsum_s[nt * 8 + 2 * t + (i & 1)];
                // dK += dS^T Q; and dS^T to shared memory for dQ.
#pragma unroll
                for (int kq = 0; kq < BR / 16; ++kq) {
                    uint32_t pa[4];
                    rho_c_to_a<T>(pa, st[2 * kq], st[2 * kq + 1]);
                    T* row0 = dst + (warp * 16 + g) * LS + kq * 16 + 2 * t;
                    rho_store_u32(row0, pa[0]);
                    rho_store_u32(row0 + 8 * LS, pa[1]);
                    rho_store_u32(row0 + 8, pa[2]);
                    rho_store_u32(row0 + 8 * LS + 8, pa[3]);
                    warp_a_times_rows<T, D, LD>(dk_acc, pa, qt, kq * 16, lane);
                }
            } else {
                // keys past the end, or outside every query's window: dS^T = 0 for the dQ step
                for (int r = 0; r < 16; ++r)
                    for (int c = lane; c < BR; c += 32) dst[(warp * 16 + r) * LS + c] = rho_from_f32<T>(0.f);
            }
            rho_sync_threads();
            // dQ = dS K for queries q0 + 16 warp .. + 15 (A: dS by transposing ldmatrix of dS^T;
            // B: K by transposing ldmatrix), added to dq_acc.
            float dq[D / 8][4];
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                for (int i = 0; i < 4; ++i) dq[dt][i] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                uint32_t a[4];
                rho_ldmatrix_x4_trans(a, dst + (kk * 16 + (lane / 16) * 8 + lane % 8) * LS + warp * 16 + (lane / 8 % 2) * 8);
                warp_a_times_rows<T, D, LD>(dq, a, kt, kk * 16, lane);
            }
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                for (int i = 0; i < 4; ++i) {
                    const int qr = q0 + warp * 16 + g + 8 * (i >> 1);
                    if (qr < seq)
                        rho_atomic_add(dq_acc + (((long long)b * seq + qr) * n_heads + h) * D + dt * 8 + 2 * t + (i & 1),
                                       dq[dt][i] * scale);
                }
        }
    }
    // dK (scaled) and dV for the warp's keys: rows g and g + 8, two columns per register pair.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = kw0 + g + 8 * r;
        if (key < seq) {
            const long long at = (((long long)b * seq + key) * n_kv_heads + kvh) * D + 2 * t;
            for (int dt = 0; dt < D / 8; ++dt) {
                rho_store_u32(dk + at + dt * 8, rho_pack2<T>(dk_acc[dt][2 * r] * scale, dk_acc[dt][2 * r + 1] * scale));
                rho_store_u32(dv + at + dt * 8, rho_pack2<T>(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]));
            }
        }
    }
}

#ifdef __CUDACC__
// MINB: blocks per SM the register allocation must allow (65536 / (32 NW MINB) registers per thread).
#define RHO_FLASH(NAME, T, D, BC, NW, MINB, LSE)                                                         \
    RHO_GLOBAL void __launch_bounds__(32 * NW, MINB)                                                     \
        NAME(const T* q, const T* k, const T* v, T* o, long long q_sb, long long q_sh, long long q_ss,  \
             long long k_sb, long long k_sh, long long k_ss, long long v_sb, long long v_sh,              \
             long long v_ss, long long o_sb, long long o_sh, long long o_ss, int n_heads,                 \
             int n_kv_heads, int seq, float scale_log2, float* lse2, int window) {                       \
        flash_attn_fwd_impl<T, D, BC, NW, LSE>(q, k, v, o, q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, \
                                  o_sh, o_ss, n_heads, n_kv_heads, seq, scale_log2, lse2, window);       \
    }
// (head dim, keys per tile, warps, min blocks per SM): the variants of cuda::FlashVariant.
// Head dims 32 and 80 (GPT-NeoX / Pythia 14m-31m and 2.8b, Phi-2) and 256 (Pythia-1b, GPT-J)
// have one variant each; 256 uses 16-key tiles to stay within 48 KB of shared memory.
RHO_FLASH(flash_attn_fwd_bf16_d64, rho_bf16, 64, 64, 4, 3, false)
RHO_FLASH(flash_attn_fwd_bf16_d64_m4, rho_bf16, 64, 64, 4, 4, false)
RHO_FLASH(flash_attn_fwd_bf16_d64_w8, rho_bf16, 64, 64, 8, 2, false)
RHO_FLASH(flash_attn_fwd_bf16_d128, rho_bf16, 128, 32, 4, 3, false)
RHO_FLASH(flash_attn_fwd_f16_d64, rho_f16, 64, 64, 4, 3, false)
RHO_FLASH(flash_attn_fwd_f16_d64_m4, rho_f16, 64, 64, 4, 4, false)
RHO_FLASH(flash_attn_fwd_f16_d64_w8, rho_f16, 64, 64, 8, 2, false)
RHO_FLASH(flash_attn_fwd_f16_d128, rho_f16, 128, 32, 4, 3, false)
RHO_FLASH(flash_attn_fwd_bf16_d32, rho_bf16, 32, 64, 4, 3, false)
RHO_FLASH(flash_attn_fwd_f16_d32, rho_f16, 32, 64, 4, 3, false)
RHO_FLASH(flash_attn_fwd_bf16_d80, rho_bf16, 80, 64, 4, 3, false)
RHO_FLASH(flash_attn_fwd_f16_d80, rho_f16, 80, 64, 4, 3, false)
RHO_FLASH(flash_attn_fwd_bf16_d256, rho_bf16, 256, 16, 4, 2, false)
RHO_FLASH(flash_attn_fwd_f16_d256, rho_f16, 256, 16, 4, 2, false)
// training forwards (write lse2 for the backward, the backward's head dims 32, 64, 80, 128); on
// CPU the op's reference serves every head dim
RHO_FLASH(flash_attn_fwd_lse_bf16_d64, rho_bf16, 64, 64, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_f16_d64, rho_f16, 64, 64, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_bf16_d128, rho_bf16, 128, 32, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_f16_d128, rho_f16, 128, 32, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_bf16_d32, rho_bf16, 32, 64, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_f16_d32, rho_f16, 32, 64, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_bf16_d80, rho_bf16, 80, 64, 4, 3, true)
RHO_FLASH(flash_attn_fwd_lse_f16_d80, rho_f16, 80, 64, 4, 3, true)
#endif

#ifdef __CUDACC__
#define RHO_FLASH_BWD(NAME, T, D, BC)                                                                    \
    RHO_GLOBAL void __launch_bounds__(2 * BC)                                                            \
        NAME(const T* q, const T* k, const T* v, const T* dout, const float* lse2, const float* dsum,    \
             float* dq_acc, T* dk, T* dv, long long q_sb, long long q_sh, long long q_ss, long long k_sb, \
             long long k_sh, long long k_ss, long long v_sb, long long v_sh, long long v_ss,             \
             long long g_sb, long long g_sh, long long g_ss, int n_heads, int n_kv_heads, int seq,       \
             float scale_log2, float scale, int window) {                                                \
        flash_attn_bwd_impl<T, D, BC>(q, k, v, dout, lse2, dsum, dq_acc, dk, dv, q_sb, q_sh, q_ss, k_sb,  \
                                   k_sh, k_ss, v_sb, v_sh, v_ss, g_sb, g_sh, g_ss, n_heads, n_kv_heads,  \
                                   seq, scale_log2, scale, window);                                      \
    }
RHO_FLASH_BWD(flash_attn_bwd_bf16_d64, rho_bf16, 64, 64)
RHO_FLASH_BWD(flash_attn_bwd_f16_d64, rho_f16, 64, 64)
RHO_FLASH_BWD(flash_attn_bwd_bf16_d128, rho_bf16, 128, 32)
RHO_FLASH_BWD(flash_attn_bwd_f16_d128, rho_f16, 128, 32)
RHO_FLASH_BWD(flash_attn_bwd_bf16_d32, rho_bf16, 32, 64)
RHO_FLASH_BWD(flash_attn_bwd_f16_d32, rho_f16, 32, 64)
RHO_FLASH_BWD(flash_attn_bwd_bf16_d80, rho_bf16, 80, 32)
RHO_FLASH_BWD(flash_attn_bwd_f16_d80, rho_f16, 80, 32)
#endif
