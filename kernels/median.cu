// The exact lower median of a call's valid scores by radix selection.
//
// The median is the score of rank floor((n - 1) / 2) among the n valid scores
// of the call (every b, h, i and valid j). No score matrix is stored: each
// pass recomputes the scores tile by tile (score_tile, as the forward pass
// does) and counts their 32-bit order keys into a histogram:
//   pass 0: the top 11 bits of every key;
//   pass 1: bits 10..20 of the keys whose top 11 bits are the chosen bucket;
//   pass 2: bits 0..9 of the keys whose top 22 bits are fixed by then.
// After each pass lwpf_median_select finds the bucket that holds the rank and
// fixes those bits; after the third the key, hence the median, is known, and
// the count of its bucket is the number of scores equal to it. Three passes of
// score products whatever the data, 64-bit global counts, one small state
// struct in device memory between the launches, no round trip to the host.
#include "common.cuh"
#include "order_key.cuh"
#include "scores.cuh"

// Bit position and width of the digit counted in each pass.
__device__ __forceinline__ int radix_shift(int pass) {
    return pass == 0 ? 21 : (pass == 1 ? 10 : 0);
}
__device__ __forceinline__ int radix_bits(int pass) { return pass == 2 ? 10 : 11; }

// Grid: one block per (b * H + h, query tile), LWPF_THREADS threads. T is
// the element type of Q and K.
template <class T>
__device__ __forceinline__ void median_hist(const LwpfMedianParams &p) {
    __shared__ ScoreSmem sm;
    // Per-block counts fit 32 bits (a block sees TILE_Q * Nk scores); the
    // call's counts are 64-bit.
    __shared__ unsigned hist[LWPF_RADIX_BINS];

    const int t = threadIdx.x;
    const int q_tiles = ceil_div(p.n_q, LWPF_TILE_Q);
    const int bh = blockIdx.x / q_tiles;
    const int i0 = (blockIdx.x % q_tiles) * LWPF_TILE_Q;
    const int b = bh / p.heads;
    const T *q_head = static_cast<const T *>(p.q_ptr) + (u64)bh * p.n_q * p.d;
    const T *k_head = static_cast<const T *>(p.k_ptr) + (u64)bh * p.n_k * p.d;

    const int shift = radix_shift(p.pass);
    const unsigned digit_mask = (1u << radix_bits(p.pass)) - 1;
    // Keys take part when their bits above this pass's digit match the
    // prefix fixed so far (all do in pass 0).
    const unsigned high_mask = p.pass == 0 ? 0u : ~0u << (shift + radix_bits(p.pass));
    const unsigned prefix = p.state_ptr->prefix;

    for (int i = t; i < LWPF_RADIX_BINS; i += LWPF_THREADS) {
        hist[i] = 0;
    }
    __syncthreads();

    const int row = i0 + tile_row(t);
    float s[LWPF_SCORES_PER_THREAD];
    for (int j0 = 0; j0 < p.n_k; j0 += LWPF_TILE_K) {
        score_tile(q_head, k_head, i0, j0, p.n_q, p.n_k, p.d, p.beta, sm, s);
        for (int u = 0; u < LWPF_SCORES_PER_THREAD; ++u) {
            const int j = j0 + tile_col(t, u);
            if (row >= p.n_q || j >= p.n_k || !key_is_valid(p.valid_ptr, p.n_k, b, j)) {
                continue;
            }
            const unsigned key = order_key(s[u]);
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

extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_median_hist_f32(LwpfMedianParams p) {
    median_hist<float>(p);
}

extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_median_hist_bf16(LwpfMedianParams p) {
    median_hist<LwpfBf16>(p);
}

extern "C" __global__ void __launch_bounds__(LWPF_THREADS)
    lwpf_median_hist_f16(LwpfMedianParams p) {
    median_hist<LwpfF16>(p);
}

// Grid: one block of LWPF_THREADS threads. Finds the bucket of this pass's
// histogram that holds the rank, fixes its bits in the prefix, clears the
// histogram for the next pass and, after the last pass, writes the median,
// its tie count and the threshold z (and bias b) that the forward pass reads.
extern "C" __global__ void __launch_bounds__(LWPF_THREADS) lwpf_median_select(LwpfMedianParams p) {
    // Each thread sums a contiguous chunk of buckets; thread 0 then walks the
    // chunk sums and the one chunk that holds the rank: 2 * 16 steps at most
    // per thread instead of 2048 serial ones.
    const int per_thread = LWPF_RADIX_BINS / LWPF_THREADS;
    __shared__ unsigned long long chunk[LWPF_THREADS];

    LwpfMedianState *st = p.state_ptr;
    const int t = threadIdx.x;
    unsigned long long sum = 0;
    for (int i = 0; i < per_thread; ++i) {
        sum += st->hist[t * per_thread + i];
    }
    chunk[t] = sum;
    __syncthreads();

    if (t == 0) {
        unsigned long long rank = st->rank;
        int c = 0;
        while (c < LWPF_THREADS - 1 && rank >= chunk[c]) {
            rank -= chunk[c];
            ++c;
        }
        int bin = c * per_thread;
        while (bin < (c + 1) * per_thread - 1 && rank >= st->hist[bin]) {
            rank -= st->hist[bin];
            ++bin;
        }
        const unsigned prefix = st->prefix | ((unsigned)bin << radix_shift(p.pass));
        st->rank = rank;
        st->prefix = prefix;

        if (p.pass == LWPF_RADIX_PASSES - 1) {
            LwpfThreshold &thr = st->threshold;
            thr.m = from_order_key(prefix);
            thr.has_median = 1;
            thr.at_median = st->hist[bin];
            // Two roundings, as the host's `m + noise_std * eps` in f32: no fma.
            thr.z = p.add_noise ? __fadd_rn(thr.m, __fmul_rn(p.noise_std, p.eps)) : thr.m;
            thr.b = p.bias_kind == LWPF_BIAS_THRESHOLD ? thr.z
                    : p.bias_kind == LWPF_BIAS_FIXED   ? p.bias_value
                                                       : -INFINITY;
        }
    }
    __syncthreads();

    for (int i = 0; i < per_thread; ++i) {
        st->hist[t * per_thread + i] = 0;
    }
}
