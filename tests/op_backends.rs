//! Every CPU backend against the reference on fresh random inputs, ragged
//! shapes and the whole option matrix (SPEC section 7: relative L2 under 1e-5
//! for f32 CPU paths).
//!
//! Inputs are small dyadic rationals with beta a power of two, so every
//! backend computes bit-identical scores and medians: the threshold cannot
//! flip an entry between backends, and the statistics must agree exactly.

mod common;

use common::*;
use lwpf::op::{self, AttentionConfig, AttentionInput, Backend, Forgetting, Pfu, Shape};

const TOL: f64 = 1e-5;

fn check_backend(backend: Backend, shapes: &[Shape], masks: &[bool]) {
    let seed = run_seed(backend.name());
    let mut r = rng(seed);
    for &shape in shapes {
        for &use_mask in masks {
            for case in option_matrix(0.25, seed ^ 0xabc) {
                let drawn = Drawn::new(&mut r, shape);
                let input = drawn.input(use_mask);
                let g = &drawn.d_o;
                let name = format!("{backend:?} {shape} mask={use_mask} {}", case.name);

                let want = op::forward(&input, &case.cfg, Backend::Reference).expect("reference");
                let got = op::forward(&input, &case.cfg, backend).expect("backend");
                assert_eq!(got.stats, want.stats, "{name}: statistics");
                let e = rel_l2(&got.o, &want.o);
                assert!(e < TOL, "{name}: O rel err {e:e}");
                compare_lse(&name, &got.lse, &want.lse, TOL as f32);

                let gw = op::backward(&input, &case.cfg, &want, g, Backend::Reference)
                    .expect("reference");
                let gg = op::backward(&input, &case.cfg, &got, g, backend).expect("backend");
                let e = rel_l2(&gg.dv, &gw.dv);
                assert!(e < TOL, "{name}: dV rel err {e:e}");
                let beta = case.cfg.beta_for(shape.d) as f64;
                let p = case.cfg.effective_dropout();
                let term = |other: &[f32]| {
                    score_grad_term(beta, other, shape.d, g, &drawn.v, shape.d_v, p)
                };
                for (t, a, b, other) in
                    [("dQ", &gg.dq, &gw.dq, &drawn.k), ("dK", &gg.dk, &gw.dk, &drawn.q)]
                {
                    let e = rel_l2_grad(a, b, term(other), TOL);
                    assert!(e < TOL, "{name}: {t} rel err {e:e}");
                }
            }
        }
    }
}

#[test]
fn fast_path_matches_reference() {
    check_backend(Backend::Cpu, &ragged_shapes(), &[false, true]);
}

#[test]
fn unfused_baseline_matches_reference() {
    check_backend(Backend::Unfused, &ragged_shapes(), &[false, true]);
}

/// Continuous inputs, where f32 and f64 scores differ in the last bits: the
/// reference is evaluated at the threshold the fast path reports.
#[test]
fn fast_path_matches_reference_at_reported_threshold() {
    let seed = run_seed("reported threshold");
    let mut r = rng(seed);
    let shape = Shape { d_v: 5, ..Shape::new(2, 2, 67, 133, 8) };
    for f in [
        Forgetting::None,
        Forgetting::Relu,
        Forgetting::Pfu(Pfu::median_preset()),
        Forgetting::Pfu(Pfu::vision_preset()),
    ] {
        let cfg = op::AttentionConfig { forgetting: f, training: true, seed, ..Default::default() };
        // An f32 score within rounding of z can land on the other side of it
        // in f64; such a draw compares two different functions, so a new one
        // is drawn (it takes a score within about 1e-7 of z: rare).
        let compared = (0..10).any(|_| {
            let q = uniform(&mut r, shape.q_len());
            let k = uniform(&mut r, shape.k_len());
            let v = uniform(&mut r, shape.v_len());
            let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
            let got = op::forward(&input, &cfg, Backend::Cpu).expect("fast");
            let want = op::reference::forward_at(&input, &cfg, got.stats.threshold);
            if got.stats.forgotten != want.stats.forgotten {
                return false;
            }
            let e = rel_l2(&got.o, &want.o);
            assert!(e < TOL, "{}: O rel err {e:e}", f.name());
            true
        });
        assert!(compared, "{}: every draw flipped an entry at z", f.name());
    }
}

/// The median on both sides of the materialization budget, against sorting
/// every score. Dyadic inputs make each score exact however it is summed, so
/// the medians must be equal, not merely close.
#[test]
fn exact_median_on_both_sides_of_the_budget() {
    let seed = run_seed("median");
    let mut r = rng(seed);
    let shapes =
        [Shape::new(1, 1, 1, 1, 3), Shape::new(2, 3, 70, 150, 5), Shape::new(1, 2, 129, 257, 4)];
    for shape in shapes {
        for use_mask in [false, true] {
            let q = dyadic(&mut r, shape.q_len());
            let k = dyadic(&mut r, shape.k_len());
            let m = mask(&mut r, shape.batch, shape.n_k, false);
            let v = vec![0.0; shape.v_len()];
            let input =
                AttentionInput { q: &q, k: &k, v: &v, valid: use_mask.then_some(&m[..]), shape };
            let beta = 0.5;
            let mut all = Vec::new();
            for bh in 0..shape.batch * shape.heads {
                for i in 0..shape.n_q {
                    for j in (0..shape.n_k).filter(|&j| input.is_valid(bh / shape.heads, j)) {
                        let qi = &q[(bh * shape.n_q + i) * shape.d..][..shape.d];
                        let kj = &k[(bh * shape.n_k + j) * shape.d..][..shape.d];
                        all.push(beta * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>());
                    }
                }
            }
            all.sort_by(|a, b| a.total_cmp(b));
            let want = all[(all.len() - 1) / 2];
            // usize::MAX gathers everything; 0 and 16 force radix selection,
            // 0 also its second histogram pass.
            for budget in [usize::MAX, 0, 16] {
                let got = op::median::call_median(&input, beta, budget);
                assert_eq!(got, Some(want), "{shape} mask={use_mask} budget {budget}");
            }
        }
    }
    // Continuous scores: the three ways still pick the very same f32 score.
    let shape = Shape::new(2, 2, 100, 300, 7);
    let q = uniform(&mut r, shape.q_len());
    let k = uniform(&mut r, shape.k_len());
    let v = vec![0.0; shape.v_len()];
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let a = op::median::call_median(&input, 0.3, usize::MAX);
    assert_eq!(a, op::median::call_median(&input, 0.3, 0));
    assert_eq!(a, op::median::call_median(&input, 0.3, 1000));
}

/// Every CPU backend honours the precision by rounding Q, K and V first:
/// the same bits as the f32 call on the rounded inputs, forward and
/// backward, and different results from the unrounded f32 call.
#[test]
fn cpu_backends_round_inputs_to_the_precision() {
    use lwpf::op::Precision;
    let seed = run_seed("cpu precision");
    let mut r = rng(seed);
    let shape = Shape::new(2, 2, 9, 13, 8);
    let (q, k, v) = (
        uniform(&mut r, shape.q_len()),
        uniform(&mut r, shape.k_len()),
        uniform(&mut r, shape.v_len()),
    );
    let g = uniform(&mut r, shape.o_len());
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    for precision in [Precision::Bf16, Precision::F16] {
        let round = |x: &[f32]| x.iter().map(|&a| precision.round(a)).collect::<Vec<_>>();
        let (qr, kr, vr) = (round(&q), round(&k), round(&v));
        let rounded = AttentionInput { q: &qr, k: &kr, v: &vr, valid: None, shape };
        let cfg = AttentionConfig {
            forgetting: Forgetting::Pfu(Pfu::median_preset()),
            training: true,
            seed,
            precision,
            ..Default::default()
        };
        let f32_cfg = AttentionConfig { precision: Precision::F32, ..cfg };
        for backend in [Backend::Reference, Backend::Cpu, Backend::Unfused] {
            let name = format!("{} {}", backend.name(), precision.name());
            let got = op::forward(&input, &cfg, backend).unwrap();
            let want = op::forward(&rounded, &f32_cfg, backend).unwrap();
            assert_eq!(got.o, want.o, "{name}: O");
            assert_eq!(got.stats, want.stats, "{name}: statistics");
            let gg = op::backward(&input, &cfg, &got, &g, backend).unwrap();
            let gw = op::backward(&rounded, &f32_cfg, &want, &g, backend).unwrap();
            assert_eq!((gg.dq, gg.dk, gg.dv), (gw.dq, gw.dk, gw.dv), "{name}: gradients");
            let plain = op::forward(&input, &f32_cfg, backend).unwrap();
            assert_ne!(got.o, plain.o, "{name}: the rounding changes the result");
        }
    }
}
