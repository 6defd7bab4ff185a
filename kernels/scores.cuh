// Score tiles s = beta * q . k, recomputed from Q and K wherever they are
// needed. The median and the forward pass both get their scores from
// score_tile, with the same tiles and the same order of operations, so each
// score has the same bits in both and the median is one of the forward's
// scores exactly.
#ifndef LWPF_SCORES_CUH
#define LWPF_SCORES_CUH

#include "common.cuh"

// Head-dimension chunk staged in shared memory per step.
#define LWPF_SCORE_DC 32
// Scores of a tile per thread: TILE_Q * TILE_K / THREADS.
#define LWPF_SCORES_PER_THREAD (LWPF_TILE_Q * LWPF_TILE_K / LWPF_THREADS)
// Threads that share one query row of a tile.
#define LWPF_THREADS_PER_ROW (LWPF_THREADS / LWPF_TILE_Q)

// Staged chunks of Q [TILE_Q, DC] and K [TILE_K, DC]; rows padded by one
// float so that threads reading different rows hit different banks.
struct ScoreSmem {
    float q[LWPF_TILE_Q][LWPF_SCORE_DC + 1];
    float k[LWPF_TILE_K][LWPF_SCORE_DC + 1];
};

// Row of the tile that thread t works on, and its u-th key column.
__device__ __forceinline__ int tile_row(int t) { return t / LWPF_THREADS_PER_ROW; }
__device__ __forceinline__ int tile_col(int t, int u) {
    return t % LWPF_THREADS_PER_ROW + LWPF_THREADS_PER_ROW * u;
}

// Scores of rows i0 .. i0 + TILE_Q and keys j0 .. j0 + TILE_K of one head:
// thread t gets out[u] = s[tile_row(t)][tile_col(t, u)]. q_head and k_head
// point at the head's first row ([Nq, D] and [Nk, D]). Rows and keys past
// the end read as zero vectors; the caller ignores their scores.
//
// Each score is one fmaf chain over d in ascending order starting from 0,
// then one rounded product with beta. Must be called by every thread of the
// block (it synchronizes); it begins with a barrier, so the caller may still
// be reading the previous tile's results when it calls.
__device__ __forceinline__ void score_tile(const float *q_head, const float *k_head, int i0,
                                           int j0, int n_q, int n_k, int d, float beta,
                                           ScoreSmem &sm, float out[LWPF_SCORES_PER_THREAD]) {
    const int t = threadIdx.x;
    const int r = tile_row(t);
    for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
        out[u] = 0.0f;
    }

    for (int d0 = 0; d0 < d; d0 += LWPF_SCORE_DC) {
        const int dc = min(LWPF_SCORE_DC, d - d0);

        // Stage the chunk; consecutive threads read consecutive d.
        __syncthreads();
        for (int idx = t; idx < LWPF_TILE_Q * LWPF_SCORE_DC; idx += LWPF_THREADS) {
            int row = idx / LWPF_SCORE_DC, col = idx % LWPF_SCORE_DC;
            bool in = i0 + row < n_q && col < dc;
            sm.q[row][col] = in ? q_head[(u64)(i0 + row) * d + d0 + col] : 0.0f;
        }
        for (int idx = t; idx < LWPF_TILE_K * LWPF_SCORE_DC; idx += LWPF_THREADS) {
            int row = idx / LWPF_SCORE_DC, col = idx % LWPF_SCORE_DC;
            bool in = j0 + row < n_k && col < dc;
            sm.k[row][col] = in ? k_head[(u64)(j0 + row) * d + d0 + col] : 0.0f;
        }
        __syncthreads();

        for (int dd = 0; dd < dc; ++dd) {
            float qv = sm.q[r][dd];
            for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
                out[u] = fmaf(qv, sm.k[tile_col(t, u)][dd], out[u]);
            }
        }
    }

    // Rounded on its own: a contracted fma here would change the bits.
    for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
        out[u] = __fmul_rn(beta, out[u]);
    }
}

#endif
