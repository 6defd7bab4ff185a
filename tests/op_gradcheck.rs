//! Finite differences in f64 against the analytic backward of the reference,
//! for every option of SPEC sections 2 to 5.

mod common;

use common::*;
use lwpf::op::reference::{Input64, Threshold64, backward64, forward64};
use lwpf::op::{AttentionConfig, Bias, Center, Forgetting, Pfu, Shape};

/// `L = sum(O * G)` at threshold `thr` (`None`: re-resolved from the input,
/// so the median and z = m + noise follow the perturbation).
fn loss(x: &Input64, cfg: &AttentionConfig, thr: Option<Threshold64>, g: &[f64]) -> f64 {
    forward64(x, cfg, thr).o.iter().zip(g).map(|(a, b)| a * b).sum()
}

/// Central differences of `L` in every coordinate of Q, K and V.
#[allow(clippy::too_many_arguments)]
fn numeric_grads(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    valid: Option<&[bool]>,
    shape: Shape,
    cfg: &AttentionConfig,
    thr: Option<Threshold64>,
    g: &[f64],
) -> [Vec<f64>; 3] {
    let h = 1e-6;
    let mut out = [vec![], vec![], vec![]];
    let tensors = [q.to_vec(), k.to_vec(), v.to_vec()];
    for t in 0..3 {
        for idx in 0..tensors[t].len() {
            let eval = |delta: f64| {
                let mut ts = tensors.clone();
                ts[t][idx] += delta;
                let x = Input64 { q: &ts[0], k: &ts[1], v: &ts[2], valid, shape };
                loss(&x, cfg, thr, g)
            };
            out[t].push((eval(h) - eval(-h)) / (2.0 * h));
        }
    }
    out
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt().min(num.sqrt())
}

/// Checks the analytic gradient against finite differences for one case.
#[allow(clippy::too_many_arguments)]
fn check(
    name: &str,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: Option<&[bool]>,
    shape: Shape,
    cfg: &AttentionConfig,
    g: &[f32],
) -> bool {
    let w = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let (q, k, v, g) = (w(q), w(k), w(v), w(g));
    let x = Input64 { q: &q, k: &k, v: &v, valid, shape };
    let fwd = forward64(&x, cfg, None);
    let thr = fwd.threshold;
    // The loss has a kink wherever a score crosses z. Differences of step
    // 1e-6 move scores by about 1e-6, so inputs with a score within 1e-4 of
    // z (other than one sitting exactly on it) cannot be checked this way:
    // the caller draws new ones.
    let beta = cfg.beta_for(shape.d) as f64;
    let near = (0..shape.batch * shape.heads).any(|bh| {
        (0..shape.n_q).any(|i| {
            (0..shape.n_k)
                .filter(|&j| valid.is_none_or(|m| m[(bh / shape.heads) * shape.n_k + j]))
                .any(|j| {
                    let qi = &q[(bh * shape.n_q + i) * shape.d..][..shape.d];
                    let kj = &k[(bh * shape.n_k + j) * shape.d..][..shape.d];
                    let s = beta * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                    let dist = (s - thr.z).abs();
                    dist > 0.0 && dist < 1e-4
                })
        })
    });
    if near {
        return false;
    }
    let analytic = backward64(&x, cfg, &thr, &g);
    // With the center gradient on, the threshold moves with the median.
    // Otherwise z and b are constants and the mask carries no gradient, so the
    // differences must see the mask of the base point: in evaluation the
    // median's own score sits exactly at z, and a fixed z a hair above it
    // keeps that entry forgotten under +-h without moving any other entry.
    let fd_thr = if thr.center_gradient {
        None
    } else {
        let lifted = Threshold64 { z: thr.z + 1e-5, ..thr };
        let base = forward64(&x, cfg, Some(thr));
        let moved = forward64(&x, cfg, Some(lifted));
        assert_eq!(base.forgotten, moved.forgotten, "{name}: a score lies just above z");
        Some(lifted)
    };
    let numeric = numeric_grads(&q, &k, &v, valid, shape, cfg, fd_thr, &g);
    for (tn, a, n) in [
        ("dQ", &analytic.dq, &numeric[0]),
        ("dK", &analytic.dk, &numeric[1]),
        ("dV", &analytic.dv, &numeric[2]),
    ] {
        let e = rel(a, n);
        assert!(e < 1e-6, "{name}: {tn} rel err {e:e}\n analytic {a:?}\n numeric  {n:?}");
    }
    true
}

#[test]
fn every_option_matches_finite_differences() {
    let seed = run_seed("gradcheck");
    let mut r = rng(seed);
    let shape = Shape { d_v: 3, ..Shape::new(2, 2, 3, 5, 4) };
    for use_mask in [false, true] {
        for case in option_matrix(0.7, seed ^ 0x5eed) {
            let name = format!("{} mask={use_mask}", case.name);
            let checked = (0..20).any(|_| {
                let q = uniform(&mut r, shape.q_len());
                let k = uniform(&mut r, shape.k_len());
                let v = uniform(&mut r, shape.v_len());
                let g = uniform(&mut r, shape.o_len());
                let m = mask(&mut r, shape.batch, shape.n_k, false);
                let valid = use_mask.then_some(m.as_slice());
                check(&name, &q, &k, &v, valid, shape, &case.cfg, &g)
            });
            assert!(checked, "{name}: no draw kept its scores away from z");
        }
    }
}

/// Keys `K = I` (D = Nk, beta = 1) make every score one coordinate of Q:
/// `s_ij = Q_ij`. That lets a test place ties at the median and forgotten
/// rows exactly where it wants them.
fn identity_keys(n_k: usize) -> Vec<f32> {
    (0..n_k * n_k).map(|i| if i / n_k == i % n_k { 1.0 } else { 0.0 }).collect()
}

#[test]
fn ties_at_the_median_share_the_center_gradient_evenly() {
    let seed = run_seed("ties");
    let mut r = rng(seed);
    let shape = Shape::new(1, 1, 3, 4, 4);
    let k = identity_keys(4);
    let v = uniform(&mut r, shape.v_len());
    let g = uniform(&mut r, shape.o_len());
    // 12 scores; rank floor(11 / 2) = 5. Entries 3 and 8 tie at the median.
    let mut q: Vec<f32> = vec![-0.9, -0.7, -0.5, 0.1, 0.3, 0.5, 0.7, 0.9, 0.1, -0.3, -0.2, 0.8];
    q[8] = q[3];
    for drop in [true, false] {
        let mut cfg = AttentionConfig {
            beta: Some(1.0),
            forgetting: Forgetting::Pfu(Pfu::median_preset()),
            drop_forgotten: drop,
            ..Default::default()
        };
        let w = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<_>>();
        let (q64, k64, v64, g64) = (w(&q), w(&k), w(&v), w(&g));
        let x = Input64 { q: &q64, k: &k64, v: &v64, valid: None, shape };
        let fwd = forward64(&x, &cfg, None);
        assert_eq!(fwd.threshold.m, Some(0.1f32 as f64));
        assert_eq!(fwd.at_median, 2);
        let with = backward64(&x, &cfg, &fwd.threshold, &g64);
        cfg.forgetting = Forgetting::Pfu(Pfu { center_gradient: false, ..Pfu::median_preset() });
        let thr_off = Threshold64 { center_gradient: false, ..fwd.threshold };
        let without = backward64(&x, &cfg, &thr_off, &g64);
        let share3 = with.dq[3] - without.dq[3];
        let share8 = with.dq[8] - without.dq[8];
        assert!((share3 - share8).abs() < 1e-12, "uneven split {share3} {share8}");
        assert!(share3.abs() > 1e-6, "no center gradient reached the ties");
        // Moving both ties together moves the median with them: the
        // directional derivative is the sum of both entries' gradients.
        cfg.forgetting = Forgetting::Pfu(Pfu::median_preset());
        let h = 1e-6;
        let shifted = |delta: f64| {
            let mut qq = q64.clone();
            qq[3] += delta;
            qq[8] += delta;
            let x = Input64 { q: &qq, k: &k64, v: &v64, valid: None, shape };
            loss(&x, &cfg, None, &g64)
        };
        let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
        let an = with.dq[3] + with.dq[8];
        assert!((fd - an).abs() < 1e-6 * (1.0 + an.abs()), "drop={drop}: fd {fd} analytic {an}");
    }
}

#[test]
fn rows_with_every_key_forgotten() {
    let seed = run_seed("forgotten rows");
    let mut r = rng(seed);
    let shape = Shape::new(1, 1, 2, 3, 3);
    let k = identity_keys(3);
    let v = uniform(&mut r, shape.v_len());
    let g = uniform(&mut r, shape.o_len());
    // Row 0: every score negative, so relu forgets all of it.
    let q = vec![-0.5, -0.25, -0.75, 0.5, -0.1, 0.9];
    for (name, f, lse0) in [
        ("relu", Forgetting::Relu, Some((3.0f64).ln())),
        (
            "pfu b=-inf",
            Forgetting::Pfu(Pfu {
                center: Center::Fixed(0.0),
                noise_std: 0.0,
                bias: Bias::NegInf,
                center_gradient: false,
            }),
            None,
        ),
    ] {
        for drop in [true, false] {
            let cfg = AttentionConfig {
                beta: Some(1.0),
                forgetting: f,
                drop_forgotten: drop,
                ..Default::default()
            };
            let w = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<_>>();
            let (q64, k64, v64) = (w(&q), w(&k), w(&v));
            let x = Input64 { q: &q64, k: &k64, v: &v64, valid: None, shape };
            let fwd = forward64(&x, &cfg, None);
            match lse0 {
                Some(l) => assert!((fwd.lse[0] - l).abs() < 1e-12, "{name}: lse {}", fwd.lse[0]),
                None => assert_eq!(fwd.lse[0], f64::NEG_INFINITY, "{name}"),
            }
            if drop || lse0.is_none() {
                assert!(
                    fwd.o[..3].iter().all(|&o| o == 0.0),
                    "{name}: row 0 should be 0, got {:?}",
                    &fwd.o[..3]
                );
            }
            assert!(check(&format!("{name} drop={drop}"), &q, &k, &v, None, shape, &cfg, &g));
        }
    }
}
