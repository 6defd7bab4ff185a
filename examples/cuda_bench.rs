//! Times the fused CUDA kernels (forward with its median, backward in both dQ
//! modes) with device events and prints a table: B * N = 16k, H = 16,
//! D = 64, N in {1k, 2k, 4k}, forgetting none / relu / pfu (median preset,
//! training, center gradient on). Run by scripts/gpu-check.sh:
//!
//!   cargo run --release --features cuda --example cuda_bench [-- --quick]
//!
//! FLOPs as KERNELS.md counts them: 4 B H N^2 D forward, 2.5 times that
//! backward (the median's three score passes and the backward's score
//! recomputation are not counted: the figure compares with plain attention).

#[cfg(feature = "cuda")]
fn main() {
    use lwpf::op::kernels::backward::DqMode;
    use lwpf::op::kernels::cuda;
    use lwpf::op::{AttentionConfig, AttentionInput, Forgetting, Pfu, Shape};

    let quick = std::env::args().any(|a| a == "--quick");
    if let Err(e) = cuda::available() {
        eprintln!("cuda_bench: no GPU backend: {e}");
        std::process::exit(1);
    }
    // Uniform values in [-1, 1) from a 64-bit LCG: no dependency, any size.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut fill = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    let (warmup, runs) = if quick { (1, 3) } else { (2, 7) };
    println!("| N | B | forgetting | dQ mode | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [1024usize, 2048, 4096] {
        let shape = Shape::new(16 * 1024 / n, 16, n, n, 64);
        let (q, k, v) = (fill(shape.q_len()), fill(shape.k_len()), fill(shape.v_len()));
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
        let flops = 4.0 * (shape.batch * shape.heads) as f64 * (n * n) as f64 * 64.0;
        let variants = [
            ("none", Forgetting::None),
            ("relu", Forgetting::Relu),
            ("pfu", Forgetting::Pfu(Pfu::median_preset())),
        ];
        for (name, forgetting) in variants {
            let cfg = AttentionConfig { forgetting, training: true, ..Default::default() };
            for (mode_name, mode) in [("det", DqMode::Deterministic), ("atomic", DqMode::Atomic)] {
                match cuda::time_kernels(&input, &cfg, mode, warmup, runs) {
                    Ok(t) => println!(
                        "| {n} | {} | {name} | {mode_name} | {:.3} | {:.1} | {:.3} | {:.1} |",
                        shape.batch,
                        t.forward_ms,
                        flops / (t.forward_ms as f64 * 1e9),
                        t.backward_ms,
                        2.5 * flops / (t.backward_ms as f64 * 1e9),
                    ),
                    Err(e) => {
                        println!("| {n} | {} | {name} | {mode_name} | error: {e} |", shape.batch)
                    }
                }
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("cuda_bench: built without the `cuda` feature (cargo run --features cuda ...)");
    std::process::exit(1);
}
