//! Prints the CPU bench table of `benches/README.md`: forward + backward of
//! the op on the fast path and the unfused baseline, as time, FLOP/s, a
//! fraction of this machine's measured GEMM rate, and peak extra memory.
//!
//! `cargo bench --bench table` (add `-- --quick` for fewer repetitions, and
//! plain numbers such as `-- 1024` to run only those sequence lengths).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lwpf::gemm::{Par, Trans, sgemm};
use lwpf::op::{self, AttentionConfig, AttentionInput, Backend, Forgetting, Pfu, Shape};

/// Counts live heap bytes and their high-water mark.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every allocation to the system allocator unchanged; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn gemm_rate(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b = a.clone();
    let mut c = vec![0.0f32; n * n];
    let t = median_secs(reps, || {
        sgemm(Trans::No, Trans::No, n, n, n, 1.0, &a, n, &b, n, 0.0, &mut c, n, Par::Rayon)
    });
    2.0 * (n as f64).powi(3) / t
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 7 };
    let threads = rayon::current_num_threads();
    let gemm = gemm_rate(2048, reps);
    println!("threads: {threads}; sgemm 2048^3: {:.1} GFLOP/s\n", gemm / 1e9);
    println!("| N | forget | path | fwd+bwd ms | GFLOP/s | of GEMM | x none | peak extra MiB |");
    println!("|---|---|---|---|---|---|---|---|");

    let (b, h, d) = (4, 4, 64);
    // Plain numbers among the arguments pick sequence lengths (default: all).
    let mut sizes: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![128, 512, 1024, 2048];
    }
    for n in sizes {
        let shape = Shape::new(b, h, n, n, d);
        let make = |len: usize, salt: usize| -> Vec<f32> {
            (0..len).map(|i| ((i * 2654435761 + salt) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        let (q, k, v, g) = (
            make(shape.q_len(), 1),
            make(shape.k_len(), 2),
            make(shape.v_len(), 3),
            make(shape.o_len(), 4),
        );
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
        let flops = 4.0 * (b * h) as f64 * (n * n) as f64 * d as f64 * 3.5;
        for backend in [Backend::Cpu, Backend::Unfused] {
            let mut none_t = 0.0;
            for (fname, f) in [
                ("none", Forgetting::None),
                ("relu", Forgetting::Relu),
                ("pfu median", Forgetting::Pfu(Pfu::median_preset())),
            ] {
                let cfg = AttentionConfig {
                    forgetting: f,
                    training: true,
                    seed: 7,
                    ..Default::default()
                };
                let base = LIVE.load(Ordering::Relaxed);
                PEAK.store(base, Ordering::Relaxed);
                let t = median_secs(reps, || {
                    let fwd = op::forward(&input, &cfg, backend).expect("bench input is valid");
                    let grads = op::backward(&input, &cfg, &fwd, &g, backend).expect("valid");
                    std::hint::black_box(grads);
                });
                // Outputs (O, lse, dQ, dK, dV) are part of any path's cost;
                // report what comes on top of them.
                let outputs = 4
                    * (shape.o_len()
                        + shape.rows()
                        + shape.q_len()
                        + shape.k_len()
                        + shape.v_len());
                let peak =
                    PEAK.load(Ordering::Relaxed).saturating_sub(base).saturating_sub(outputs);
                if fname == "none" {
                    none_t = t;
                }
                println!(
                    "| {n} | {fname} | {} | {:.2} | {:.1} | {:.0}% | {:.2} | {:.1} |",
                    backend.name(),
                    t * 1e3,
                    flops / t / 1e9,
                    100.0 * flops / t / gemm,
                    t / none_t,
                    peak as f64 / (1 << 20) as f64
                );
            }
        }
    }
}
