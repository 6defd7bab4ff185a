// The fused backward pass of partially forgetting attention (SPEC section 5).
//
// With r_ij the dropout scale and P_ij = exp(s_ij - lse_i) for kept entries
// (0 for forgotten or padded ones):
//   W_ij  = P_ij r_ij, or exp(b - lse_i) r_ij for a forgotten entry that
//           stays in the numerator (drop_forgotten = 0);
//   dV_j  = sum_i W_ij dO_i;
//   dS_ij = P_ij (r_ij dP_ij - Delta_i), dP_ij = dO_i . V_j, Delta_i = dO_i . O_i;
//           plus g_b / at_median where s_ij = m (the center gradient);
//   dQ_i  = beta sum_j dS_ij K_j,   dK_j = beta sum_i dS_ij Q_i.
// Nothing of size Nq x Nk is stored: every kernel recomputes its score tiles
// from Q and K, and its dropout mask from (seed, entry index) by Philox.
//
// The launches of one call (src/op/kernels/mod.rs, backward_launches):
//   1. lwpf_backward_prep_f32: Delta_i, one thread per row.
//   2. With the center gradient only: lwpf_backward_center_f32, one block per
//      (b * H + h, query tile), sums per row the gradient reaching b,
//        exp(b - lse_i) sum_{j forgotten} (w r_ij dP_ij - Delta_i),
//      w = 0 if drop_forgotten else 1; lwpf_backward_center_reduce (one block)
//      adds the rows up and writes share = g_b / at_median. The share must be
//      known before any dS is formed, hence a pass of its own.
//   3. lwpf_backward_dkdv_f32: one block per (b * H + h, key tile); dK and dV
//      of the tile's keys stay in registers while the block walks the query
//      tiles. With dq_atomic it also adds each tile's beta dS K to dQ with
//      float atomics.
//   4. Without dq_atomic: lwpf_backward_dq_f32, one block per (b * H + h,
//      query tile), walks the key tiles with dQ in registers.
//
// Determinism (dq_atomic = 0). The emulation runs blocks one after another,
// so its bit-for-bit test alone proves nothing about a GPU; what makes the
// GPU path reproducible is that no result depends on the order in which
// blocks or warps run: every element of Delta, the per-row center sums, dQ,
// dK and dV is written by exactly one thread, which adds its terms in an
// order fixed by the shape alone (tiles ascending, entries ascending within a
// tile), and every term is a fixed sequence of IEEE operations on the same
// inputs (expf and the Philox draws included). The one sum across blocks,
// g_b, is done by a single block in a fixed tree order. No float atomics
// take part, so dQ, dK and dV are bit-identical run to run. With dq_atomic,
// the order in which key tiles add into dQ is the scheduler's: dK and dV
// stay reproducible, dQ does not.
//
// Scores have the forward's bits: one fmaf chain over d ascending from 0,
// then one rounded product with beta (scores.cuh), here read from tiles
// staged whole in shared memory. So kept / forgotten decisions and median
// ties are the forward's exactly.
#include "common.cuh"
#include "philox.cuh"

#if LWPF_TILE_Q != LWPF_TILE_K
#error "the backward stages Q, dO, K and V tiles of one row count"
#endif

// Rows of every staged tile, and their padded length (one float more than
// the widest row, so that rows start in different banks).
#define BWD_ROWS LWPF_TILE_Q
#define BWD_LD (LWPF_BWD_MAX_D + 1)
// Threads per row of a [32, 32] entry tile, entries per thread, and the
// columns of a D- or Dv-wide accumulator row that each thread owns.
#define BWD_THREADS_PER_ROW (LWPF_THREADS / BWD_ROWS)
#define BWD_ENTRIES (LWPF_TILE_K / BWD_THREADS_PER_ROW)
#define BWD_ACC (LWPF_BWD_MAX_D / BWD_THREADS_PER_ROW)

// 42 KB: under the 48 KB of static shared memory a block may have.
struct BackwardSmem {
    // Query tile: Q [32, D] and dO [32, Dv]; key tile: K [32, D], V [32, Dv].
    float q[BWD_ROWS][BWD_LD];
    float g[BWD_ROWS][BWD_LD];
    float k[BWD_ROWS][BWD_LD];
    float v[BWD_ROWS][BWD_LD];
    // W and dS (before beta) of the entry tile [query row][key].
    float w[BWD_ROWS][LWPF_TILE_K + 1];
    float ds[BWD_ROWS][LWPF_TILE_K + 1];
    // lse and Delta of the query rows (-inf and 0 past Nq), key validity.
    float lse[BWD_ROWS];
    float delta[BWD_ROWS];
    unsigned char valid[LWPF_TILE_K];
};

// Rows r0 .. r0 + 32 of a [n, width] row-major matrix into a tile; zeros past
// n rows or width columns.
__device__ __forceinline__ void stage_rows(float (*dst)[BWD_LD], const float *src, int r0, int n,
                                           int width) {
    for (int idx = threadIdx.x; idx < BWD_ROWS * LWPF_BWD_MAX_D; idx += LWPF_THREADS) {
        const int row = idx / LWPF_BWD_MAX_D, col = idx % LWPF_BWD_MAX_D;
        const bool in = r0 + row < n && col < width;
        dst[row][col] = in ? src[(u64)(r0 + row) * width + col] : 0.0f;
    }
}

// lse and Delta of query rows i0 .. i0 + 32 of head bh.
__device__ __forceinline__ void stage_row_stats(const LwpfBackwardParams &p, BackwardSmem &sm,
                                                int bh, int i0) {
    for (int r = threadIdx.x; r < BWD_ROWS; r += LWPF_THREADS) {
        const bool in = i0 + r < p.n_q;
        const u64 row = (u64)bh * p.n_q + i0 + r;
        sm.lse[r] = in ? p.lse_ptr[row] : -INFINITY;
        sm.delta[r] = in ? p.delta_ptr[row] : 0.0f;
    }
}

// Which keys j0 .. j0 + 32 of batch item b_item are real.
__device__ __forceinline__ void stage_valid(const LwpfBackwardParams &p, BackwardSmem &sm,
                                            int b_item, int j0) {
    for (int c = threadIdx.x; c < LWPF_TILE_K; c += LWPF_THREADS) {
        sm.valid[c] = j0 + c < p.n_k && key_is_valid(p.valid_ptr, p.n_k, b_item, j0 + c);
    }
}

// The entry tile of query rows i0.. and keys j0.. from the staged tiles.
// Thread t takes row t / 4 and the eight consecutive keys from 8 * (t % 4)
// (consecutive, so that each Philox block serves four of them). Writes W
// (NEED_W) and dS (NEED_DS) to shared memory; returns the thread's part of
// its row's gradient reaching b (NEED_GB). Empty rows (lse = -inf), rows past
// Nq and padded keys get W = dS = 0: they pass no gradient anywhere.
template <bool NEED_W, bool NEED_DS, bool NEED_GB>
__device__ __forceinline__ float entry_tile(const LwpfBackwardParams &p, BackwardSmem &sm, int bh,
                                            int i0, int j0, float share) {
    const int t = threadIdx.x;
    const int r = t / BWD_THREADS_PER_ROW;
    const int c0 = (t % BWD_THREADS_PER_ROW) * BWD_ENTRIES;
    const int row = i0 + r;
    const float lse = sm.lse[r];
    const float delta = sm.delta[r];
    const bool live = row < p.n_q && lse != -INFINITY;

    // Scores, bit for bit as score_tile computes them.
    float s[BWD_ENTRIES];
    for (int u = 0; u < BWD_ENTRIES; ++u) {
        s[u] = 0.0f;
    }
    for (int dd = 0; dd < p.d; ++dd) {
        const float qv = sm.q[r][dd];
        for (int u = 0; u < BWD_ENTRIES; ++u) {
            s[u] = fmaf(qv, sm.k[c0 + u][dd], s[u]);
        }
    }
    for (int u = 0; u < BWD_ENTRIES; ++u) {
        s[u] = __fmul_rn(p.beta, s[u]);
    }

    // dP = dO V^T; the center pass needs it only for forgotten entries that
    // stay in the numerator.
    float dp[BWD_ENTRIES];
    for (int u = 0; u < BWD_ENTRIES; ++u) {
        dp[u] = 0.0f;
    }
    if (NEED_DS || (NEED_GB && !p.drop_forgotten)) {
        for (int dd = 0; dd < p.d_v; ++dd) {
            const float gv = sm.g[r][dd];
            for (int u = 0; u < BWD_ENTRIES; ++u) {
                dp[u] = fmaf(gv, sm.v[c0 + u][dd], dp[u]);
            }
        }
    }

    const bool dropout = p.dropout_p > 0.0f;
    const float drop_scale = 1.0f / (1.0f - p.dropout_p);
    DropoutStream rng;
    rng.init(p.seed_lo, p.seed_hi);
    const u64 row_entry = ((u64)bh * p.n_q + row) * p.n_k;
    // Weight of a forgotten entry, exp(b - lse): 0 for b = -inf.
    const float p_b = live ? expf(p.b - lse) : 0.0f;
    const float w_forgotten = p.drop_forgotten ? 0.0f : 1.0f;

    float gb = 0.0f;
    for (int u = 0; u < BWD_ENTRIES; ++u) {
        const int c = c0 + u;
        float w = 0.0f, ds = 0.0f;
        if (live && sm.valid[c]) {
            float rd = 1.0f;
            if (dropout) {
                rd = rng.keep(row_entry + j0 + c, p.dropout_p) ? drop_scale : 0.0f;
            }
            const float x = s[u];
            if (x > p.z) {
                const float pk = expf(x - lse);
                w = pk * rd;
                ds = pk * (rd * dp[u] - delta);
            } else {
                // No gradient through the mask; b collects this entry's share.
                w = w_forgotten * p_b * rd;
                if (NEED_GB) {
                    gb += p_b * (w_forgotten * rd * dp[u] - delta);
                }
            }
            if (p.center_gradient && x == p.m) {
                ds += share;
            }
        }
        if (NEED_W) {
            sm.w[r][c] = w;
        }
        if (NEED_DS) {
            sm.ds[r][c] = ds;
        }
    }
    return gb;
}

// Grid: ceil(B * H * Nq / LWPF_THREADS) blocks. Delta_i = dO_i . O_i.
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_backward_prep_f32(LwpfBackwardParams p) {
    const u64 row = (u64)blockIdx.x * LWPF_THREADS + threadIdx.x;
    if (row >= (u64)p.batch * p.heads * p.n_q) {
        return;
    }
    const float *g = p.do_ptr + row * p.d_v;
    const float *o = p.o_ptr + row * p.d_v;
    float acc = 0.0f;
    for (int c = 0; c < p.d_v; ++c) {
        acc = fmaf(g[c], o[c], acc);
    }
    p.delta_ptr[row] = acc;
}

// The two kernels that walk the key tiles of one query tile: the per-row
// gradient reaching b (CENTER) or dQ.
template <bool CENTER>
__device__ __forceinline__ void query_tile_pass(const LwpfBackwardParams &p) {
    __shared__ BackwardSmem sm;
    // The four partial sums of each row's gradient reaching b.
    __shared__ float row_gb[BWD_ROWS][BWD_THREADS_PER_ROW];

    const int t = threadIdx.x;
    const int q_tiles = ceil_div(p.n_q, LWPF_TILE_Q);
    const int bh = blockIdx.x / q_tiles;
    const int i0 = (blockIdx.x % q_tiles) * LWPF_TILE_Q;
    const int b_item = bh / p.heads;
    const int r = t / BWD_THREADS_PER_ROW;
    const int col0 = t % BWD_THREADS_PER_ROW;
    const float *k_head = p.k_ptr + (u64)bh * p.n_k * p.d;
    const float *v_head = p.v_ptr + (u64)bh * p.n_k * p.d_v;
    const float share = (!CENTER && p.center_gradient) ? p.center_ptr->share : 0.0f;

    stage_rows(sm.q, p.q_ptr + (u64)bh * p.n_q * p.d, i0, p.n_q, p.d);
    stage_rows(sm.g, p.do_ptr + (u64)bh * p.n_q * p.d_v, i0, p.n_q, p.d_v);
    stage_row_stats(p, sm, bh, i0);

    float gb = 0.0f;
    // dQ of row r, columns col0 + 4 e (before beta).
    float acc[BWD_ACC];
    for (int e = 0; e < BWD_ACC; ++e) {
        acc[e] = 0.0f;
    }
    for (int j0 = 0; j0 < p.n_k; j0 += LWPF_TILE_K) {
        // The previous tile's reads are done before the writes.
        __syncthreads();
        stage_rows(sm.k, k_head, j0, p.n_k, p.d);
        if (!CENTER || !p.drop_forgotten) {
            stage_rows(sm.v, v_head, j0, p.n_k, p.d_v);
        }
        stage_valid(p, sm, b_item, j0);
        __syncthreads();

        if (CENTER) {
            gb += entry_tile<false, false, true>(p, sm, bh, i0, j0, share);
        } else {
            entry_tile<false, true, false>(p, sm, bh, i0, j0, share);
            __syncthreads();
            for (int c = 0; c < LWPF_TILE_K; ++c) {
                const float ds = sm.ds[r][c];
                for (int e = 0; e < BWD_ACC; ++e) {
                    acc[e] = fmaf(ds, sm.k[c][col0 + BWD_THREADS_PER_ROW * e], acc[e]);
                }
            }
        }
    }

    const int row = i0 + r;
    if (CENTER) {
        // Joined in a fixed order, so the row sum is reproducible.
        row_gb[r][col0] = gb;
        __syncthreads();
        if (col0 == 0 && row < p.n_q) {
            float sum = 0.0f;
            for (int k = 0; k < BWD_THREADS_PER_ROW; ++k) {
                sum += row_gb[r][k];
            }
            p.center_rows_ptr[(u64)bh * p.n_q + row] = sum;
        }
    } else if (row < p.n_q) {
        float *dq_row = p.dq_ptr + ((u64)bh * p.n_q + row) * p.d;
        for (int e = 0; e < BWD_ACC; ++e) {
            const int c = col0 + BWD_THREADS_PER_ROW * e;
            if (c < p.d) {
                dq_row[c] = p.beta * acc[e];
            }
        }
    }
}

// Grid: one block per (b * H + h, query tile).
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_backward_center_f32(LwpfBackwardParams p) {
    query_tile_pass<true>(p);
}

// Grid: one block per (b * H + h, query tile).
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_backward_dq_f32(LwpfBackwardParams p) {
    query_tile_pass<false>(p);
}

// Grid: one block. g_b = sum of the per-row sums, in f64 and a fixed order
// (strided partial sums, then a tree); share = g_b / at_median.
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_backward_center_reduce(LwpfBackwardParams p) {
    __shared__ double part[LWPF_THREADS];
    const int t = threadIdx.x;
    const u64 rows = (u64)p.batch * p.heads * p.n_q;
    double sum = 0.0;
    for (u64 i = t; i < rows; i += LWPF_THREADS) {
        sum += (double)p.center_rows_ptr[i];
    }
    part[t] = sum;
    for (int half = LWPF_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) {
            part[t] += part[t + half];
        }
    }
    __syncthreads();
    if (t == 0) {
        const double g_b = part[0];
        p.center_ptr->g_b = g_b;
        p.center_ptr->share = p.at_median > 0 ? (float)(g_b / (double)p.at_median) : 0.0f;
    }
}

// Grid: one block per (b * H + h, key tile).
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_backward_dkdv_f32(LwpfBackwardParams p) {
    __shared__ BackwardSmem sm;

    const int t = threadIdx.x;
    const int k_tiles = ceil_div(p.n_k, LWPF_TILE_K);
    const int bh = blockIdx.x / k_tiles;
    const int j0 = (blockIdx.x % k_tiles) * LWPF_TILE_K;
    const int b_item = bh / p.heads;
    // Thread t owns key kk of the tile (and, for dQ, query row kk of the
    // query tile) and the columns col0 + 4 e.
    const int kk = t / BWD_THREADS_PER_ROW;
    const int col0 = t % BWD_THREADS_PER_ROW;
    const float *q_head = p.q_ptr + (u64)bh * p.n_q * p.d;
    const float *do_head = p.do_ptr + (u64)bh * p.n_q * p.d_v;
    const float share = p.center_gradient ? p.center_ptr->share : 0.0f;

    stage_rows(sm.k, p.k_ptr + (u64)bh * p.n_k * p.d, j0, p.n_k, p.d);
    stage_rows(sm.v, p.v_ptr + (u64)bh * p.n_k * p.d_v, j0, p.n_k, p.d_v);
    stage_valid(p, sm, b_item, j0);

    float acc_dk[BWD_ACC], acc_dv[BWD_ACC];
    for (int e = 0; e < BWD_ACC; ++e) {
        acc_dk[e] = 0.0f;
        acc_dv[e] = 0.0f;
    }
    for (int i0 = 0; i0 < p.n_q; i0 += LWPF_TILE_Q) {
        __syncthreads();
        stage_rows(sm.q, q_head, i0, p.n_q, p.d);
        stage_rows(sm.g, do_head, i0, p.n_q, p.d_v);
        stage_row_stats(p, sm, bh, i0);
        __syncthreads();

        entry_tile<true, true, false>(p, sm, bh, i0, j0, share);
        __syncthreads();

        // dV_j += sum_i W_ij dO_i and dK_j += sum_i dS_ij Q_i (rows past Nq
        // have W = dS = 0 and zero tiles).
        for (int r = 0; r < BWD_ROWS; ++r) {
            const float w = sm.w[r][kk];
            const float ds = sm.ds[r][kk];
            for (int e = 0; e < BWD_ACC; ++e) {
                const int c = col0 + BWD_THREADS_PER_ROW * e;
                acc_dv[e] = fmaf(w, sm.g[r][c], acc_dv[e]);
                acc_dk[e] = fmaf(ds, sm.q[r][c], acc_dk[e]);
            }
        }

        // dQ_i += beta sum_j dS_ij K_j for this key tile, by atomics.
        if (p.dq_atomic && i0 + kk < p.n_q) {
            float *dq_row = p.dq_ptr + ((u64)bh * p.n_q + i0 + kk) * p.d;
            for (int e = 0; e < BWD_ACC; ++e) {
                const int c = col0 + BWD_THREADS_PER_ROW * e;
                if (c >= p.d) {
                    continue;
                }
                float a = 0.0f;
                for (int j = 0; j < LWPF_TILE_K; ++j) {
                    a = fmaf(sm.ds[kk][j], sm.k[j][c], a);
                }
                if (a != 0.0f) {
                    atomicAdd(dq_row + c, p.beta * a);
                }
            }
        }
    }

    const int key = j0 + kk;
    if (key >= p.n_k) {
        return;
    }
    float *dk_row = p.dk_ptr + ((u64)bh * p.n_k + key) * p.d;
    float *dv_row = p.dv_ptr + ((u64)bh * p.n_k + key) * p.d_v;
    for (int e = 0; e < BWD_ACC; ++e) {
        const int c = col0 + BWD_THREADS_PER_ROW * e;
        if (c < p.d) {
            dk_row[c] = p.beta * acc_dk[e];
        }
        if (c < p.d_v) {
            dv_row[c] = acc_dv[e];
        }
    }
}
