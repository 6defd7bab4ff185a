// Philox-4x32-10 and the dropout keep decision, bit for bit as in
// src/op/philox.rs: the CPU paths, these kernels and the backward pass must
// draw the same mask for the same seed without storing it.
#ifndef LWPF_PHILOX_CUH
#define LWPF_PHILOX_CUH

#include "common.cuh"

#define LWPF_PHILOX_M0 0xD2511F53u
#define LWPF_PHILOX_M1 0xCD9E8D57u
#define LWPF_PHILOX_W0 0x9E3779B9u
#define LWPF_PHILOX_W1 0xBB67AE85u
// Counter word 2 of the dropout stream (src/op/philox.rs: STREAM_DROPOUT).
#define LWPF_STREAM_DROPOUT 0u

// Ten rounds on the counter c, in place, under the key (k0, k1).
__device__ __forceinline__ void philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += LWPF_PHILOX_W0;
            k1 += LWPF_PHILOX_W1;
        }
        unsigned hi0 = __umulhi(LWPF_PHILOX_M0, c[0]);
        unsigned lo0 = LWPF_PHILOX_M0 * c[0];
        unsigned hi1 = __umulhi(LWPF_PHILOX_M1, c[2]);
        unsigned lo1 = LWPF_PHILOX_M1 * c[2];
        unsigned n0 = hi1 ^ c[1] ^ k0;
        unsigned n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

// The dropout words of one row, drawn four entries at a time: entry e uses
// word e % 4 of the block with counter [e / 4 (low), e / 4 (high), 0, 0].
struct DropoutStream {
    unsigned k0, k1;
    u64 group;
    unsigned words[4];

    __device__ __forceinline__ void init(unsigned seed_lo, unsigned seed_hi) {
        k0 = seed_lo;
        k1 = seed_hi;
        group = ~0ull;
        words[0] = words[1] = words[2] = words[3] = 0;
    }

    // Whether entry e survives dropout with probability p of being dropped:
    // the top 24 bits of its word, scaled exactly to [0, 1), against p.
    __device__ __forceinline__ bool keep(u64 e, float p) {
        if ((e >> 2) != group) {
            group = e >> 2;
            words[0] = (unsigned)group;
            words[1] = (unsigned)(group >> 32);
            words[2] = LWPF_STREAM_DROPOUT;
            words[3] = 0;
            philox4x32_10(words, k0, k1);
        }
        // Selected without a dynamic index, which would put words in local
        // memory on the device.
        const unsigned sel = (unsigned)(e & 3);
        const unsigned w = sel == 0   ? words[0]
                           : sel == 1 ? words[1]
                           : sel == 2 ? words[2]
                                      : words[3];
        float u = (float)(w >> 8) * (1.0f / 16777216.0f);
        return u >= p;
    }
};

#endif
