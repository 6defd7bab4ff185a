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

// Whether key j of batch item b takes part in the call (no mask: all do).
__device__ __forceinline__ bool key_is_valid(const unsigned char *valid, int n_k, int b, int j) {
    return valid == nullptr || valid[(u64)b * n_k + j] != 0;
}

#endif
