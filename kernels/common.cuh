// What every kernel file includes: the device toolchain's built-ins on nvcc,
// their host emulation otherwise, and the parameter structs.
#ifndef LWPF_COMMON_CUH
#define LWPF_COMMON_CUH

#ifdef LWPF_EMU
#include <math.h>

#include "emu/emu.h"
#endif

#include "params.h"

// 64-bit flat indices: B * H * Nq * Nk passes 2^31 quickly.
typedef unsigned long long u64;

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// The block's dynamic shared memory, of which the kernel needs `bytes`; the
// launch sets its size. A launch that gave less traps on the device (and
// aborts in the emulation) instead of letting the kernel run past the end.
__device__ __forceinline__ void *dynamic_smem(u64 bytes) {
#ifdef LWPF_EMU
    return lwpf_emu::dynamic_smem(bytes);
#else
    // float4: the base is 16-byte aligned, enough for any struct placed there.
    extern __shared__ float4 lwpf_dynamic_smem_base[];
    unsigned size;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(size));
    if (size < bytes) {
        __trap();
    }
    return lwpf_dynamic_smem_base;
#endif
}

// Input element types besides f32: bf16 and fp16 held as their bits, so
// that the host emulation needs no CUDA header. Kernels read them through
// load_f32; every value of either type is exact in f32 (and in tf32), and
// all arithmetic after the load is f32.
struct LwpfBf16 {
    unsigned short bits;
};
struct LwpfF16 {
    unsigned short bits;
};

__device__ __forceinline__ float load_f32(const float *p, u64 i) { return p[i]; }

__device__ __forceinline__ float load_f32(const LwpfBf16 *p, u64 i) {
    return __uint_as_float((unsigned)p[i].bits << 16);
}

__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
#ifdef LWPF_EMU
    const unsigned sign = (unsigned)(h >> 15) << 31;
    const unsigned exp = (h >> 10) & 0x1f;
    const unsigned mant = h & 0x3ff;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24, exact in f32.
        const float mag = ldexpf((float)mant, -24);
        return __uint_as_float(__float_as_uint(mag) | sign);
    }
    if (exp == 0x1f) {
        return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    }
    return __uint_as_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ float load_f32(const LwpfF16 *p, u64 i) {
    return f16_bits_to_f32(p[i].bits);
}

// Whether key j of batch item b takes part in the call (no mask: all do).
__device__ __forceinline__ bool key_is_valid(const unsigned char *valid, int n_k, int b, int j) {
    return valid == nullptr || valid[(u64)b * n_k + j] != 0;
}

#endif
