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

// Whether key j of batch item b takes part in the call (no mask: all do).
__device__ __forceinline__ bool key_is_valid(const unsigned char *valid, int n_k, int b, int j) {
    return valid == nullptr || valid[(u64)b * n_k + j] != 0;
}

#endif
