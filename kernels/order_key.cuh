// Order-preserving 32-bit keys of floats, for the radix selection of the
// median: unsigned order of the keys is the order of the floats.
#ifndef LWPF_ORDER_KEY_CUH
#define LWPF_ORDER_KEY_CUH

#include "common.cuh"

// Negative floats have all bits flipped (their magnitude order is reversed);
// non-negative ones get the sign bit set, which puts them above every negative
// one. -0.0 is mapped to the key of +0.0 first: the two compare equal, and the
// median counts its ties by key.
__device__ __forceinline__ unsigned order_key(float x) {
    unsigned u = __float_as_uint(x == 0.0f ? 0.0f : x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Inverse of order_key.
__device__ __forceinline__ float from_order_key(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

#endif
