// Host emulation of the CUDA features the kernels use, so that every .cu file
// also compiles as host C++20 (g++ -x c++ -DLWPF_EMU) and runs without a GPU.
//
// The launcher (lwpf_emu::launch) runs the blocks of a grid one after another
// and the threads of a block as real OS threads. What that gives each feature:
// - __syncthreads is a std::barrier of the block's threads;
// - __shared__ becomes `static`: one copy per process, which is one copy per
//   block because blocks never overlap and launches are serialized by a mutex;
// - dynamic shared memory is one buffer per launch, of the size the launch
//   names, reached through dynamic_smem (common.cuh), which fails when a
//   kernel asks for more than the launch gave;
// - warp collectives (shuffles, votes, the MMA wrapper) meet at a barrier of
//   the warp's lanes, exchange values through the warp's slots, and meet again
//   before the slots may be reused;
// - atomics are std::atomic_ref on the same memory.
//
// Rules the kernels keep so that the emulation is faithful: warp collectives
// are called with the full mask of the warp; no thread leaves the kernel while
// others still wait at a __syncthreads; shared arrays are written before they
// are read (statics start at zero here, garbage on a GPU; dynamic shared
// memory starts as all-ones bytes, a NaN in every float, so that a read
// before the write shows in results).
//
// This proves index arithmetic, tiling, reductions and numerics. It proves no
// absence of races between real warps: only a GPU run checks that.
#ifndef LWPF_EMU_H
#define LWPF_EMU_H

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

// ---- Qualifiers -----------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static

// ---- Index types and built-in variables -----------------------------------

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

constexpr int warpSize = 32;

namespace lwpf_emu {

// The lanes of one warp: a barrier of its lanes and one exchange slot each.
// The MMA wrapper needs ten words per lane (its A, B and C fragments).
struct Warp {
    explicit Warp(unsigned lanes_) : lanes(lanes_), bar(lanes_) {}
    unsigned lanes;
    std::barrier<> bar;
    uint64_t slot[32][10];
};

// What one emulated thread knows about where it runs.
struct Context {
    std::barrier<> *block_barrier = nullptr;
    Warp *warp = nullptr;
    unsigned lane = 0;
    // The launch's dynamic shared memory.
    unsigned char *dynamic_smem = nullptr;
    size_t dynamic_smem_bytes = 0;
};

inline thread_local Context ctx;

[[noreturn]] inline void fail(const char *what) {
    std::fprintf(stderr, "lwpf emulation: %s\n", what);
    std::abort();
}

// Launches are serialized: __shared__ statics are shared by all blocks.
inline std::mutex &launch_mutex() {
    static std::mutex m;
    return m;
}

// Runs `body` as a kernel over `grid` x `block` with `smem_bytes` of dynamic
// shared memory: one OS thread per thread of the block, blocks in order (x
// fastest), a barrier between blocks so that no thread starts a block while
// another still works on the previous one.
template <class F>
void launch(dim3 grid, dim3 block, F &&body, size_t smem_bytes = 0) {
    const unsigned nt = block.x * block.y * block.z;
    const unsigned nb = grid.x * grid.y * grid.z;
    if (nt == 0 || nb == 0) {
        return;
    }
    if (nt > 1024) {
        fail("more than 1024 threads per block");
    }
    std::lock_guard<std::mutex> lock(launch_mutex());
    std::barrier<> block_barrier(nt);
    std::vector<std::unique_ptr<Warp>> warps;
    for (unsigned w = 0; w * 32 < nt; ++w) {
        unsigned lanes = nt - w * 32 < 32 ? nt - w * 32 : 32;
        warps.push_back(std::make_unique<Warp>(lanes));
    }
    // Whole max_align_t words, so that any struct may be placed at the base.
    const size_t words = (smem_bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    std::vector<std::max_align_t> smem(words);
    std::memset(smem.data(), 0xff, words * sizeof(std::max_align_t));
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned t = 0; t < nt; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockDim = block;
            gridDim = grid;
            ctx.block_barrier = &block_barrier;
            ctx.warp = warps[t / 32].get();
            ctx.lane = t % 32;
            ctx.dynamic_smem = reinterpret_cast<unsigned char *>(smem.data());
            ctx.dynamic_smem_bytes = smem_bytes;
            for (unsigned b = 0; b < nb; ++b) {
                blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
                body();
                block_barrier.arrive_and_wait();
            }
        });
    }
    for (auto &th : threads) {
        th.join();
    }
}

inline void *dynamic_smem(size_t bytes) {
    if (bytes > ctx.dynamic_smem_bytes) {
        fail("the kernel needs more dynamic shared memory than the launch gave");
    }
    return ctx.dynamic_smem;
}

inline unsigned active_mask() {
    unsigned n = ctx.warp->lanes;
    return n == 32 ? 0xffffffffu : (1u << n) - 1;
}

inline void check_mask(unsigned mask) {
    if ((mask & active_mask()) != active_mask()) {
        fail("warp collective without every lane of the warp");
    }
}

// Every lane publishes `v`, then lane `src_of(lane)` is read back.
template <class T, class Src>
T exchange(T v, Src src_of) {
    static_assert(sizeof(T) <= 8, "warp exchange of at most 8 bytes");
    Warp &w = *ctx.warp;
    std::memcpy(&w.slot[ctx.lane][0], &v, sizeof(T));
    w.bar.arrive_and_wait();
    unsigned src = src_of(ctx.lane);
    T r = v;
    if (src < w.lanes) {
        std::memcpy(&r, &w.slot[src][0], sizeof(T));
    }
    w.bar.arrive_and_wait();
    return r;
}

}  // namespace lwpf_emu

// ---- Barriers --------------------------------------------------------------

inline void __syncthreads() { lwpf_emu::ctx.block_barrier->arrive_and_wait(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    lwpf_emu::check_mask(mask);
    lwpf_emu::ctx.warp->bar.arrive_and_wait();
}

// ---- Warp shuffles and votes -----------------------------------------------
// `width` splits the warp into segments as on the device; a source outside
// the segment (shfl_up / shfl_down) returns the caller's own value.

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    lwpf_emu::check_mask(mask);
    return lwpf_emu::exchange(v, [&](unsigned lane) {
        unsigned base = lane & ~unsigned(width - 1);
        return base + (unsigned(src) & unsigned(width - 1));
    });
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    lwpf_emu::check_mask(mask);
    return lwpf_emu::exchange(v, [&](unsigned lane) {
        unsigned base = lane & ~unsigned(width - 1);
        unsigned to = lane ^ unsigned(lane_mask);
        return (to & ~unsigned(width - 1)) == base ? to : lane;
    });
}

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    lwpf_emu::check_mask(mask);
    return lwpf_emu::exchange(v, [&](unsigned lane) {
        unsigned in_seg = lane & unsigned(width - 1);
        return in_seg + delta < unsigned(width) ? lane + delta : lane;
    });
}

template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    lwpf_emu::check_mask(mask);
    return lwpf_emu::exchange(v, [&](unsigned lane) {
        unsigned in_seg = lane & unsigned(width - 1);
        return in_seg >= delta ? lane - delta : lane;
    });
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    lwpf_emu::check_mask(mask);
    lwpf_emu::Warp &w = *lwpf_emu::ctx.warp;
    w.slot[lwpf_emu::ctx.lane][0] = pred != 0;
    w.bar.arrive_and_wait();
    unsigned bits = 0;
    for (unsigned l = 0; l < w.lanes; ++l) {
        bits |= unsigned(w.slot[l][0]) << l;
    }
    w.bar.arrive_and_wait();
    return bits & mask;
}

inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

inline int __all_sync(unsigned mask, int pred) {
    return __ballot_sync(mask, pred) == (mask & lwpf_emu::active_mask());
}

// ---- Atomics ---------------------------------------------------------------
// Return the old value, as on the device.

template <class T>
T atomicAdd(T *addr, T v) {
    return std::atomic_ref<T>(*addr).fetch_add(v);
}

template <class T>
T atomicExch(T *addr, T v) {
    return std::atomic_ref<T>(*addr).exchange(v);
}

template <class T>
T atomicCAS(T *addr, T expected, T desired) {
    std::atomic_ref<T>(*addr).compare_exchange_strong(expected, desired);
    return expected;
}

template <class T>
T atomicMax(T *addr, T v) {
    std::atomic_ref<T> a(*addr);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

template <class T>
T atomicMin(T *addr, T v) {
    std::atomic_ref<T> a(*addr);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- Math and bit intrinsics ----------------------------------------------
// The emulation is compiled with -ffp-contract=off, so a * b + c rounds twice
// here; the kernels write fmaf where they want one rounding, and the _rn
// intrinsics where they must round twice on the device too.

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline int __float_as_int(float x) { return int(__float_as_uint(x)); }
inline float __int_as_float(int i) { return __uint_as_float(unsigned(i)); }

inline unsigned __umulhi(unsigned a, unsigned b) {
    return unsigned((uint64_t(a) * uint64_t(b)) >> 32);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x == 0 ? 32 : __builtin_clz(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

#endif
