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
// The launches of one call (src/op/kernels/backward.rs, backward_launches):
//   1. lwpf_backward_prep_f32: Delta_i, one thread per row.
//   2. With the center gradient only: lwpf_backward_center_f32_d*, one block
//      per (b * H + h, query tile), sums per row the gradient reaching b,
//        exp(b - lse_i) sum_{j forgotten} (w r_ij dP_ij - Delta_i),
//      w = 0 if drop_forgotten else 1; lwpf_backward_center_reduce (one block)
//      adds the rows up and writes share = g_b / at_median. The share must be
//      known before any dS is formed, hence a pass of its own.
//   3. lwpf_backward_dkdv_f32_d*: one block per (b * H + h, key tile); dK and
//      dV of the tile's keys stay in registers while the block walks the
//      query tiles. With dq_atomic it also adds each tile's beta dS K to dQ
//      with float atomics.
//   4. Without dq_atomic: lwpf_backward_dq_f32_d*, one block per (b * H + h,
//      query tile), walks the key tiles with dQ in registers.
// The tiled kernels (2 to 4) come in two builds, _d64 for D, Dv <= 64 and
// _d128 for D, Dv <= 128; the host runs the narrower one that holds the
// call. Both do the same arithmetic in the same order (a column past D or Dv
// is a zero that no sum reads), so the build changes no bit of a result.
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
// Scores have the forward's bits: the same accumulation over d ascending
// from 0 (an fmaf chain, or the same mma sequence for 16-bit inputs), then
// one rounded product with beta (scores.cuh), here read from tiles staged
// whole in shared memory. So kept / forgotten decisions and median
// ties are the forward's exactly.
#include "common.cuh"
#include "philox.cuh"
#include "scores.cuh"

#if LWPF_TILE_Q != LWPF_TILE_K
#error "the backward stages Q, dO, K and V tiles of one row count"
#endif

// Rows of every staged tile; threads per row of a [32, 32] entry tile and
// entries per thread.
#define BWD_ROWS LWPF_TILE_Q
#define BWD_THREADS_PER_ROW (LWPF_THREADS / BWD_ROWS)
#define BWD_ENTRIES (LWPF_TILE_K / BWD_THREADS_PER_ROW)

// The tiles of one block, for D, Dv <= MAX_D and inputs of type T. Rows are
// one float longer than the widest row, so that consecutive rows start in
// different banks. The kernels are built for MAX_D = LWPF_BWD_NARROW_D and
// LWPF_BWD_MAX_D (params.h says why two).
template <int MAX_D, class T>
struct BackwardSmem {
    // Query tile: Q [32, D] and dO [32, Dv]; key tile: K [32, D], V [32, Dv].
    float q[BWD_ROWS][MAX_D + 1];
    float g[BWD_ROWS][MAX_D + 1];
    float k[BWD_ROWS][MAX_D + 1];
    float v[BWD_ROWS][MAX_D + 1];
    // W and dS (before beta) of the entry tile [query row][key].
    float w[BWD_ROWS][LWPF_TILE_K + 1];
    float ds[BWD_ROWS][LWPF_TILE_K + 1];
    // The score tile from the tensor cores (unused, one row, on f32 inputs).
    float s[ScoresOnTensorCores<T>::value ? BWD_ROWS : 1][LWPF_TILE_K + 1];
    // lse and Delta of the query rows (-inf and 0 past Nq), key validity.
    float lse[BWD_ROWS];
    float delta[BWD_ROWS];
    unsigned char valid[LWPF_TILE_K];
};

static_assert(sizeof(BackwardSmem<LWPF_BWD_NARROW_D, LwpfBf16>) <= 48 * 1024,
              "the narrow tiles must fit the static shared memory of a block");
static_assert(sizeof(BackwardSmem<LWPF_BWD_MAX_D, LwpfBf16>) == LWPF_BWD_WIDE_SMEM,
              "LWPF_BWD_WIDE_SMEM must be the widest tiles' size: the host launches with it");
static_assert(sizeof(BackwardSmem<LWPF_BWD_MAX_D, float>) <= LWPF_BWD_WIDE_SMEM,
              "the f32 wide tiles must fit what the host launches with");

// The block's tiles: static shared memory for the narrow build (42 KB, 46 KB
// with the tensor-core score tile), dynamic for the wide one (73 KB or 77 KB,
// past the 48 KB a static array may have).
template <int MAX_D, class T>
__device__ __forceinline__ BackwardSmem<MAX_D, T> &backward_smem() {
    if constexpr (MAX_D <= LWPF_BWD_NARROW_D) {
        __shared__ BackwardSmem<MAX_D, T> sm;
        return sm;
    } else {
        void *base = dynamic_smem(sizeof(BackwardSmem<MAX_D, T>));
        return *static_cast<BackwardSmem<MAX_D, T> *>(base);
    }
}

// Rows r0 .. r0 + 32 of a [n, width] row-major matrix into a tile of rows
// LD - 1 wide, as f32; zeros past n rows or width columns.
template <int LD, class T>
__device__ __forceinline__ void stage_rows(float (*dst)[LD], const T *src, int r0, int n,
                                           int width) {
    constexpr int max_d = LD - 1;
    for (int idx = threadIdx.x; idx < BWD_ROWS * max_d; idx += LWPF_THREADS) {
        const int row = idx / max_d, col = idx % max_d;
        const bool in = r0 + row < n && col < width;
        dst[row][col] = in ? load_f32(src, (u64)(r0 + row) * width + col) : 0.0f;
    }
}

// lse and Delta of query rows i0 .. i0 + 32 of head bh.
template <class Smem>
__device__ __forceinline__ void stage_row_stats(const LwpfBackwardParams &p, Smem &sm, int bh,
                                                int i0) {
    for (int r = threadIdx.x; r < BWD_ROWS; r += LWPF_THREADS) {
        const bool in = i0 + r < p.n_q;
        const u64 row = (u64)bh * p.n_q + i0 + r;
        sm.lse[r] = in ? p.lse_ptr[row] : -INFINITY;
        sm.delta[r] = in ? p.delta_ptr[row] : 0.0f;
    }
}

// Which keys j0 .. j0 + 32 of batch item b_item are real.
template <class Smem>
__device__ __forceinline__ void stage_valid(const LwpfBackwardParams &p, Smem &sm, int b_item,
                                            int j0) {
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
//
// Must be called by every thread of the block, with a barrier between
// calls: the tensor-core path exchanges the score tile through sm.s.
template <bool NEED_W, bool NEED_DS, bool NEED_GB, int MAX_D, class T>
__device__ __forceinline__ float entry_tile(const LwpfBackwardParams &p, BackwardSmem<MAX_D, T> &sm,
                                            int bh, int i0, int j0, float share) {
    const int t = threadIdx.x;
    const int r = t / BWD_THREADS_PER_ROW;
    const int c0 = (t % BWD_THREADS_PER_ROW) * BWD_ENTRIES;
    const int row = i0 + r;
    const float lse = sm.lse[r];
    const float delta = sm.delta[r];
    const bool live = row < p.n_q && lse != -INFINITY;

    // Scores, bit for bit as score_tile computes them.
    float s[BWD_ENTRIES];
    if constexpr (ScoresOnTensorCores<T>::value) {
        MmaScoreAcc acc;
        mma_score_zero(acc);
        for (int k0 = 0; k0 < p.d; k0 += 8) {
            mma_score_step(sm.q, sm.k, k0, acc);
        }
        mma_score_store(acc, p.beta, sm.s);
        __syncthreads();
        for (int u = 0; u < BWD_ENTRIES; ++u) {
            s[u] = sm.s[r][c0 + u];
        }
    } else {
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
template <bool CENTER, int MAX_D, class T>
__device__ __forceinline__ void query_tile_pass(const LwpfBackwardParams &p) {
    // Columns of a D-wide accumulator row that each thread owns.
    constexpr int acc_n = MAX_D / BWD_THREADS_PER_ROW;
    BackwardSmem<MAX_D, T> &sm = backward_smem<MAX_D, T>();
    // The four partial sums of each row's gradient reaching b.
    __shared__ float row_gb[BWD_ROWS][BWD_THREADS_PER_ROW];

    const int t = threadIdx.x;
    const int q_tiles = ceil_div(p.n_q, LWPF_TILE_Q);
    const int bh = blockIdx.x / q_tiles;
    const int i0 = (blockIdx.x % q_tiles) * LWPF_TILE_Q;
    const int b_item = bh / p.heads;
    const int r = t / BWD_THREADS_PER_ROW;
    const int col0 = t % BWD_THREADS_PER_ROW;
    const T *k_head = static_cast<const T *>(p.k_ptr) + (u64)bh * p.n_k * p.d;
    const T *v_head = static_cast<const T *>(p.v_ptr) + (u64)bh * p.n_k * p.d_v;
    const float share = (!CENTER && p.center_gradient) ? p.center_ptr->share : 0.0f;

    stage_rows(sm.q, static_cast<const T *>(p.q_ptr) + (u64)bh * p.n_q * p.d, i0, p.n_q, p.d);
    stage_rows(sm.g, p.do_ptr + (u64)bh * p.n_q * p.d_v, i0, p.n_q, p.d_v);
    stage_row_stats(p, sm, bh, i0);

    float gb = 0.0f;
    // dQ of row r, columns col0 + 4 e (before beta).
    float acc[acc_n];
    for (int e = 0; e < acc_n; ++e) {
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
                for (int e = 0; e < acc_n; ++e) {
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
        for (int e = 0; e < acc_n; ++e) {
            const int c = col0 + BWD_THREADS_PER_ROW * e;
            if (c < p.d) {
                dq_row[c] = p.beta * acc[e];
            }
        }
    }
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

// The kernel that walks the query tiles of one key tile: dK, dV (and dQ by
// atomics).
template <int MAX_D, class T>
__device__ __forceinline__ void key_tile_pass(const LwpfBackwardParams &p) {
    // Columns of a D- or Dv-wide accumulator row that each thread owns.
    constexpr int acc_n = MAX_D / BWD_THREADS_PER_ROW;
    BackwardSmem<MAX_D, T> &sm = backward_smem<MAX_D, T>();

    const int t = threadIdx.x;
    const int k_tiles = ceil_div(p.n_k, LWPF_TILE_K);
    const int bh = blockIdx.x / k_tiles;
    const int j0 = (blockIdx.x % k_tiles) * LWPF_TILE_K;
    const int b_item = bh / p.heads;
    // Thread t owns key kk of the tile (and, for dQ, query row kk of the
    // query tile) and the columns col0 + 4 e.
    const int kk = t / BWD_THREADS_PER_ROW;
    const int col0 = t % BWD_THREADS_PER_ROW;
    const T *q_head = static_cast<const T *>(p.q_ptr) + (u64)bh * p.n_q * p.d;
    const float *do_head = p.do_ptr + (u64)bh * p.n_q * p.d_v;
    const float share = p.center_gradient ? p.center_ptr->share : 0.0f;

    stage_rows(sm.k, static_cast<const T *>(p.k_ptr) + (u64)bh * p.n_k * p.d, j0, p.n_k, p.d);
    stage_rows(sm.v, static_cast<const T *>(p.v_ptr) + (u64)bh * p.n_k * p.d_v, j0, p.n_k, p.d_v);
    stage_valid(p, sm, b_item, j0);

    float acc_dk[acc_n], acc_dv[acc_n];
    for (int e = 0; e < acc_n; ++e) {
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
            for (int e = 0; e < acc_n; ++e) {
                const int c = col0 + BWD_THREADS_PER_ROW * e;
                acc_dv[e] = fmaf(w, sm.g[r][c], acc_dv[e]);
                acc_dk[e] = fmaf(ds, sm.q[r][c], acc_dk[e]);
            }
        }

        // dQ_i += beta sum_j dS_ij K_j for this key tile, by atomics.
        if (p.dq_atomic && i0 + kk < p.n_q) {
            float *dq_row = p.dq_ptr + ((u64)bh * p.n_q + i0 + kk) * p.d;
            for (int e = 0; e < acc_n; ++e) {
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
    for (int e = 0; e < acc_n; ++e) {
        const int c = col0 + BWD_THREADS_PER_ROW * e;
        if (c < p.d) {
            dk_row[c] = p.beta * acc_dk[e];
        }
        if (c < p.d_v) {
            dv_row[c] = acc_dv[e];
        }
    }
}

// The entries of both builds and every input type, named
// <kernel>_<type>_d<MAX_D>. Grids: one block per (b * H + h, query tile) for
// center and dq, per (b * H + h, key tile) for dkdv. The d128 ones need
// LWPF_BWD_WIDE_SMEM bytes of dynamic shared memory.
#define LWPF_BACKWARD_ENTRIES(NAME, T)                                                          \
    extern "C" __global__ void __launch_bounds__(LWPF_THREADS)                                 \
        lwpf_backward_center_##NAME##_d64(LwpfBackwardParams p) {                              \
        query_tile_pass<true, LWPF_BWD_NARROW_D, T>(p);                                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(LWPF_THREADS)                                 \
        lwpf_backward_center_##NAME##_d128(LwpfBackwardParams p) {                             \
        query_tile_pass<true, LWPF_BWD_MAX_D, T>(p);                                           \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(LWPF_THREADS)                                 \
        lwpf_backward_dq_##NAME##_d64(LwpfBackwardParams p) {                                  \
        query_tile_pass<false, LWPF_BWD_NARROW_D, T>(p);                                       \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(LWPF_THREADS)                                 \
        lwpf_backward_dq_##NAME##_d128(LwpfBackwardParams p) {                                 \
        query_tile_pass<false, LWPF_BWD_MAX_D, T>(p);                                          \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(LWPF_THREADS)                                 \
        lwpf_backward_dkdv_##NAME##_d64(LwpfBackwardParams p) {                                \
        key_tile_pass<LWPF_BWD_NARROW_D, T>(p);                                                \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(LWPF_THREADS)                                 \
        lwpf_backward_dkdv_##NAME##_d128(LwpfBackwardParams p) {                               \
        key_tile_pass<LWPF_BWD_MAX_D, T>(p);                                                   \
    }

LWPF_BACKWARD_ENTRIES(f32, float)
LWPF_BACKWARD_ENTRIES(bf16, LwpfBf16)
LWPF_BACKWARD_ENTRIES(f16, LwpfF16)
