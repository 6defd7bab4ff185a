// Score tiles s = beta * q . k, recomputed from Q and K wherever they are
// needed. The median and the forward pass both get their scores from
// score_tile, with the same tiles and the same order of operations, so each
// score has the same bits in both and the median is one of the forward's
// scores exactly.
#ifndef LWPF_SCORES_CUH
#define LWPF_SCORES_CUH

#include "common.cuh"
#include "mma.cuh"

// Head-dimension chunk staged in shared memory per step.
#define LWPF_SCORE_DC 32
// Scores of a tile per thread: TILE_Q * TILE_K / THREADS.
#define LWPF_SCORES_PER_THREAD (LWPF_TILE_Q * LWPF_TILE_K / LWPF_THREADS)
// Threads that share one query row of a tile.
#define LWPF_THREADS_PER_ROW (LWPF_THREADS / LWPF_TILE_Q)

// Staged chunks of Q [TILE_Q, DC] and K [TILE_K, DC], rows padded by four
// floats: the SIMT loop's lanes read different rows of K, and an mma
// fragment's lanes read rows g and columns t (bank 4 g + t), all in
// different banks. `s` takes the tensor-core path's finished tile.
struct ScoreSmem {
    float q[LWPF_TILE_Q][LWPF_SCORE_DC + 4];
    float k[LWPF_TILE_K][LWPF_SCORE_DC + 4];
    float s[LWPF_TILE_Q][LWPF_TILE_K + 1];
};

// Row of the tile that thread t works on, and its u-th key column.
__device__ __forceinline__ int tile_row(int t) { return t / LWPF_THREADS_PER_ROW; }
__device__ __forceinline__ int tile_col(int t, int u) {
    return t % LWPF_THREADS_PER_ROW + LWPF_THREADS_PER_ROW * u;
}

// Whether scores of inputs of type T are formed on tensor cores. bf16 and
// fp16 values are exact in tf32, so the tf32 mma takes them unrounded; its
// products are exact wherever they stay in f32's normal range (always for
// fp16; bf16 inputs whose products underflow meet the tensor cores' own,
// undocumented, handling of subnormals). The accumulation rounds as the
// hardware does, not as IEEE f32 does. f32 inputs stay on the CUDA cores,
// in an fmaf chain (tf32 would round the inputs).
template <class T>
struct ScoresOnTensorCores {
    static constexpr bool value = true;
};
template <>
struct ScoresOnTensorCores<float> {
    static constexpr bool value = false;
};

// The tensor-core score tile: 4 warps, each owning the 16-row half
// (warp % 2) of the tile and two 8-key column blocks (2 (warp / 2) and the
// next), so 8 m16n8k8 products cover the [32, 32] tile per 8 columns of d.
// acc holds the warp's two accumulators across calls (zeroed by the caller).
// Reads rows of q and k with leading dimensions LDQ, LDK; columns k0 ..
// k0 + 8 must be staged (zeros past d).
struct MmaScoreAcc {
    MmaFragC c[2];
};

__device__ __forceinline__ void mma_score_zero(MmaScoreAcc &acc) {
    for (int n = 0; n < 2; ++n) {
        for (int i = 0; i < 4; ++i) {
            acc.c[n].x[i] = 0.0f;
        }
    }
}

// The warp-to-fragment split below covers a 32 x 32 tile with four warps.
static_assert(LWPF_THREADS == 128 && LWPF_TILE_Q == 32 && LWPF_TILE_K == 32,
              "mma_score_step and mma_score_store assume 4 warps and 32 x 32 tiles");

template <int LDQ, int LDK>
__device__ __forceinline__ void mma_score_step(const float (*q)[LDQ], const float (*k)[LDK],
                                               int k0, MmaScoreAcc &acc) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int m0 = 16 * (warp % 2);
    MmaFragA a;
    for (int i = 0; i < 4; ++i) {
        a.x[i] = q[m0 + mma_a_row(lane, i)][k0 + mma_a_col(lane, i)];
    }
    for (int n = 0; n < 2; ++n) {
        const int n0 = 8 * (2 * (warp / 2) + n);
        // B[kk][key] = K[key][k0 + kk].
        MmaFragB b;
        for (int i = 0; i < 2; ++i) {
            b.x[i] = k[n0 + mma_b_col(lane, i)][k0 + mma_b_row(lane, i)];
        }
        // The operands are bf16 or fp16 values, exact in tf32 already.
        mma_16x8x8_tf32<false>(acc.c[n], a, b, acc.c[n]);
    }
}

// Writes beta * acc to the tile out [32][LDO]: the finished scores.
template <int LDO>
__device__ __forceinline__ void mma_score_store(const MmaScoreAcc &acc, float beta,
                                                float (*out)[LDO]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int m0 = 16 * (warp % 2);
    for (int n = 0; n < 2; ++n) {
        const int n0 = 8 * (2 * (warp / 2) + n);
        for (int i = 0; i < 4; ++i) {
            out[m0 + mma_c_row(lane, i)][n0 + mma_c_col(lane, i)] =
                __fmul_rn(beta, acc.c[n].x[i]);
        }
    }
}

// Scores of rows i0 .. i0 + TILE_Q and keys j0 .. j0 + TILE_K of one head:
// thread t gets out[u] = s[tile_row(t)][tile_col(t, u)]. q_head and k_head
// point at the head's first row ([Nq, D] and [Nk, D]). Rows and keys past
// the end read as zero vectors; the caller ignores their scores.
//
// Each score is one accumulation over d ascending from 0 (an fmaf chain on
// the CUDA cores; on tensor cores the same sequence of mma of 8 columns
// each, zeros past d, whose internal rounding is the hardware's and only
// emulated here), then one rounded product with beta. Every kernel that
// needs a score (median, forward, backward) issues that same sequence on
// the same operands, so a score has the same bits everywhere. Must be called by every thread
// of the block (it synchronizes); it begins with a barrier, so the caller
// may still be reading the previous tile's results when it calls.
template <class T>
__device__ __forceinline__ void score_tile(const T *q_head, const T *k_head, int i0, int j0,
                                           int n_q, int n_k, int d, float beta, ScoreSmem &sm,
                                           float out[LWPF_SCORES_PER_THREAD]) {
    constexpr bool tensor_cores = ScoresOnTensorCores<T>::value;
    const int t = threadIdx.x;
    const int r = tile_row(t);
    for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
        out[u] = 0.0f;
    }
    MmaScoreAcc acc;
    mma_score_zero(acc);

    for (int d0 = 0; d0 < d; d0 += LWPF_SCORE_DC) {
        const int dc = min(LWPF_SCORE_DC, d - d0);

        // Stage the chunk; consecutive threads read consecutive d.
        __syncthreads();
        for (int idx = t; idx < LWPF_TILE_Q * LWPF_SCORE_DC; idx += LWPF_THREADS) {
            int row = idx / LWPF_SCORE_DC, col = idx % LWPF_SCORE_DC;
            bool in = i0 + row < n_q && col < dc;
            sm.q[row][col] = in ? load_f32(q_head, (u64)(i0 + row) * d + d0 + col) : 0.0f;
        }
        for (int idx = t; idx < LWPF_TILE_K * LWPF_SCORE_DC; idx += LWPF_THREADS) {
            int row = idx / LWPF_SCORE_DC, col = idx % LWPF_SCORE_DC;
            bool in = j0 + row < n_k && col < dc;
            sm.k[row][col] = in ? load_f32(k_head, (u64)(j0 + row) * d + d0 + col) : 0.0f;
        }
        __syncthreads();

        if constexpr (tensor_cores) {
            for (int k0 = 0; k0 < dc; k0 += 8) {
                mma_score_step(sm.q, sm.k, k0, acc);
            }
        } else {
            for (int dd = 0; dd < dc; ++dd) {
                float qv = sm.q[r][dd];
                for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
                    out[u] = fmaf(qv, sm.k[tile_col(t, u)][dd], out[u]);
                }
            }
        }
    }

    if constexpr (tensor_cores) {
        // The tile is exchanged through shared memory: the fragment layout
        // is not the thread-to-score map of the callers.
        mma_score_store(acc, beta, sm.s);
        __syncthreads();
        for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
            out[u] = sm.s[r][tile_col(t, u)];
        }
    } else {
        // Rounded on its own: a contracted fma here would change the bits.
        for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
            out[u] = __fmul_rn(beta, out[u]);
        }
    }
}

#endif
