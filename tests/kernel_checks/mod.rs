//! Checks of the fused kernels against the CPU reference, one body per
//! property, shared by every way of running the kernels (host emulation in
//! kernels_emulated.rs, the GPU in kernels_cuda.rs).
//!
//! Inputs are small dyadic rationals with a power-of-two beta, so the kernels'
//! f32 scores equal the reference's f64 scores exactly: medians, thresholds,
//! kept/forgotten decisions and the statistics must agree exactly, and only
//! the softmax and the value product carry rounding (SPEC section 7: f32 CUDA
//! paths under 1e-4).
#![allow(dead_code)]

use crate::common::*;
use lwpf::op::{
    self, AttentionConfig, AttentionInput, Backend, Bias, Center, Forgetting, Forward, Pfu,
    Precision, Shape, philox,
};

const TOL: f64 = 1e-4;

/// A way of running the fused forward pass.
pub type ForwardFn = fn(&AttentionInput, &AttentionConfig) -> lwpf::Result<Forward>;

/// Ragged against every tile (32 x 32): N = 1, Nq != Nk, neither a multiple
/// of 32, D beyond one staged chunk of 32, Dv != D.
pub fn ragged_kernel_shapes() -> Vec<Shape> {
    vec![
        Shape::new(1, 1, 1, 1, 4),
        Shape::new(2, 3, 5, 7, 4),
        Shape { d_v: 3, ..Shape::new(2, 1, 35, 67, 4) },
        Shape::new(1, 1, 40, 20, 36),
    ]
}

// ---- The MMA wrapper -------------------------------------------------------------

/// tf32 rounding as cvt.rna: 10 mantissa bits, ties away from zero.
fn tf32(x: f32) -> f32 {
    f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000)
}

/// A way of running the MMA self-test kernel: `(warps, a, b, c) -> d`.
pub type MmaFn = fn(u32, &[f32], &[f32], &[f32]) -> lwpf::Result<Vec<f32>>;

/// The MMA wrapper computes `d = tf32(a) tf32(b) + c` with its documented
/// fragment layout.
pub fn mma_matches_loops(mma: MmaFn) {
    let seed = run_seed("mma");
    let mut r = rng(seed);
    let warps = 2u32;
    let n = warps as usize;
    // Continuous values exercise the tf32 rounding of A and B.
    let a = uniform(&mut r, n * 128);
    let b = uniform(&mut r, n * 64);
    let c = uniform(&mut r, n * 128);
    let d = mma(warps, &a, &b, &c).expect("mma self-test");
    for w in 0..n {
        for i in 0..16 {
            for j in 0..8 {
                let mut want = c[w * 128 + i * 8 + j] as f64;
                for k in 0..8 {
                    want +=
                        tf32(a[w * 128 + i * 8 + k]) as f64 * tf32(b[w * 64 + k * 8 + j]) as f64;
                }
                let got = d[w * 128 + i * 8 + j] as f64;
                assert!((got - want).abs() < 1e-5, "warp {w} d[{i}][{j}] {got} vs {want}");
            }
        }
    }
}

/// A way of reading 16-bit words: `bits -> (as bf16, as fp16)`.
pub type ConvertFn = fn(&[u16]) -> lwpf::Result<(Vec<f32>, Vec<f32>)>;

/// Every 16-bit word, read as bf16 and as fp16 (zeros, subnormals,
/// infinities and NaNs included), against the `half` crate.
pub fn conversions_match_half(convert: ConvertFn) {
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let (bf, h) = convert(&bits).expect("conversion self-test");
    for (i, &w) in bits.iter().enumerate() {
        let (want_bf, want_h) =
            (half::bf16::from_bits(w).to_f32(), half::f16::from_bits(w).to_f32());
        for (name, got, want) in [("bf16", bf[i], want_bf), ("f16", h[i], want_h)] {
            let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
            assert!(same, "{name} {w:#06x}: {got:e} vs {want:e}");
        }
    }
}

// ---- The median kernels ----------------------------------------------------------

/// The lower median and its tie count of the scores as the kernels compute
/// them: one fma chain over d in ascending order, then a rounded product with
/// beta. `f32::mul_add` is that fma, so these are the kernels' bits exactly.
fn sorted_median(input: &AttentionInput, beta: f32) -> Option<(f32, u64)> {
    let s = input.shape;
    let mut all = Vec::new();
    for bh in 0..s.batch * s.heads {
        for i in 0..s.n_q {
            for j in (0..s.n_k).filter(|&j| input.is_valid(bh / s.heads, j)) {
                let qi = &input.q[(bh * s.n_q + i) * s.d..][..s.d];
                let kj = &input.k[(bh * s.n_k + j) * s.d..][..s.d];
                let dot = qi.iter().zip(kj).fold(0.0f32, |acc, (a, b)| a.mul_add(*b, acc));
                all.push(beta * dot);
            }
        }
    }
    if all.is_empty() {
        return None;
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let m = all[(all.len() - 1) / 2];
    Some((m, all.iter().filter(|&&x| x == m).count() as u64))
}

pub fn median_is_exact(forward: ForwardFn) {
    let seed = run_seed("median kernels");
    let mut r = rng(seed);
    let beta = 0.5;
    let shapes = [
        Shape::new(1, 1, 1, 1, 3),
        Shape::new(2, 3, 5, 7, 4),
        Shape::new(1, 2, 33, 65, 5),
        Shape::new(2, 1, 40, 31, 40),
    ];
    for shape in shapes {
        for use_mask in [false, true] {
            // Dyadic scores tie a lot: the median's tie count is tested too.
            let q = dyadic(&mut r, shape.q_len());
            let k = dyadic(&mut r, shape.k_len());
            let v = vec![0.0; shape.v_len()];
            let m = mask(&mut r, shape.batch, shape.n_k, true);
            let input =
                AttentionInput { q: &q, k: &k, v: &v, valid: use_mask.then_some(&m[..]), shape };
            let cfg = AttentionConfig {
                beta: Some(beta),
                forgetting: Forgetting::Pfu(Pfu::median_preset()),
                ..Default::default()
            };
            let got = forward(&input, &cfg).expect("backend").stats;
            let want = sorted_median(&input, beta);
            assert_eq!(got.threshold.m.map(|m| (m, got.at_median)), want, "{shape} {use_mask}");
        }
    }
    // Negative, positive and continuous scores: every key bit is exercised.
    let shape = Shape::new(1, 2, 37, 45, 7);
    let q = uniform(&mut r, shape.q_len());
    let k = uniform(&mut r, shape.k_len());
    let v = vec![0.0; shape.v_len()];
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let cfg = AttentionConfig::with_forgetting(Forgetting::Pfu(Pfu::median_preset()));
    let got = forward(&input, &cfg).expect("backend").stats;
    let want = sorted_median(&input, cfg.beta_for(shape.d));
    assert_eq!(got.threshold.m.map(|m| (m, got.at_median)), want, "continuous scores");
}

// ---- The fused forward -----------------------------------------------------------

fn check_forward(forward: ForwardFn, input: &AttentionInput, cfg: &AttentionConfig, name: &str) {
    let want = op::forward(input, cfg, Backend::Reference).expect("reference");
    let got = forward(input, cfg).expect("backend");
    assert_eq!(got.stats, want.stats, "{name}: statistics");
    let e = rel_l2(&got.o, &want.o);
    assert!(e < TOL, "{name}: O rel err {e:e}");
    compare_lse(name, &got.lse, &want.lse, TOL as f32);
}

/// Every option of SPEC (option_matrix) on ragged shapes, with and without a
/// key padding mask (one batch item fully padded).
pub fn forward_matches_reference(forward: ForwardFn, shapes: &[Shape]) {
    let seed = run_seed("emulated forward");
    let mut r = rng(seed);
    for &shape in shapes {
        for use_mask in [false, true] {
            for case in option_matrix(0.25, seed ^ 0xabc) {
                let drawn = Drawn::new(&mut r, shape);
                let input = drawn.input(use_mask);
                let name = format!("{shape} mask={use_mask} {}", case.name);
                check_forward(forward, &input, &case.cfg, &name);
            }
        }
    }
}

/// Q, K and V in `precision` (bf16 or fp16): the kernels against the
/// reference on the same rounded inputs, where dyadic Q and K make every
/// score exact in both (tensor cores or not), so the statistics agree
/// exactly and O to f32 round-off; and against the f32 reference on the
/// unrounded inputs under SPEC's 1e-2 for 16-bit inputs.
pub fn forward_in_precision(forward: ForwardFn, precision: Precision) {
    let seed = run_seed("forward in precision");
    let mut r = rng(seed);
    for shape in precision_shapes() {
        for use_mask in [false, true] {
            for case in cases_named(0.25, seed ^ 0xabc, &PRECISION_CASES) {
                let drawn = Drawn::new(&mut r, shape);
                let input = drawn.input(use_mask);
                let name = format!("{} {shape} mask={use_mask} {}", precision.name(), case.name);
                let cfg = AttentionConfig { precision, ..case.cfg };
                check_forward(forward, &input, &cfg, &name);

                let f32_cfg = AttentionConfig { precision: Precision::F32, ..case.cfg };
                let want = op::forward(&input, &f32_cfg, Backend::Reference).expect("reference");
                let got = forward(&input, &cfg).expect("backend");
                let e = rel_l2(&got.o, &want.o);
                assert!(e < 1e-2, "{name}: O against the f32 reference, rel err {e:e}");
            }
        }
    }
}

/// Rows whose every key is forgotten: relu with all scores <= 0 (the
/// collapse of section 4.2), and pfu with b = -inf, where those rows are 0.
pub fn rows_with_every_key_forgotten(forward: ForwardFn) {
    let shape = Shape::new(1, 2, 6, 9, 4);
    // Q >= 0 and K <= 0: every score is <= 0, with some exactly 0.
    let q: Vec<f32> = (0..shape.q_len()).map(|i| (i % 3) as f32 / 4.0).collect();
    let k: Vec<f32> = (0..shape.k_len()).map(|i| -((i % 5) as f32) / 8.0).collect();
    let v: Vec<f32> = (0..shape.v_len()).map(|i| (i % 7) as f32 - 3.0).collect();
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let neg_inf = Forgetting::Pfu(Pfu {
        center: Center::Fixed(0.0),
        noise_std: 0.0,
        bias: Bias::NegInf,
        center_gradient: false,
    });
    for (name, f) in [("relu", Forgetting::Relu), ("pfu b=-inf", neg_inf)] {
        for drop in [true, false] {
            let cfg = AttentionConfig {
                beta: Some(0.5),
                forgetting: f,
                drop_forgotten: drop,
                ..Default::default()
            };
            let got = forward(&input, &cfg).expect("backend");
            assert_eq!(got.stats.forgotten, got.stats.entries, "{name}: all forgotten");
            check_forward(forward, &input, &cfg, &format!("{name} drop_forgotten={drop}"));
            if matches!(f, Forgetting::Pfu(_)) {
                assert!(got.o.iter().all(|&x| x == 0.0), "{name}: empty rows are 0");
                assert!(got.lse.iter().all(|&x| x == f32::NEG_INFINITY));
            }
        }
    }
}

/// With equal scores and V the identity, O_i[j] = r_ij / Nk: the kernel's
/// dropout mask can be read off the output and must be Philox's, bit for bit.
pub fn dropout_mask_is_philox(forward: ForwardFn) {
    let seed = run_seed("dropout mask");
    let shape = Shape { d_v: 37, ..Shape::new(2, 1, 45, 37, 4) };
    let q = vec![0.0f32; shape.q_len()];
    let k = vec![0.0f32; shape.k_len()];
    let mut v = vec![0.0f32; shape.v_len()];
    for bh in 0..shape.batch * shape.heads {
        for j in 0..shape.n_k {
            v[(bh * shape.n_k + j) * shape.d_v + j] = 1.0;
        }
    }
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let p = 0.3f32;
    let cfg = AttentionConfig { dropout: p, seed, training: true, ..Default::default() };
    let got = forward(&input, &cfg).expect("backend");
    let key = philox::key_of(seed);
    let mut dropped = 0;
    for row in 0..shape.rows() {
        for j in 0..shape.n_k {
            let e = (row * shape.n_k + j) as u64;
            let keep = philox::dropout_keep(key, e, p);
            let o = got.o[row * shape.d_v + j];
            assert_eq!(o > 0.0, keep, "entry {e}: O = {o}");
            dropped += !keep as usize;
        }
    }
    assert!(dropped > 0, "p = {p} must drop something");
}
