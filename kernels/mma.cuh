// One warp-wide matrix multiply-accumulate on tensor cores, D = A B + C, for
// a 16 x 8 x 8 tile with tf32 inputs and f32 accumulation (PTX
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32), and its fragment
// layout. In the host emulation the 32 lanes gather their fragments, every
// lane computes its part of D from the whole tile, and the inputs are rounded
// to tf32 as the hardware's cvt.rna does (unless the caller says they are
// tf32 already).
//
// Fragment layout, for lane l with g = l / 4 and t = l % 4 (A is 16 x 8 row
// major, B is 8 x 8 with k as rows, C and D are 16 x 8):
//   A: a[i] holds A[g + 8 * (i % 2)][t + 4 * (i / 2)],   i < 4;
//   B: b[i] holds B[t + 4 * i][g],                       i < 2;
//   C, D: c[i] holds C[g + 8 * (i / 2)][2 * t + i % 2], i < 4.
#ifndef LWPF_MMA_CUH
#define LWPF_MMA_CUH

#include "common.cuh"

struct MmaFragA {
    float x[4];
};
struct MmaFragB {
    float x[2];
};
struct MmaFragC {
    float x[4];
};

__device__ __forceinline__ int mma_a_row(int lane, int i) { return lane / 4 + 8 * (i % 2); }
__device__ __forceinline__ int mma_a_col(int lane, int i) { return lane % 4 + 4 * (i / 2); }
__device__ __forceinline__ int mma_b_row(int lane, int i) { return lane % 4 + 4 * i; }
__device__ __forceinline__ int mma_b_col(int lane, int) { return lane / 4; }
__device__ __forceinline__ int mma_c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
__device__ __forceinline__ int mma_c_col(int lane, int i) { return 2 * (lane % 4) + i % 2; }

// Round to tf32 (10 mantissa bits), to nearest with ties away from zero, as
// cvt.rna.tf32.f32; returned as an f32 whose low 13 bits are zero.
__device__ __forceinline__ float to_tf32(float x) {
#ifdef LWPF_EMU
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u = (u + 0x1000u) & 0xffffe000u;
    }
    return __uint_as_float(u);
#else
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return __uint_as_float(u);
#endif
}

// ROUND = false takes A and B as they are: for values already exact in tf32
// (bf16 and fp16 inputs), where rounding them again would change nothing
// and cost a cvt per element in the innermost score loop.
__device__ __forceinline__ float tf32_operand(float x, bool round) { return round ? to_tf32(x) : x; }

template <bool ROUND = true>
__device__ __forceinline__ void mma_16x8x8_tf32(MmaFragC &d, const MmaFragA &a, const MmaFragB &b,
                                                const MmaFragC &c) {
#ifdef LWPF_EMU
    // Gather the whole tile: A and B from every lane's slots.
    lwpf_emu::Warp &w = *lwpf_emu::ctx.warp;
    if (w.lanes != 32) {
        lwpf_emu::fail("mma needs a full warp");
    }
    const unsigned lane = lwpf_emu::ctx.lane;
    for (int i = 0; i < 4; ++i) {
        w.slot[lane][i] = __float_as_uint(tf32_operand(a.x[i], ROUND));
    }
    for (int i = 0; i < 2; ++i) {
        w.slot[lane][4 + i] = __float_as_uint(tf32_operand(b.x[i], ROUND));
    }
    w.bar.arrive_and_wait();
    float am[16][8], bm[8][8];
    for (int l = 0; l < 32; ++l) {
        for (int i = 0; i < 4; ++i) {
            am[mma_a_row(l, i)][mma_a_col(l, i)] = __uint_as_float(unsigned(w.slot[l][i]));
        }
        for (int i = 0; i < 2; ++i) {
            bm[mma_b_row(l, i)][mma_b_col(l, i)] = __uint_as_float(unsigned(w.slot[l][4 + i]));
        }
    }
    w.bar.arrive_and_wait();
    // Products of tf32 values are exact in f32; the sum runs over k in order.
    MmaFragC out;
    for (int i = 0; i < 4; ++i) {
        const int row = mma_c_row(lane, i), col = mma_c_col(lane, i);
        float acc = c.x[i];
        for (int k = 0; k < 8; ++k) {
            acc = fmaf(am[row][k], bm[k][col], acc);
        }
        out.x[i] = acc;
    }
    d = out;
#else
    const unsigned a0 = __float_as_uint(tf32_operand(a.x[0], ROUND));
    const unsigned a1 = __float_as_uint(tf32_operand(a.x[1], ROUND));
    const unsigned a2 = __float_as_uint(tf32_operand(a.x[2], ROUND));
    const unsigned a3 = __float_as_uint(tf32_operand(a.x[3], ROUND));
    const unsigned b0 = __float_as_uint(tf32_operand(b.x[0], ROUND));
    const unsigned b1 = __float_as_uint(tf32_operand(b.x[1], ROUND));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c.x[0]), "f"(c.x[1]),
          "f"(c.x[2]), "f"(c.x[3]));
#endif
}

#endif
