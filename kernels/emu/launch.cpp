// The host side of the emulation: one extern "C" launcher per kernel, called
// from Rust (src/op/kernels/emulated.rs). Each runs the kernel source, built
// as host C++ against emu.h, over the grid and block it is given.
#include "emu.h"

#include "../params.h"

extern "C" {
void lwpf_median_hist_f32(LwpfMedianParams p);
void lwpf_median_select(LwpfMedianParams p);
void lwpf_forward_f32(LwpfForwardParams p);
void lwpf_backward_prep_f32(LwpfBackwardParams p);
void lwpf_backward_center_f32_d64(LwpfBackwardParams p);
void lwpf_backward_center_f32_d128(LwpfBackwardParams p);
void lwpf_backward_center_reduce(LwpfBackwardParams p);
void lwpf_backward_dkdv_f32_d64(LwpfBackwardParams p);
void lwpf_backward_dkdv_f32_d128(LwpfBackwardParams p);
void lwpf_backward_dq_f32_d64(LwpfBackwardParams p);
void lwpf_backward_dq_f32_d128(LwpfBackwardParams p);
void lwpf_unfused_median_hist_f32(LwpfUnfusedParams p);
void lwpf_unfused_softmax_f32(LwpfUnfusedParams p);
void lwpf_unfused_dscore_f32(LwpfUnfusedParams p);
void lwpf_unfused_ties_f32(LwpfUnfusedParams p);
void lwpf_selftest_barrier(unsigned *out, int rounds);
void lwpf_selftest_dynamic_smem(unsigned *out, int words);
void lwpf_selftest_warp(const int *in, int *out);
void lwpf_selftest_atomics(unsigned *u32s, unsigned long long *u64s, float *fsum);
void lwpf_selftest_mma(const float *a, const float *b, const float *c, float *d);

void lwpf_emu_median_hist_f32(unsigned grid, unsigned block, const LwpfMedianParams *p) {
    lwpf_emu::launch(grid, block, [&] { lwpf_median_hist_f32(*p); });
}

void lwpf_emu_median_select(unsigned grid, unsigned block, const LwpfMedianParams *p) {
    lwpf_emu::launch(grid, block, [&] { lwpf_median_select(*p); });
}

void lwpf_emu_forward_f32(unsigned grid, unsigned block, const LwpfForwardParams *p) {
    lwpf_emu::launch(grid, block, [&] { lwpf_forward_f32(*p); });
}

// The backward kernels share one parameter struct; `kernel` names which
// runs: 0 prep, 1 center, 2 center reduce, 3 dK dV, 4 dQ; `max_d` the build
// of the tiled ones (64 or 128); `smem_bytes` the dynamic shared memory.
void lwpf_emu_backward_f32(int kernel, int max_d, unsigned grid, unsigned block,
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
        lwpf_emu::launch(
            grid, block,
            [&] { wide ? lwpf_backward_center_f32_d128(*p) : lwpf_backward_center_f32_d64(*p); },
            smem_bytes);
        break;
    case 2:
        lwpf_emu::launch(grid, block, [&] { lwpf_backward_center_reduce(*p); }, smem_bytes);
        break;
    case 3:
        lwpf_emu::launch(
            grid, block,
            [&] { wide ? lwpf_backward_dkdv_f32_d128(*p) : lwpf_backward_dkdv_f32_d64(*p); },
            smem_bytes);
        break;
    case 4:
        lwpf_emu::launch(
            grid, block,
            [&] { wide ? lwpf_backward_dq_f32_d128(*p) : lwpf_backward_dq_f32_d64(*p); },
            smem_bytes);
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
}
