// Kernels that exercise one feature of the device model each, checked against
// plain loops by tests/kernels_emulated.rs. They compile for the GPU too, so
// the same checks can run there and pin the emulation to the hardware (the
// MMA fragment layout above all).
#include "../common.cuh"
#include "../mma.cuh"

// Barrier and shared memory: each thread writes its slot, and after the
// barrier reads its neighbour's; repeated so that a barrier that lets a
// thread run ahead shows up as a stale value. out[block * n + t] =
// sum over rounds of the neighbour's value in that round.
extern "C" __global__ void lwpf_selftest_barrier(unsigned *out, int rounds) {
    __shared__ unsigned slot[1024];
    const unsigned t = threadIdx.x, n = blockDim.x;
    unsigned sum = 0;
    for (int k = 0; k < rounds; ++k) {
        slot[t] = (blockIdx.x + 1) * 1000003u + k * 7919u + t;
        __syncthreads();
        sum += slot[(t + 1) % n];
        __syncthreads();
    }
    out[blockIdx.x * n + t] = sum;
}

// Dynamic shared memory of `words` words, exactly what the launch gives:
// the threads fill it, and after the barrier each reads the words of others
// in mirrored order. out[block * words + i] = the value written to word
// words - 1 - i of that block.
extern "C" __global__ void lwpf_selftest_dynamic_smem(unsigned *out, int words) {
    unsigned *buf = static_cast<unsigned *>(dynamic_smem((u64)words * sizeof(unsigned)));
    for (int i = threadIdx.x; i < words; i += blockDim.x) {
        buf[i] = (blockIdx.x + 1) * 1000003u + i;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < words; i += blockDim.x) {
        out[(u64)blockIdx.x * words + i] = buf[words - 1 - i];
    }
}

// Shuffles and votes on a value per lane; out has 8 words per thread:
// shfl from lane (l * 7) % 32, xor 5, down 3, up 2, a width-8 shfl from lane 1
// of the segment, ballot of odd values, any(v == 40), all(v >= 0).
extern "C" __global__ void lwpf_selftest_warp(const int *in, int *out) {
    const unsigned t = threadIdx.x, lane = t % 32;
    const int v = in[t];
    int *o = out + 8 * t;
    o[0] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32);
    o[1] = __shfl_xor_sync(0xffffffffu, v, 5);
    o[2] = __shfl_down_sync(0xffffffffu, v, 3);
    o[3] = __shfl_up_sync(0xffffffffu, v, 2);
    o[4] = __shfl_sync(0xffffffffu, v, 1, 8);
    o[5] = (int)__ballot_sync(0xffffffffu, v & 1);
    o[6] = __any_sync(0xffffffffu, v == 40);
    o[7] = __all_sync(0xffffffffu, v >= 0);
}

// Atomics from every thread of every block: counters[0] += 1 (u32),
// counters[1] += t (u64), max and min of t ^ 0x55 into counters[2..3], and a
// float sum of 0.5 per thread into fsum (exact: a multiple of 0.5).
extern "C" __global__ void lwpf_selftest_atomics(unsigned *u32s, unsigned long long *u64s,
                                                 float *fsum) {
    __shared__ unsigned block_count;
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) {
        block_count = 0;
    }
    __syncthreads();
    atomicAdd(&block_count, 1u);
    atomicAdd(&u32s[0], 1u);
    atomicAdd(&u64s[0], (unsigned long long)t);
    atomicMax(&u32s[1], t ^ 0x55u);
    atomicMin(&u32s[2], t ^ 0x55u);
    atomicAdd(fsum, 0.5f);
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(&u32s[3], block_count);
    }
}

// One MMA per warp: a [16, 8], b [8, 8] and c [16, 8] row major per warp,
// d = a b + c into d [16, 8] per warp, each lane loading and storing its
// fragments through the layout functions.
extern "C" __global__ void lwpf_selftest_mma(const float *a, const float *b, const float *c,
                                             float *d) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    const float *aw = a + warp * 128, *bw = b + warp * 64, *cw = c + warp * 128;
    MmaFragA fa;
    MmaFragB fb;
    MmaFragC fc, fd;
    for (int i = 0; i < 4; ++i) {
        fa.x[i] = aw[mma_a_row(lane, i) * 8 + mma_a_col(lane, i)];
        fc.x[i] = cw[mma_c_row(lane, i) * 8 + mma_c_col(lane, i)];
    }
    for (int i = 0; i < 2; ++i) {
        fb.x[i] = bw[mma_b_row(lane, i) * 8 + mma_b_col(lane, i)];
    }
    mma_16x8x8_tf32(fd, fa, fb, fc);
    for (int i = 0; i < 4; ++i) {
        d[warp * 128 + mma_c_row(lane, i) * 8 + mma_c_col(lane, i)] = fd.x[i];
    }
}

// The loads of the 16-bit input types: out[i] = bf16[i] as f32, out[n + i] =
// f16[i] as f32, one element per thread.
extern "C" __global__ void lwpf_selftest_convert(const LwpfBf16 *bf16, const LwpfF16 *f16, int n,
                                                 float *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = load_f32(bf16, i);
        out[n + i] = load_f32(f16, i);
    }
}
