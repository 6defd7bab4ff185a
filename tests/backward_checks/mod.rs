//! Checks of the fused backward kernels against the CPU reference, one body
//! per property, shared by the host emulation (kernels_emulated_backward.rs)
//! and the GPU (kernels_cuda_backward.rs).
//!
//! Inputs are small dyadic rationals with a power-of-two beta (SPEC section
//! 7): the kernels' scores, medians, ties and kept / forgotten decisions are
//! the reference's exactly, and only the softmax and the products round. The
//! tolerance is SPEC's for f32 CUDA paths, 1e-4 relative L2, with dQ and dK
//! floored at the f32 round-off of the terms they sum (common::rel_l2_grad).
#![allow(dead_code)]

use crate::common::*;
use lwpf::op::{
    self, AttentionConfig, AttentionInput, Backend, Bias, Center, Forgetting, Forward, Grads, Pfu,
    Precision, Shape,
};

const TOL: f64 = 1e-4;

/// A way of running the fused forward pass.
pub type ForwardFn = fn(&AttentionInput, &AttentionConfig) -> lwpf::Result<Forward>;
/// A way of running the fused backward pass from that forward's result.
pub type BackwardFn =
    fn(&AttentionInput, &AttentionConfig, &Forward, &[f32]) -> lwpf::Result<Grads>;

/// Ragged against every tile (32 x 32): N = 1, Nq != Nk, neither a multiple
/// of 32, D and Dv unequal, several key tiles and query tiles.
pub fn ragged_backward_shapes() -> Vec<Shape> {
    vec![
        Shape::new(1, 1, 1, 1, 4),
        Shape::new(2, 3, 5, 7, 4),
        Shape { d_v: 3, ..Shape::new(2, 1, 35, 67, 4) },
        Shape { d_v: 9, ..Shape::new(1, 1, 40, 20, 36) },
    ]
}

/// Shapes of the wide build of the tiled kernels (D or Dv over 64, both at
/// most 128): both at the limit; D below Dv; D just at the narrow limit and
/// Dv one past it; and D = 100, Dv = 67, no multiple of the 32-column score
/// chunks, and Dv none of the four columns a thread accumulates apart. Two
/// query and two key tiles each, the second ragged.
pub fn wide_backward_shapes() -> Vec<Shape> {
    vec![
        Shape::new(1, 1, 40, 36, 128),
        Shape { d_v: 128, ..Shape::new(1, 1, 33, 45, 96) },
        Shape { d_v: 65, ..Shape::new(1, 1, 35, 34, 64) },
        Shape { d_v: 67, ..Shape::new(1, 1, 37, 40, 100) },
    ]
}

/// Beta of the wide checks: a power of two near 1 / sqrt(128), so that the
/// scores of the wide rows stay exact and of order one.
pub const WIDE_BETA: f32 = 0.125;

/// The options the wide shapes are checked on, from the option matrix: no
/// forgetting, relu with dropout, and pfu with the median and its center
/// gradient (forgotten entries dropped and kept, with and without dropout)
/// or a fixed centre and bias.
pub fn wide_cases(seed: u64) -> Vec<Case> {
    let names = [
        "none drop_forgotten=true eval",
        "relu drop_forgotten=true train+dropout",
        "pfu median b=z cg=true drop_forgotten=true train",
        "pfu median b=z cg=true drop_forgotten=false train+dropout",
        "pfu fixed b=fixed cg=false drop_forgotten=false eval",
    ];
    cases_named(WIDE_BETA, seed, &names)
}

/// `shapes` (wide ones) on [`wide_cases`], with and without a key padding
/// mask; every call with the center gradient must spread it.
pub fn wide_backward_matches_reference(forward: ForwardFn, backward: BackwardFn, shapes: &[Shape]) {
    let seed = run_seed("fused backward, wide");
    let mut r = rng(seed);
    let cases = wide_cases(seed ^ 0xabc);
    for &shape in shapes {
        for use_mask in [false, true] {
            for case in &cases {
                let drawn = Drawn::new(&mut r, shape);
                let input = drawn.input(use_mask);
                let g = &drawn.d_o;
                let name = format!("{shape} mask={use_mask} {}", case.name);
                let (f, _) = check_grads(forward, backward, &input, &case.cfg, g, &name);
                if case.name.contains("cg=true") {
                    let t = f.stats.threshold;
                    assert!(t.center_gradient && f.stats.at_median > 0, "{name}: no center grad");
                }
            }
        }
    }
}

/// Compares the kernels' gradients with the reference's for one call; the
/// kernels get their own forward pass, the reference its own.
pub fn check_grads(
    forward: ForwardFn,
    backward: BackwardFn,
    input: &AttentionInput,
    cfg: &AttentionConfig,
    d_o: &[f32],
    name: &str,
) -> (Forward, Grads) {
    let s = input.shape;
    let want_f = op::forward(input, cfg, Backend::Reference).expect("reference forward");
    let got_f = forward(input, cfg).expect("kernel forward");
    assert_eq!(got_f.stats, want_f.stats, "{name}: forward statistics");
    let want = op::backward(input, cfg, &want_f, d_o, Backend::Reference).expect("reference");
    let got = backward(input, cfg, &got_f, d_o).expect("kernel backward");

    let e = rel_l2(&got.dv, &want.dv);
    assert!(e < TOL, "{name}: dV rel err {e:e}");
    let beta = cfg.beta_for(s.d) as f64;
    let p = cfg.effective_dropout();
    let term = |other: &[f32]| score_grad_term(beta, other, s.d, d_o, input.v, s.d_v, p);
    for (t, a, b, other) in [("dQ", &got.dq, &want.dq, input.k), ("dK", &got.dk, &want.dk, input.q)]
    {
        let e = rel_l2_grad(a, b, term(other), TOL);
        assert!(e < TOL, "{name}: {t} rel err {e:e}");
    }
    (got_f, got)
}

/// Every option of SPEC (option_matrix) on ragged shapes, with and without a
/// key padding mask (one batch item fully padded); some calls must spread
/// the center gradient over several ties.
pub fn backward_matches_reference(forward: ForwardFn, backward: BackwardFn, shapes: &[Shape]) {
    let seed = run_seed("fused backward");
    let mut r = rng(seed);
    let mut tied_center_calls = 0;
    for &shape in shapes {
        for use_mask in [false, true] {
            for case in option_matrix(0.25, seed ^ 0xabc) {
                let drawn = Drawn::new(&mut r, shape);
                let input = drawn.input(use_mask);
                let g = &drawn.d_o;
                let name = format!("{shape} mask={use_mask} {}", case.name);
                let (f, _) = check_grads(forward, backward, &input, &case.cfg, g, &name);
                tied_center_calls +=
                    (f.stats.threshold.center_gradient && f.stats.at_median > 1) as usize;
            }
        }
    }
    assert!(tied_center_calls > 0, "the matrix must spread g_b over several ties");
}

/// Q, K and V in `precision` (bf16 or fp16) against the reference on the
/// same rounded inputs (dyadic Q and K: exact scores on tensor cores too);
/// the calls with the center gradient must spread it.
pub fn backward_in_precision(forward: ForwardFn, backward: BackwardFn, precision: Precision) {
    let seed = run_seed("fused backward in precision");
    let mut r = rng(seed);
    for shape in precision_shapes() {
        for use_mask in [false, true] {
            for case in cases_named(0.25, seed ^ 0xabc, &PRECISION_CASES) {
                let drawn = Drawn::new(&mut r, shape);
                let input = drawn.input(use_mask);
                let g = &drawn.d_o;
                let name = format!("{} {shape} mask={use_mask} {}", precision.name(), case.name);
                let cfg = AttentionConfig { precision, ..case.cfg };
                let (f, _) = check_grads(forward, backward, &input, &cfg, g, &name);
                if case.name.contains("cg=true") {
                    let t = f.stats.threshold;
                    assert!(t.center_gradient && f.stats.at_median > 0, "{name}: no center grad");
                }
            }
        }
    }
}

/// Rows whose every key is forgotten: relu with all scores <= 0, pfu with
/// b = -inf (empty rows: no gradient at all), and the median center with its
/// gradient, where every score ties or lies below the median.
pub fn rows_with_every_key_forgotten(forward: ForwardFn, backward: BackwardFn) {
    let seed = run_seed("backward, all forgotten");
    let mut r = rng(seed);
    let shape = Shape::new(1, 2, 6, 9, 4);
    let q: Vec<f32> = (0..shape.q_len()).map(|i| (i % 3) as f32 / 4.0).collect();
    let k: Vec<f32> = (0..shape.k_len()).map(|i| -((i % 5) as f32) / 8.0).collect();
    let v = uniform(&mut r, shape.v_len());
    let g = uniform(&mut r, shape.o_len());
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
            let name = format!("{name} drop_forgotten={drop}");
            let (fwd, grads) = check_grads(forward, backward, &input, &cfg, &g, &name);
            assert_eq!(fwd.stats.forgotten, fwd.stats.entries, "{name}: all forgotten");
            if matches!(f, Forgetting::Pfu(_)) {
                for x in [&grads.dq, &grads.dk, &grads.dv] {
                    assert!(x.iter().all(|&x| x == 0.0), "{name}: empty rows pass nothing");
                }
            }
        }
    }
}

/// Heavily tied scores at the median, with the center gradient on and off:
/// both must match the reference, and the center gradient must change dQ.
pub fn center_gradient_over_ties(forward: ForwardFn, backward: BackwardFn) {
    let seed = run_seed("backward, median ties");
    let mut r = rng(seed);
    let shape = Shape::new(2, 2, 9, 37, 4);
    // Entries in {-1/2, 0, 1/2}: scores take few values, many at the median.
    let three = |r: &mut _, n| -> Vec<f32> {
        dyadic(r, n).into_iter().map(|x| (x * 2.0).round() / 2.0).collect()
    };
    let q = three(&mut r, shape.q_len());
    let k = three(&mut r, shape.k_len());
    let v = uniform(&mut r, shape.v_len());
    let g = uniform(&mut r, shape.o_len());
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    for drop in [true, false] {
        for (training, dropout) in [(false, 0.0), (true, 0.3)] {
            let mut dq = Vec::new();
            for cg in [true, false] {
                let cfg = AttentionConfig {
                    beta: Some(0.5),
                    forgetting: Forgetting::Pfu(Pfu {
                        center: Center::Median,
                        noise_std: 0.25,
                        bias: Bias::Threshold,
                        center_gradient: cg,
                    }),
                    drop_forgotten: drop,
                    dropout,
                    seed,
                    training,
                    ..Default::default()
                };
                let name = format!("ties drop={drop} train={training} cg={cg}");
                let (f, grads) = check_grads(forward, backward, &input, &cfg, &g, &name);
                assert!(f.stats.at_median > 10, "{name}: {} ties only", f.stats.at_median);
                dq.push(grads.dq);
            }
            assert_ne!(dq[0], dq[1], "the center gradient must reach dQ");
        }
    }
}

/// The deterministic mode gives bit-identical gradients run to run.
pub fn deterministic_is_bit_identical(forward: ForwardFn, backward: BackwardFn) {
    let shape = Shape { d_v: 5, ..Shape::new(1, 2, 45, 70, 8) };
    deterministic_is_bit_identical_on(forward, backward, shape, 0.25);
}

/// [`deterministic_is_bit_identical`] on `shape` with `beta` (a power of
/// two): the median preset with dropout in training, three runs.
pub fn deterministic_is_bit_identical_on(
    forward: ForwardFn,
    backward: BackwardFn,
    shape: Shape,
    beta: f32,
) {
    let seed = run_seed("backward, deterministic");
    let mut r = rng(seed);
    let q = dyadic(&mut r, shape.q_len());
    let k = dyadic(&mut r, shape.k_len());
    let v = uniform(&mut r, shape.v_len());
    let g = uniform(&mut r, shape.o_len());
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let cfg = AttentionConfig {
        beta: Some(beta),
        forgetting: Forgetting::Pfu(Pfu::median_preset()),
        dropout: 0.2,
        seed,
        training: true,
        ..Default::default()
    };
    let name = format!("deterministic {shape}");
    let (f, first) = check_grads(forward, backward, &input, &cfg, &g, &name);
    for run in 0..2 {
        let again = backward(&input, &cfg, &f, &g).expect("kernel backward");
        for (t, a, b) in [
            ("dQ", &first.dq, &again.dq),
            ("dK", &first.dk, &again.dk),
            ("dV", &first.dv, &again.dv),
        ] {
            assert_same_bits(&format!("{t}, run {run}"), b, a);
        }
    }
}
