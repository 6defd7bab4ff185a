//! criterion: forward + backward of the op, fast CPU path against the unfused
//! baseline, at B = 4, H = 4, D = 64, with `none`, `relu` and `pfu` (median).
//! Throughput is in FLOP (4 * B * H * N^2 * D * 3.5 for forward + backward),
//! so criterion's "elements/s" read as FLOP/s; the `gemm` group gives the
//! machine's sgemm rate to compare them with. `benches/table.rs` prints the
//! same comparison as one table with memory.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lwpf::gemm::{Par, Trans, sgemm};
use lwpf::op::{self, AttentionConfig, AttentionInput, Backend, Forgetting, Pfu, Shape};

fn values(len: usize, salt: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 2_654_435_761 + salt) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn gemm_rate(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    for n in [512usize, 2048] {
        let a = values(n * n, 1);
        let b = values(n * n, 2);
        let mut out = vec![0.0f32; n * n];
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_function(BenchmarkId::new("sgemm", n), |bench| {
            bench.iter(|| {
                sgemm(
                    Trans::No,
                    Trans::No,
                    n,
                    n,
                    n,
                    1.0,
                    &a,
                    n,
                    &b,
                    n,
                    0.0,
                    &mut out,
                    n,
                    Par::Rayon,
                )
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let (b, h, d) = (4, 4, 64);
    let mut g = c.benchmark_group("attention_fwd_bwd");
    g.sample_size(10);
    for n in [128usize, 512, 1024, 2048] {
        let shape = Shape::new(b, h, n, n, d);
        let (q, k, v, dout) = (
            values(shape.q_len(), 1),
            values(shape.k_len(), 2),
            values(shape.v_len(), 3),
            values(shape.o_len(), 4),
        );
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
        g.throughput(Throughput::Elements((4.0 * (b * h * n * n * d) as f64 * 3.5) as u64));
        for (name, f) in [
            ("none", Forgetting::None),
            ("relu", Forgetting::Relu),
            ("pfu_median", Forgetting::Pfu(Pfu::median_preset())),
        ] {
            let cfg =
                AttentionConfig { forgetting: f, training: true, seed: 3, ..Default::default() };
            for backend in [Backend::Cpu, Backend::Unfused] {
                if backend == Backend::Unfused && n > 1024 {
                    // Seconds per iteration and a GiB of scores: the table
                    // bench covers it once.
                    continue;
                }
                let id = BenchmarkId::new(format!("{}/{name}", backend.name()), n);
                g.bench_function(id, |bench| {
                    bench.iter(|| {
                        let fwd = op::forward(&input, &cfg, backend).expect("valid input");
                        op::backward(&input, &cfg, &fwd, &dout, backend).expect("valid input")
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, gemm_rate, attention);
criterion_main!(benches);
