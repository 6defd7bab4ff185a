// The fused forward pass of partially forgetting attention (SPEC section 3).
//
// One block per (b * H + h, query tile of LWPF_TILE_Q rows). The block walks
// the key tiles; for each it recomputes the scores (score_tile), applies the
// forgetting function (kept iff s > z), the key padding mask and dropout, and
// folds the tile into per-row running statistics with the online softmax.
// Nothing of size Nq x Nk is stored. Q, K and V are f32, bf16 or fp16 (one
// entry each, lwpf_forward_<type>); they are staged as f32, the 16-bit ones'
// scores come from the tensor cores (scores.cuh), and all statistics, the
// value product and O are f32.
//
// Forgotten entries all have the same value b, so they are kept apart from
// the running maximum of the kept scores: a row counts them (c) and, when they
// stay in the numerator (drop_forgotten = 0), sums their values r_j V_j
// without any exponential. Only at the end are the two parts joined under the
// common maximum M = max(max kept s, b if c > 0). This never computes
// (-inf) - (-inf): a row with nothing kept has mk = -inf and contributes 0,
// and b = -inf contributes 0 as well.
//
// Thread t owns row tile_row(t) of the tile and the output columns
// t % 4 + 4 * k of that row. The four threads of a row compute the same row
// statistics from the shared score tile (the same operations in the same
// order, so they agree to the bit) instead of exchanging them.
#include "common.cuh"
#include "philox.cuh"
#include "scores.cuh"

#define LWPF_ACC_PER_THREAD (LWPF_MAX_DV / LWPF_THREADS_PER_ROW)

// T is the element type of Q, K and V.
template <class T>
__device__ __forceinline__ void forward(const LwpfForwardParams &p) {
    __shared__ ScoreSmem sm;
    // Scores of the current tile [TILE_Q, TILE_K], the tile's values
    // [TILE_K, Dv] and which of its keys are real.
    __shared__ float s_tile[LWPF_TILE_Q][LWPF_TILE_K + 1];
    __shared__ float v_tile[LWPF_TILE_K][LWPF_MAX_DV];
    __shared__ unsigned char valid_tile[LWPF_TILE_K];

    const int t = threadIdx.x;
    const int q_tiles = ceil_div(p.n_q, LWPF_TILE_Q);
    const int bh = blockIdx.x / q_tiles;
    const int i0 = (blockIdx.x % q_tiles) * LWPF_TILE_Q;
    const int b_item = bh / p.heads;
    const int r = tile_row(t);
    const int row = i0 + r;
    const int col0 = t % LWPF_THREADS_PER_ROW;
    const T *q_head = static_cast<const T *>(p.q_ptr) + (u64)bh * p.n_q * p.d;
    const T *k_head = static_cast<const T *>(p.k_ptr) + (u64)bh * p.n_k * p.d;
    const T *v_head = static_cast<const T *>(p.v_ptr) + (u64)bh * p.n_k * p.d_v;
    const float z = p.threshold_ptr->z;
    const float bias = p.threshold_ptr->b;
    const bool dropout = p.dropout_p > 0.0f;
    const float drop_scale = 1.0f / (1.0f - p.dropout_p);
    // Flat index of entry (row, 0) in the call: the dropout counter.
    const u64 row_entry = ((u64)bh * p.n_q + row) * p.n_k;

    // Running statistics of the row: max and normalizer of the kept scores,
    // forgotten count, and the two unnormalized outputs.
    float mk = -INFINITY;
    float lk = 0.0f;
    unsigned c_forgotten = 0;
    float acc[LWPF_ACC_PER_THREAD];
    float acc_forgotten[LWPF_ACC_PER_THREAD];
    for (int k = 0; k < LWPF_ACC_PER_THREAD; ++k) {
        acc[k] = 0.0f;
        acc_forgotten[k] = 0.0f;
    }
    DropoutStream rng;
    rng.init(p.seed_lo, p.seed_hi);

    float s[LWPF_SCORES_PER_THREAD];
    for (int j0 = 0; j0 < p.n_k; j0 += LWPF_TILE_K) {
        const int tk = min(LWPF_TILE_K, p.n_k - j0);

        // Stage the tile: scores, values, mask. score_tile opens with a
        // barrier, so the previous tile's reads are done before the writes.
        score_tile(q_head, k_head, i0, j0, p.n_q, p.n_k, p.d, p.beta, sm, s);
        for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
            s_tile[r][tile_col(t, u)] = s[u];
        }
        for (int idx = t; idx < LWPF_TILE_K * p.d_v; idx += LWPF_THREADS) {
            int j = idx / p.d_v, c = idx % p.d_v;
            v_tile[j][c] = j < tk ? load_f32(v_head, (u64)(j0 + j) * p.d_v + c) : 0.0f;
        }
        for (int j = t; j < LWPF_TILE_K; j += LWPF_THREADS) {
            valid_tile[j] = j < tk && key_is_valid(p.valid_ptr, p.n_k, b_item, j0 + j);
        }
        __syncthreads();

        if (row < p.n_q) {
            // The new running max of the kept scores, and the rescale of
            // what was summed under the old one (none while nothing is kept).
            float tile_max = -INFINITY;
            for (int j = 0; j < tk; ++j) {
                float x = s_tile[r][j];
                if (valid_tile[j] && x > z) {
                    tile_max = fmaxf(tile_max, x);
                }
            }
            const float new_mk = fmaxf(mk, tile_max);
            if (new_mk != -INFINITY) {
                const float rescale = expf(mk - new_mk);
                lk *= rescale;
                for (int k = 0; k < LWPF_ACC_PER_THREAD; ++k) {
                    acc[k] *= rescale;
                }
                mk = new_mk;
            }

            // Kept entries add exp(s - mk) to the normalizer and, scaled by
            // their dropout factor r_j, to the numerator; forgotten ones are
            // counted, and summed as r_j V_j when they stay in the numerator.
            for (int j = 0; j < tk; ++j) {
                if (!valid_tile[j]) {
                    continue;
                }
                const float x = s_tile[r][j];
                float rd = 1.0f;
                if (dropout) {
                    rd = rng.keep(row_entry + j0 + j, p.dropout_p) ? drop_scale : 0.0f;
                }
                if (x > z) {
                    const float w = expf(x - mk);
                    lk += w;
                    const float wr = w * rd;
                    for (int k = 0; k < LWPF_ACC_PER_THREAD; ++k) {
                        acc[k] = fmaf(wr, v_tile[j][col0 + LWPF_THREADS_PER_ROW * k], acc[k]);
                    }
                } else {
                    ++c_forgotten;
                    if (!p.drop_forgotten && rd != 0.0f) {
                        for (int k = 0; k < LWPF_ACC_PER_THREAD; ++k) {
                            const float v = v_tile[j][col0 + LWPF_THREADS_PER_ROW * k];
                            acc_forgotten[k] = fmaf(rd, v, acc_forgotten[k]);
                        }
                    }
                }
            }
        }
    }

    if (row >= p.n_q) {
        return;
    }

    // Join kept and forgotten parts under M; an empty row (M = -inf: no
    // valid key, or everything forgotten with b = -inf) is 0 with lse = -inf.
    const float m_all = c_forgotten > 0 ? fmaxf(mk, bias) : mk;
    float *o_row = p.o_ptr + ((u64)bh * p.n_q + row) * p.d_v;
    float lse = -INFINITY;
    if (m_all == -INFINITY) {
        for (int k = 0; k < LWPF_ACC_PER_THREAD; ++k) {
            const int c = col0 + LWPF_THREADS_PER_ROW * k;
            if (c < p.d_v) {
                o_row[c] = 0.0f;
            }
        }
    } else {
        const float e_kept = expf(mk - m_all);
        const float e_bias = c_forgotten > 0 ? expf(bias - m_all) : 0.0f;
        const float den = lk * e_kept + (float)c_forgotten * e_bias;
        const float inv = 1.0f / den;
        const float w_forgotten = p.drop_forgotten ? 0.0f : e_bias;
        for (int k = 0; k < LWPF_ACC_PER_THREAD; ++k) {
            const int c = col0 + LWPF_THREADS_PER_ROW * k;
            if (c < p.d_v) {
                o_row[c] = (acc[k] * e_kept + w_forgotten * acc_forgotten[k]) * inv;
            }
        }
        lse = m_all + logf(den);
    }
    if (col0 == 0) {
        p.lse_ptr[(u64)bh * p.n_q + row] = lse;
        p.forgotten_ptr[(u64)bh * p.n_q + row] = c_forgotten;
    }
}

extern "C" __global__ void __launch_bounds__(LWPF_THREADS) lwpf_forward_f32(LwpfForwardParams p) {
    forward<float>(p);
}

extern "C" __global__ void __launch_bounds__(LWPF_THREADS) lwpf_forward_bf16(LwpfForwardParams p) {
    forward<LwpfBf16>(p);
}

extern "C" __global__ void __launch_bounds__(LWPF_THREADS) lwpf_forward_f16(LwpfForwardParams p) {
    forward<LwpfF16>(p);
}
