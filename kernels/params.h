/* Parameter structs of the kernels, shared by the device code, its host
 * emulation and the Rust side (src/op/kernels/params.rs is generated from this
 * file by bindgen; scripts/check-params.sh fails when the two drift apart).
 *
 * Plain C, no includes: bindgen, nvcc and g++ all read it as it is. Tensors are
 * contiguous row-major, as in the Rust API: Q [B, H, Nq, D], K [B, H, Nk, D],
 * V [B, H, Nk, Dv], the key padding mask [B, Nk] (1 = a real key), O
 * [B, H, Nq, Dv] and lse / forgotten counts [B, H, Nq]. Sizes are 32-bit; every
 * flat offset is computed in 64 bits inside the kernels. */
#ifndef LWPF_PARAMS_H
#define LWPF_PARAMS_H

/* Query rows and keys per tile of every kernel that recomputes scores. The
 * median and the forward pass must use the same tiles and the same score
 * code, so that each score has the same bits in both. */
#define LWPF_TILE_Q 32
#define LWPF_TILE_K 32
/* Threads per block of the tiled kernels. */
#define LWPF_THREADS 128
/* Largest value dimension of the fused forward (its accumulators live in
 * registers: LWPF_TILE_Q * LWPF_MAX_DV / LWPF_THREADS per thread). */
#define LWPF_MAX_DV 128

/* Radix selection of the median: three passes of 11, 11 and 10 bits over the
 * 32-bit order-preserving keys of the scores. */
#define LWPF_RADIX_PASSES 3
#define LWPF_RADIX_BINS 2048

/* What a forgotten score is replaced by. */
#define LWPF_BIAS_THRESHOLD 0
#define LWPF_BIAS_FIXED 1
#define LWPF_BIAS_NEG_INF 2

/* The resolved threshold of a call, in device memory: written by the median's
 * last selection step, or by the host for a fixed centre; read by the forward
 * pass. */
typedef struct LwpfThreshold {
    /* Entries with s <= z are forgotten (-inf: none is). */
    float z;
    /* Value of a forgotten entry (-inf allowed). */
    float b;
    /* The median of the call's valid scores (meaningful when has_median). */
    float m;
    int has_median;
    /* Number of valid scores equal to m. */
    unsigned long long at_median;
} LwpfThreshold;

/* State of the radix selection between its passes. */
typedef struct LwpfMedianState {
    /* Counts of the current pass, 64-bit: a call has B * H * Nq * Nk scores. */
    unsigned long long hist[LWPF_RADIX_BINS];
    /* Rank still sought among the scores whose key starts with prefix. */
    unsigned long long rank;
    /* Key bits fixed by the passes so far, in place (low bits zero). */
    unsigned int prefix;
    unsigned int pad;
    LwpfThreshold threshold;
} LwpfMedianState;

/* One pass of the median: histogram (lwpf_median_hist_<type>) or selection
 * (lwpf_median_select). */
typedef struct LwpfMedianParams {
    /* Q and K of the kernel's element type: f32, bf16 or fp16 (the entry's
     * name says which). */
    const void *q_ptr;
    const void *k_ptr;
    /* [B, Nk], 1 = a real key; NULL = all real. */
    const unsigned char *valid_ptr;
    LwpfMedianState *state_ptr;
    int batch;
    int heads;
    int n_q;
    int n_k;
    int d;
    float beta;
    /* 0, 1 or 2. */
    int pass;
    /* Training: z = m + noise_std * eps, with eps drawn on the host. */
    int add_noise;
    float noise_std;
    float eps;
    /* LWPF_BIAS_*, and the value of a fixed bias. */
    int bias_kind;
    float bias_value;
} LwpfMedianParams;

/* The fused forward pass (lwpf_forward_<type>). */
typedef struct LwpfForwardParams {
    /* Q, K and V of the kernel's element type; everything else is f32. */
    const void *q_ptr;
    const void *k_ptr;
    const void *v_ptr;
    /* [B, Nk], 1 = a real key; NULL = all real. */
    const unsigned char *valid_ptr;
    const LwpfThreshold *threshold_ptr;
    float *o_ptr;
    float *lse_ptr;
    /* Forgotten entries per row. */
    unsigned int *forgotten_ptr;
    int batch;
    int heads;
    int n_q;
    int n_k;
    int d;
    int d_v;
    float beta;
    /* Remove forgotten entries from the numerator (1) or keep them there with
     * weight exp(b) (0). */
    int drop_forgotten;
    /* Dropout probability (0 = none) and the Philox key of the call's seed. */
    float dropout_p;
    unsigned int seed_lo;
    unsigned int seed_hi;
} LwpfForwardParams;

/* Head and value dimensions of the fused backward. Its tiles of Q, K, V and
 * dO [32, D or Dv] sit whole in shared memory, so its tiled kernels are built
 * twice and the host picks the narrower build that holds D and Dv:
 * - D, Dv <= LWPF_BWD_NARROW_D: 4 x 32 x 65 floats and the entry tiles,
 *   42016 bytes of static shared memory (46240 with the score tile of the
 *   bf16 and fp16 builds; a block may have 48 KB that way);
 * - D, Dv <= LWPF_BWD_MAX_D: 4 x 32 x 129 floats and the entry tiles, at
 *   most LWPF_BWD_WIDE_SMEM bytes (the bf16 and fp16 builds; f32 needs
 *   74784), past 48 KB: dynamic shared memory, which the host passes at
 *   launch after raising the function's
 *   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to it once.
 * kernels/backward.cu asserts the sizes at compile time. */
#define LWPF_BWD_NARROW_D 64
#define LWPF_BWD_MAX_D 128
#define LWPF_BWD_WIDE_SMEM 79008

/* The center gradient of a call (SPEC section 5), in device memory: written
 * by lwpf_backward_center_reduce, read by the kernels that form dS. */
typedef struct LwpfCenterGrad {
    /* Gradient reaching the bias b, summed over the call. */
    double g_b;
    /* g_b / at_median: what each valid score equal to m receives. */
    float share;
    int pad;
} LwpfCenterGrad;

/* The fused backward pass: one struct for all its kernels. */
typedef struct LwpfBackwardParams {
    /* Q, K and V of the tiled kernels' element type; O, dO and every
     * gradient are f32. */
    const void *q_ptr;
    const void *k_ptr;
    const void *v_ptr;
    /* [B, Nk], 1 = a real key; NULL = all real. */
    const unsigned char *valid_ptr;
    /* The forward's O [B, H, Nq, Dv] and lse [B, H, Nq], and dO. */
    const float *o_ptr;
    const float *lse_ptr;
    const float *do_ptr;
    /* Delta_i = dO_i . O_i per row, written by lwpf_backward_prep_f32. */
    float *delta_ptr;
    /* Per-row gradient reaching b, written by lwpf_backward_center_f32. */
    float *center_rows_ptr;
    LwpfCenterGrad *center_ptr;
    float *dq_ptr;
    float *dk_ptr;
    float *dv_ptr;
    int batch;
    int heads;
    int n_q;
    int n_k;
    int d;
    int d_v;
    float beta;
    /* The forward's threshold: forgotten iff s <= z, bias b, median m. */
    float z;
    float b;
    float m;
    /* Spread g_b over the valid scores equal to m (at_median of them). */
    int center_gradient;
    int pad;
    unsigned long long at_median;
    int drop_forgotten;
    float dropout_p;
    unsigned int seed_lo;
    unsigned int seed_hi;
    /* 1: the key-tile kernel also adds dQ with float atomics (fast, not
     * bit-reproducible); 0: lwpf_backward_dq_f32 writes dQ (deterministic). */
    int dq_atomic;
    int pad2;
} LwpfBackwardParams;

/* The elementwise kernels of the unfused baseline (kernels/unfused.cu),
 * which work on a materialized score matrix S [B * H * Nq, Nk] (beta
 * applied) that cuBLAS computes. */
typedef struct LwpfUnfusedParams {
    /* Scores S, row-major [B * H * Nq, Nk]. */
    const float *s_ptr;
    /* Numerator weights W of the same shape: O = W V, dV = W^T dO. */
    float *w_ptr;
    /* Backward: dP = dO V^T on entry, dS (before beta) on return. */
    float *ds_ptr;
    /* [B, Nk], 1 = a real key; NULL = all real. */
    const unsigned char *valid_ptr;
    const LwpfThreshold *threshold_ptr;
    LwpfMedianState *state_ptr;
    float *lse_ptr;
    unsigned int *forgotten_ptr;
    const float *delta_ptr;
    float *center_rows_ptr;
    const LwpfCenterGrad *center_ptr;
    int batch;
    int heads;
    int n_q;
    int n_k;
    /* Radix pass of lwpf_unfused_median_hist_f32: 0, 1 or 2. */
    int pass;
    int drop_forgotten;
    float dropout_p;
    unsigned int seed_lo;
    unsigned int seed_hi;
    /* Spread the center gradient over the valid scores equal to the
     * threshold's median m. */
    int center_gradient;
} LwpfUnfusedParams;

#endif
