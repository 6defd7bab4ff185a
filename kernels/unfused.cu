// The elementwise kernels of the unfused CUDA baseline, which computes the op
// the way the authors' PyTorch code does: cuBLAS materializes the scores
// S = beta Q K^T [B * H * Nq, Nk] (and dP = dO V^T in the backward), and
// these kernels work on those matrices row by row. It exists to be measured
// against the fused kernels; SPEC section 8's memory bound does not apply.
//
//   forward:  S (cuBLAS); with a median center, three radix passes
//             (lwpf_unfused_median_hist_f32 here, lwpf_median_select of
//             median.cu) over S itself; lwpf_unfused_softmax_f32 -> W, lse,
//             forgotten counts; O = W V (cuBLAS).
//   backward: S and dP (cuBLAS); Delta (lwpf_backward_prep_f32);
//             lwpf_unfused_dscore_f32 -> W and dS; with the center gradient,
//             lwpf_backward_center_reduce and lwpf_unfused_ties_f32;
//             dV = W^T dO, dQ = beta dS K, dK = beta dS^T Q (cuBLAS).
//
// The median is taken over S as cuBLAS rounded it, so kept / forgotten
// decisions and ties are consistent within this backend.
#include "common.cuh"
#include "order_key.cuh"
#include "philox.cuh"

// Rows of S per block of the median histogram.
#define UNFUSED_HIST_ROWS 32

// Block-wide reductions of one value per thread in a fixed tree order (the
// same bits on every run). `red` is a shared array of LWPF_THREADS.
__device__ __forceinline__ float block_max(float x, float *red) {
    const int t = threadIdx.x;
    __syncthreads();
    red[t] = x;
    for (int half = LWPF_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) {
            red[t] = fmaxf(red[t], red[t + half]);
        }
    }
    __syncthreads();
    return red[0];
}

__device__ __forceinline__ float block_sum(float x, float *red) {
    const int t = threadIdx.x;
    __syncthreads();
    red[t] = x;
    for (int half = LWPF_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) {
            red[t] += red[t + half];
        }
    }
    __syncthreads();
    return red[0];
}

__device__ __forceinline__ unsigned block_sum_u32(unsigned x, unsigned *red) {
    const int t = threadIdx.x;
    __syncthreads();
    red[t] = x;
    for (int half = LWPF_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) {
            red[t] += red[t + half];
        }
    }
    __syncthreads();
    return red[0];
}

// Bit position and width of the digit of radix pass `pass`, as in median.cu.
__device__ __forceinline__ int unfused_radix_shift(int pass) {
    return pass == 0 ? 21 : (pass == 1 ? 10 : 0);
}
__device__ __forceinline__ int unfused_radix_bits(int pass) { return pass == 2 ? 10 : 11; }

// Grid: ceil(B * H * Nq / 32) blocks. One radix pass over the valid entries
// of S into the state's 64-bit histogram (lwpf_median_select then picks the
// bucket, as for the fused median).
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_unfused_median_hist_f32(LwpfUnfusedParams p) {
    __shared__ unsigned hist[LWPF_RADIX_BINS];
    const int t = threadIdx.x;
    const int shift = unfused_radix_shift(p.pass);
    const unsigned digit_mask = (1u << unfused_radix_bits(p.pass)) - 1;
    const unsigned high_mask =
        p.pass == 0 ? 0u : ~0u << (shift + unfused_radix_bits(p.pass));
    const unsigned prefix = p.state_ptr->prefix;
    for (int i = t; i < LWPF_RADIX_BINS; i += LWPF_THREADS) {
        hist[i] = 0;
    }
    __syncthreads();

    const u64 rows = (u64)p.batch * p.heads * p.n_q;
    const u64 r0 = (u64)blockIdx.x * UNFUSED_HIST_ROWS;
    for (u64 row = r0; row < r0 + UNFUSED_HIST_ROWS && row < rows; ++row) {
        const int b_item = (int)(row / p.n_q) / p.heads;
        const float *s = p.s_ptr + row * p.n_k;
        for (int j = t; j < p.n_k; j += LWPF_THREADS) {
            if (!key_is_valid(p.valid_ptr, p.n_k, b_item, j)) {
                continue;
            }
            const unsigned key = order_key(s[j]);
            if ((key & high_mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & digit_mask], 1u);
            }
        }
    }
    __syncthreads();
    for (int i = t; i < LWPF_RADIX_BINS; i += LWPF_THREADS) {
        if (hist[i] != 0) {
            atomicAdd(&p.state_ptr->hist[i], (unsigned long long)hist[i]);
        }
    }
}

// Grid: one block per row of S. The forgetting function, the softmax and
// dropout of one row (SPEC sections 3 and 4): W_j = exp(s_j - lse) r_j for
// kept j, exp(b - lse) r_j (or 0 with drop_forgotten) for forgotten j, 0 for
// padded j; lse = -inf and W = 0 for an empty row. The maximum is taken
// over the kept scores and b apart, so no (-inf) - (-inf) arises.
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_unfused_softmax_f32(LwpfUnfusedParams p) {
    __shared__ float red[LWPF_THREADS];
    __shared__ unsigned red_u[LWPF_THREADS];
    const int t = threadIdx.x;
    const u64 row = blockIdx.x;
    const int b_item = (int)(row / p.n_q) / p.heads;
    const float *s = p.s_ptr + row * p.n_k;
    float *w = p.w_ptr + row * p.n_k;
    const float z = p.threshold_ptr->z;
    const float bias = p.threshold_ptr->b;

    // Largest kept score and forgotten count.
    float mk = -INFINITY;
    unsigned c = 0;
    for (int j = t; j < p.n_k; j += LWPF_THREADS) {
        if (key_is_valid(p.valid_ptr, p.n_k, b_item, j)) {
            const float x = s[j];
            if (x > z) {
                mk = fmaxf(mk, x);
            } else {
                ++c;
            }
        }
    }
    mk = block_max(mk, red);
    c = block_sum_u32(c, red_u);
    const float m_all = c > 0 ? fmaxf(mk, bias) : mk;

    float lse = -INFINITY;
    if (m_all != -INFINITY) {
        float l = 0.0f;
        for (int j = t; j < p.n_k; j += LWPF_THREADS) {
            if (key_is_valid(p.valid_ptr, p.n_k, b_item, j) && s[j] > z) {
                l += expf(s[j] - m_all);
            }
        }
        l = block_sum(l, red);
        const float den = l + (c > 0 ? (float)c * expf(bias - m_all) : 0.0f);
        lse = m_all + logf(den);
    }

    const bool live = lse != -INFINITY;
    const float p_b = live ? expf(bias - lse) : 0.0f;
    const bool dropout = p.dropout_p > 0.0f;
    const float drop_scale = 1.0f / (1.0f - p.dropout_p);
    DropoutStream rng;
    rng.init(p.seed_lo, p.seed_hi);
    for (int j = t; j < p.n_k; j += LWPF_THREADS) {
        float wj = 0.0f;
        if (live && key_is_valid(p.valid_ptr, p.n_k, b_item, j)) {
            float rd = 1.0f;
            if (dropout) {
                rd = rng.keep(row * p.n_k + j, p.dropout_p) ? drop_scale : 0.0f;
            }
            const float x = s[j];
            wj = x > z ? expf(x - lse) * rd : (p.drop_forgotten ? 0.0f : p_b * rd);
        }
        w[j] = wj;
    }
    if (t == 0) {
        p.lse_ptr[row] = lse;
        p.forgotten_ptr[row] = c;
    }
}

// Grid: one block per row. From S, dP (in ds_ptr), the forward's lse and
// Delta: W as in the forward (for dV = W^T dO), dS_j = P_j (r_j dP_j - Delta)
// for kept j and 0 otherwise, in place of dP, and with the center gradient
// the row's gradient reaching b, exp(b - lse) sum_{j forgotten}
// (w r_j dP_j - Delta), w = 0 if drop_forgotten else 1.
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_unfused_dscore_f32(LwpfUnfusedParams p) {
    __shared__ float red[LWPF_THREADS];
    const int t = threadIdx.x;
    const u64 row = blockIdx.x;
    const int b_item = (int)(row / p.n_q) / p.heads;
    const float *s = p.s_ptr + row * p.n_k;
    float *w = p.w_ptr + row * p.n_k;
    float *ds = p.ds_ptr + row * p.n_k;
    const float z = p.threshold_ptr->z;
    const float bias = p.threshold_ptr->b;
    const float lse = p.lse_ptr[row];
    const float delta = p.delta_ptr[row];
    const bool live = lse != -INFINITY;
    const float p_b = live ? expf(bias - lse) : 0.0f;
    const float w_forgotten = p.drop_forgotten ? 0.0f : 1.0f;
    const bool dropout = p.dropout_p > 0.0f;
    const float drop_scale = 1.0f / (1.0f - p.dropout_p);
    DropoutStream rng;
    rng.init(p.seed_lo, p.seed_hi);

    float gb = 0.0f;
    for (int j = t; j < p.n_k; j += LWPF_THREADS) {
        float wj = 0.0f, dsj = 0.0f;
        if (live && key_is_valid(p.valid_ptr, p.n_k, b_item, j)) {
            float rd = 1.0f;
            if (dropout) {
                rd = rng.keep(row * p.n_k + j, p.dropout_p) ? drop_scale : 0.0f;
            }
            const float x = s[j];
            const float dp = ds[j];
            if (x > z) {
                const float pk = expf(x - lse);
                wj = pk * rd;
                dsj = pk * (rd * dp - delta);
            } else {
                wj = w_forgotten * p_b * rd;
                gb += p_b * (w_forgotten * rd * dp - delta);
            }
        }
        w[j] = wj;
        ds[j] = dsj;
    }
    if (p.center_gradient) {
        gb = block_sum(gb, red);
        if (t == 0) {
            p.center_rows_ptr[row] = gb;
        }
    }
}

// Grid: one block per row. Adds the center gradient's share to dS of every
// valid entry whose score equals the median.
extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_unfused_ties_f32(LwpfUnfusedParams p) {
    const u64 row = blockIdx.x;
    const int b_item = (int)(row / p.n_q) / p.heads;
    const float *s = p.s_ptr + row * p.n_k;
    float *ds = p.ds_ptr + row * p.n_k;
    const float m = p.threshold_ptr->m;
    const float share = p.center_ptr->share;
    for (int j = threadIdx.x; j < p.n_k; j += LWPF_THREADS) {
        if (key_is_valid(p.valid_ptr, p.n_k, b_item, j) && s[j] == m) {
            ds[j] += share;
        }
    }
}
