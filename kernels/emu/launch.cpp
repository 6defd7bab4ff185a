// The host side of the emulation: one extern "C" launcher per kernel, called
// from Rust (src/op/kernels/emulated.rs). Each runs the kernel source, built
// as host C++ against emu.h, over the grid and block it is given.
#include "emu.h"

#include "../params.h"

extern "C" {
void lwpf_median_hist_f32(LwpfMedianParams p);
void lwpf_median_select(LwpfMedianParams p);
void lwpf_forward_f32(LwpfForwardParams p);
void lwpf_selftest_barrier(unsigned *out, int rounds);
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

void lwpf_emu_selftest_barrier(unsigned grid, unsigned block, unsigned *out, int rounds) {
    lwpf_emu::launch(grid, block, [&] { lwpf_selftest_barrier(out, rounds); });
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
