//! criterion: the op's fused paths against the unfused baseline.
//!
//! - `attention_fwd_bwd` (always): forward + backward on the CPU, the fast
//!   path against the unfused baseline, at B = 4, H = 4, D = 64, with
//!   `none`, `relu` and `pfu` (median); the `gemm` group gives the machine's
//!   sgemm rate to compare them with. `benches/table.rs` prints the same
//!   comparison as one table with memory.
//! - `cuda` (with `--features cuda`, where a GPU is): the fused kernels
//!   against the unfused baseline on the device, forward, backward and
//!   both, in bf16 and f32, at D in {64, 128}, N in {512, 1k, 2k, 4k, 8k}
//!   with B * N = 16k and H = 16, for `none`, `relu` and `pfu` (median).
//!   Each call stays on the device (`cuda::bench::BenchCall`); a batch of
//!   criterion's iterations is enqueued back to back and the device
//!   synchronized once at its end. A table of the unfused/fused ratios and
//!   the device memory of each path follows criterion's output (also
//!   written to `$LWPF_BENCH_TABLE` when that is set). `LWPF_BENCH_QUICK=1`
//!   narrows the sweep to N in {1k, 4k} at D = 64 for a short check.
//!
//! Throughput is in FLOP (4 * B * H * N^2 * D forward, 2.5 times that
//! backward), so criterion's "elements/s" read as FLOP/s.

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

#[cfg(feature = "cuda")]
mod gpu {
    use std::fmt::Write as _;
    use std::time::{Duration, Instant};

    use criterion::{BenchmarkId, Criterion, Throughput};
    use lwpf::op::kernels::backward::DqMode;
    use lwpf::op::kernels::cuda::{
        self,
        bench::{BenchCall, Pass, Path},
    };
    use lwpf::op::{AttentionConfig, AttentionInput, Forgetting, Pfu, Precision, Shape};

    /// One measured case: its mean time per iteration over everything
    /// criterion ran (warm-up included) and the device memory of its path.
    struct Row {
        d: usize,
        n: usize,
        precision: Precision,
        forgetting: &'static str,
        pass: Pass,
        path: Path,
        ms: f64,
        flops: f64,
        mib: f64,
    }

    const TOKENS: usize = 16 * 1024;
    const HEADS: usize = 16;

    pub fn attention_cuda(c: &mut Criterion) {
        if let Err(e) = cuda::available() {
            eprintln!("cuda benches: skipped, no GPU backend: {e}");
            return;
        }
        let quick = std::env::var_os("LWPF_BENCH_QUICK").is_some_and(|v| v != "0");
        let (dims, ns): (&[usize], &[usize]) = if quick {
            (&[64], &[1024, 4096])
        } else {
            (&[64, 128], &[512, 1024, 2048, 4096, 8192])
        };
        let variants = [
            ("none", Forgetting::None),
            ("relu", Forgetting::Relu),
            ("pfu_median", Forgetting::Pfu(Pfu::median_preset())),
        ];
        let mut g = c.benchmark_group("cuda");
        let measure = if quick { 500 } else { 1000 };
        g.sample_size(10).warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_millis(measure));
        let mut rows = Vec::new();
        for &d in dims {
            for &n in ns {
                let shape = Shape::new(TOKENS / n, HEADS, n, n, d);
                let (q, k, v) = (
                    super::values(shape.q_len(), 1),
                    super::values(shape.k_len(), 2),
                    super::values(shape.v_len(), 3),
                );
                let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
                for precision in [Precision::Bf16, Precision::F32] {
                    for (forgetting, f) in variants {
                        let cfg = AttentionConfig {
                            forgetting: f,
                            training: true,
                            seed: 3,
                            precision,
                            ..Default::default()
                        };
                        let paths = [
                            Path::Fused(DqMode::Deterministic),
                            Path::Fused(DqMode::Atomic),
                            Path::Unfused,
                        ];
                        for path in paths {
                            let mut call = match BenchCall::new(input, &cfg, path) {
                                Ok(call) => call,
                                Err(e) => {
                                    eprintln!(
                                        "cuda benches: {} at {shape} not run: {e}",
                                        path.name()
                                    );
                                    continue;
                                }
                            };
                            let mib = call.device_bytes() as f64 / (1 << 20) as f64;
                            for pass in Pass::ALL {
                                // The atomic dQ mode changes the backward only.
                                if path == Path::Fused(DqMode::Atomic) && pass != Pass::Both {
                                    continue;
                                }
                                let name = format!(
                                    "{}/{}/{}/{forgetting}/d{d}",
                                    path.name(),
                                    pass.name(),
                                    precision.name()
                                );
                                g.throughput(Throughput::Elements(pass.flops(shape) as u64));
                                let (mut total, mut iters_run) = (Duration::ZERO, 0u64);
                                g.bench_function(BenchmarkId::new(name, n), |b| {
                                    b.iter_custom(|iters| {
                                        let start = Instant::now();
                                        for _ in 0..iters {
                                            call.enqueue(pass).expect("enqueue");
                                        }
                                        call.synchronize().expect("synchronize");
                                        let took = start.elapsed();
                                        total += took;
                                        iters_run += iters;
                                        took
                                    })
                                });
                                if iters_run > 0 {
                                    let ms = total.as_secs_f64() * 1e3 / iters_run as f64;
                                    let flops = pass.flops(shape);
                                    rows.push(Row {
                                        d,
                                        n,
                                        precision,
                                        forgetting,
                                        pass,
                                        path,
                                        ms,
                                        flops,
                                        mib,
                                    });
                                }
                            }
                        }
                    }
                }
                write_table(&rows);
            }
        }
        g.finish();
        println!("\n{}", write_table(&rows));
    }

    /// The table of the cases measured so far, written to
    /// `$LWPF_BENCH_TABLE` when that is set (after every shape, so that a
    /// run cut short keeps what it measured) and returned.
    fn write_table(rows: &[Row]) -> String {
        let table = summary(rows);
        if let Some(path) = std::env::var_os("LWPF_BENCH_TABLE")
            && let Err(e) = std::fs::write(&path, &table)
        {
            eprintln!("cuda benches: could not write {}: {e}", path.to_string_lossy());
        }
        table
    }

    /// The markdown table of the measured cases: per case the fused and
    /// unfused times, rates and memory, the unfused/fused ratio, and the
    /// atomic dQ mode where it ran; then the goals' ratios.
    fn summary(rows: &[Row]) -> String {
        let find = |r: &Row, path: Path, pass: Pass, forgetting: &str| {
            rows.iter().find(|x| {
                (x.d, x.n, x.precision, x.pass, x.path) == (r.d, r.n, r.precision, pass, path)
                    && x.forgetting == forgetting
            })
        };
        let fused = Path::Fused(DqMode::Deterministic);
        let mut t = String::new();
        t.push_str(
            "| D | N | B | dtype | forget | pass | fused ms | fused TFLOP/s | unfused ms | \
             unfused TFLOP/s | unfused / fused | fused atomic-dQ ms | fused MiB | unfused MiB |\n",
        );
        t.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let cell = |x: Option<&Row>, f: &dyn Fn(&Row) -> String| x.map_or("-".into(), f);
        for r in rows.iter().filter(|r| r.path == fused) {
            let un = find(r, Path::Unfused, r.pass, r.forgetting);
            let atomic = find(r, Path::Fused(DqMode::Atomic), r.pass, r.forgetting);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {:.3} | {:.1} | {} | {} | {} | {} | {:.0} | {} |",
                r.d,
                r.n,
                TOKENS / r.n,
                r.precision.name(),
                r.forgetting,
                r.pass.name(),
                r.ms,
                r.flops / (r.ms * 1e9),
                cell(un, &|u| format!("{:.3}", u.ms)),
                cell(un, &|u| format!("{:.1}", u.flops / (u.ms * 1e9))),
                cell(un, &|u| format!("{:.2}", u.ms / r.ms)),
                cell(atomic, &|a| format!("{:.3}", a.ms)),
                r.mib,
                cell(un, &|u| format!("{:.0}", u.mib)),
            );
        }
        t.push_str("\nGoals (bf16, D = 64):\n\n");
        for r in rows.iter().filter(|r| {
            r.path == fused && r.precision == Precision::Bf16 && r.d == 64 && r.n >= 2048
        }) {
            if r.pass == Pass::Both
                && r.forgetting == "pfu_median"
                && let Some(u) = find(r, Path::Unfused, Pass::Both, "pfu_median")
            {
                let _ = writeln!(
                    t,
                    "- N = {}: pfu median fwd+bwd, unfused / fused = {:.2} (goal >= 3 at N = 4k)",
                    r.n,
                    u.ms / r.ms
                );
            }
            if r.pass == Pass::Forward
                && r.forgetting == "pfu_median"
                && let Some(fixed) = find(r, fused, Pass::Forward, "relu")
            {
                let _ = writeln!(
                    t,
                    "- N = {}: median forward at {:.2}x the speed of the fixed-center (relu) \
                     forward (goal >= 0.6)",
                    r.n,
                    fixed.ms / r.ms
                );
            }
        }
        t
    }
}

#[cfg(feature = "cuda")]
fn attention_cuda(c: &mut Criterion) {
    gpu::attention_cuda(c);
}

#[cfg(not(feature = "cuda"))]
fn attention_cuda(_: &mut Criterion) {}

criterion_group!(benches, gemm_rate, attention, attention_cuda);
criterion_main!(benches);
