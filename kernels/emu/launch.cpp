// The host side of the emulation: one extern "C" launcher per kernel, called
// from Rust (src/op/kernels/emulated.rs). Each runs the kernel source, built
// as host C++ against emu.h, over the grid and block it is given.
#include "emu.h"

#include "../common.cuh"

extern "C" {
void lwpf_median_select(LwpfMedianParams p);
void lwpf_backward_prep_f32(LwpfBackwardParams p);
void lwpf_backward_center_reduce(LwpfBackwardParams p);
void lwpf_median_hist_f32(LwpfMedianParams p);
void lwpf_forward_f32(LwpfForwardParams p);
void lwpf_backward_center_f32_d64(LwpfBackwardParams p);
void lwpf_backward_center_f32_d128(LwpfBackwardParams p);
void lwpf_backward_dkdv_f32_d64(LwpfBackwardParams p);
void lwpf_backward_dkdv_f32_d128(LwpfBackwardParams p);
void lwpf_backward_dq_f32_d64(LwpfBackwardParams p);
void lwpf_backward_dq_f32_d128(LwpfBackwardParams p);
void lwpf_median_hist_bf16(LwpfMedianParams p);
void lwpf_forward_bf16(LwpfForwardParams p);
void lwpf_backward_center_bf16_d64(LwpfBackwardParams p);
void lwpf_backward_center_bf16_d128(LwpfBackwardParams p);
void lwpf_backward_dkdv_bf16_d64(LwpfBackwardParams p);
void lwpf_backward_dkdv_bf16_d128(LwpfBackwardParams p);
void lwpf_backward_dq_bf16_d64(LwpfBackwardParams p);
void lwpf_backward_dq_bf16_d128(LwpfBackwardParams p);
void lwpf_median_hist_f16(LwpfMedianParams p);
void lwpf_forward_f16(LwpfForwardParams p);
void lwpf_backward_center_f16_d64(LwpfBackwardParams p);
void lwpf_backward_center_f16_d128(LwpfBackwardParams p);
void lwpf_backward_dkdv_f16_d64(LwpfBackwardParams p);
void lwpf_backward_dkdv_f16_d128(LwpfBackwardParams p);
void lwpf_backward_dq_f16_d64(LwpfBackwardParams p);
void lwpf_backward_dq_f16_d128(LwpfBackwardParams p);
void lwpf_unfused_median_hist_f32(LwpfUnfusedParams p);
void lwpf_unfused_softmax_f32(LwpfUnfusedParams p);
void lwpf_unfused_dscore_f32(LwpfUnfusedParams p);
void lwpf_unfused_ties_f32(LwpfUnfusedParams p);
void lwpf_selftest_barrier(unsigned *out, int rounds);
void lwpf_selftest_dynamic_smem(unsigned *out, int words);
void lwpf_selftest_warp(const int *in, int *out);
void lwpf_selftest_atomics(unsigned *u32s, unsigned long long *u64s, float *fsum);
void lwpf_selftest_mma(const float *a, const float *b, const float *c, float *d);
void lwpf_selftest_convert(const LwpfBf16 *bf16, const LwpfF16 *f16, int n, float *out);
}

// The entry of a per-type kernel family: `dtype` is 0 for f32, 1 for bf16,
// 2 for fp16 (src/op/kernels/mod.rs, KernelDType).
template <class F32, class BF16, class F16>
static void by_dtype(int dtype, F32 f32, BF16 bf16, F16 f16) {
    switch (dtype) {
    case 0:
        f32();
        break;
    case 1:
        bf16();
        break;
    case 2:
        f16();
        break;
    default:
        lwpf_emu::fail("unknown element type");
    }
}

extern "C" {
void lwpf_emu_median_hist(int dtype, unsigned grid, unsigned block, const LwpfMedianParams *p) {
    lwpf_emu::launch(grid, block, [&] {
        by_dtype(
            dtype, [&] { lwpf_median_hist_f32(*p); }, [&] { lwpf_median_hist_bf16(*p); },
            [&] { lwpf_median_hist_f16(*p); });
    });
}

void lwpf_emu_median_select(unsigned grid, unsigned block, const LwpfMedianParams *p) {
    lwpf_emu::launch(grid, block, [&] { lwpf_median_select(*p); });
}

void lwpf_emu_forward(int dtype, unsigned grid, unsigned block, const LwpfForwardParams *p) {
    lwpf_emu::launch(grid, block, [&] {
        by_dtype(
            dtype, [&] { lwpf_forward_f32(*p); }, [&] { lwpf_forward_bf16(*p); },
            [&] { lwpf_forward_f16(*p); });
    });
}

// One tiled backward kernel of one type and build.
#define LWPF_EMU_TILED(KERNEL)                                                                    \
    by_dtype(                                                                                    \
        dtype,                                                                                   \
        [&] { wide ? lwpf_backward_##KERNEL##_f32_d128(*p) : lwpf_backward_##KERNEL##_f32_d64(*p); }, \
        [&] {                                                                                    \
            wide ? lwpf_backward_##KERNEL##_bf16_d128(*p) : lwpf_backward_##KERNEL##_bf16_d64(*p); \
        },                                                                                       \
        [&] { wide ? lwpf_backward_##KERNEL##_f16_d128(*p) : lwpf_backward_##KERNEL##_f16_d64(*p); })

// The backward kernels share one parameter struct; `kernel` names which
// runs: 0 prep, 1 center, 2 center reduce, 3 dK dV, 4 dQ; `dtype` and
// `max_d` (64 or 128) the type and build of the tiled ones; `smem_bytes`
// the dynamic shared memory.
void lwpf_emu_backward(int kernel, int dtype, int max_d, unsigned grid, unsigned block,
                       unsigned smem_bytes, const LwpfBackwardParams *p) {
    const bool wide = max_d == LWPF_BWD_MAX_D;
    if (!wide && max_d != LWPF_BWD_NARROW_D) {
        lwpf_emu::fail("unknown backward build");
    }
    switch (kernel) {
    case 0:
        lwpf_emu::launch(grid, block, [&] { lwpf_backward_prep_f32(*p); }, smem_bytes);
        break;
    case 1:
        lwpf_emu::launch(grid, block, [&] { LWPF_EMU_TILED(center); }, smem_bytes);
        break;
    case 2:
        lwpf_emu::launch(grid, block, [&] { lwpf_backward_center_reduce(*p); }, smem_bytes);
        break;
    case 3:
        lwpf_emu::launch(grid, block, [&] { LWPF_EMU_TILED(dkdv); }, smem_bytes);
        break;
    case 4:
        lwpf_emu::launch(grid, block, [&] { LWPF_EMU_TILED(dq); }, smem_bytes);
        break;
    default:
        lwpf_emu::fail("unknown backward kernel");
    }
}

// The unfused baseline's kernels: 0 median histogram, 1 softmax, 2 dS,
// 3 ties.
void lwpf_emu_unfused_f32(int kernel, unsigned grid, unsigned block, const LwpfUnfusedParams *p) {
    switch (kernel) {
    case 0:
        lwpf_emu::launch(grid, block, [&] { lwpf_unfused_median_hist_f32(*p); });
        break;
    case 1:
        lwpf_emu::launch(grid, block, [&] { lwpf_unfused_softmax_f32(*p); });
        break;
    case 2:
        lwpf_emu::launch(grid, block, [&] { lwpf_unfused_dscore_f32(*p); });
        break;
    case 3:
        lwpf_emu::launch(grid, block, [&] { lwpf_unfused_ties_f32(*p); });
        break;
    default:
        lwpf_emu::fail("unknown unfused kernel");
    }
}

void lwpf_emu_selftest_barrier(unsigned grid, unsigned block, unsigned *out, int rounds) {
    lwpf_emu::launch(grid, block, [&] { lwpf_selftest_barrier(out, rounds); });
}

void lwpf_emu_selftest_dynamic_smem(unsigned grid, unsigned block, unsigned *out, int words) {
    lwpf_emu::launch(
        grid, block, [&] { lwpf_selftest_dynamic_smem(out, words); },
        (size_t)words * sizeof(unsigned));
}

void lwpf_emu_selftest_warp(unsigned grid, unsigned block, const int *in, int *out) {
    lwpf_emu::launch(grid, block, [&] { lwpf_selftest_warp(in, out); });
}

void lwpf_emu_selftest_atomics(unsigned grid, unsigned block, unsigned *u32s,
                               unsigned long long *u64s, float *fsum) {
    lwpf_emu::launch(grid, block, [&] { lwpf_selftest_atomics(u32s, u64s, fsum); });
}

void lwpf_emu_selftest_mma(unsigned grid, unsigned block, const float *a, const float *b,
                           const float *c, float *d) {
    lwpf_emu::launch(grid, block, [&] { lwpf_selftest_mma(a, b, c, d); });
}

void lwpf_emu_selftest_convert(unsigned grid, unsigned block, const LwpfBf16 *bf16,
                               const LwpfF16 *f16, int n, float *out) {
    lwpf_emu::launch(grid, block, [&] { lwpf_selftest_convert(bf16, f16, n, out); });
}
}
