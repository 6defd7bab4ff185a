//! Hand-computed 2 x 3 examples, one per variant. B = H = 1, D = Dv = 1,
//! beta = 1, Q = [1, 2], K = [-1, 0.5, 1], V = [1, 2, 3], so the scores are
//! row 0: [-1, 0.5, 1] and row 1: [-2, 1, 2]; their lower median is 0.5.

use lwpf::op::{
    self, AttentionConfig, AttentionInput, Backend, Bias, Center, Forgetting, Pfu, Shape,
};

const Q: [f32; 2] = [1.0, 2.0];
const K: [f32; 3] = [-1.0, 0.5, 1.0];
const V: [f32; 3] = [1.0, 2.0, 3.0];

fn run(f: Forgetting, drop: bool, backend: Backend) -> op::Forward {
    let input =
        AttentionInput { q: &Q, k: &K, v: &V, valid: None, shape: Shape::new(1, 1, 2, 3, 1) };
    let cfg = AttentionConfig {
        beta: Some(1.0),
        forgetting: f,
        drop_forgotten: drop,
        ..Default::default()
    };
    op::forward(&input, &cfg, backend).expect("valid input")
}

fn pfu(bias: Bias) -> Forgetting {
    Forgetting::Pfu(Pfu { center: Center::Median, noise_std: 1e-4, bias, center_gradient: true })
}

#[test]
fn hand_computed_outputs() {
    let e = |x: f64| x.exp();
    // (variant, drop_forgotten, expected O, expected forgotten count)
    let cases = [
        // Plain softmax over all three keys.
        (
            Forgetting::None,
            true,
            [
                (e(-1.0) + 2.0 * e(0.5) + 3.0 * e(1.0)) / (e(-1.0) + e(0.5) + e(1.0)),
                (e(-2.0) + 2.0 * e(1.0) + 3.0 * e(2.0)) / (e(-2.0) + e(1.0) + e(2.0)),
            ],
            0,
        ),
        // z = 0: -1 and -2 are forgotten, weight e^0 = 1 in the normalizer only.
        (
            Forgetting::Relu,
            true,
            [
                (2.0 * e(0.5) + 3.0 * e(1.0)) / (1.0 + e(0.5) + e(1.0)),
                (2.0 * e(1.0) + 3.0 * e(2.0)) / (1.0 + e(1.0) + e(2.0)),
            ],
            2,
        ),
        // Evaluation: z = b = m = 0.5; row 0 forgets -1 and 0.5, row 1 forgets -2.
        (
            pfu(Bias::Threshold),
            true,
            [
                3.0 * e(1.0) / (2.0 * e(0.5) + e(1.0)),
                (2.0 * e(1.0) + 3.0 * e(2.0)) / (e(0.5) + e(1.0) + e(2.0)),
            ],
            3,
        ),
        // Same, forgotten values stay in the numerator with weight e^b.
        (
            pfu(Bias::Threshold),
            false,
            [
                (e(0.5) * (1.0 + 2.0) + 3.0 * e(1.0)) / (2.0 * e(0.5) + e(1.0)),
                (e(0.5) * 1.0 + 2.0 * e(1.0) + 3.0 * e(2.0)) / (e(0.5) + e(1.0) + e(2.0)),
            ],
            3,
        ),
        // b = -inf: forgotten entries vanish from the normalizer too.
        (pfu(Bias::NegInf), true, [3.0, (2.0 * e(1.0) + 3.0 * e(2.0)) / (e(1.0) + e(2.0))], 3),
    ];
    // The same numbers as literals, computed once by hand with a calculator.
    let literals = [
        [2.496401413819124, 2.708186297320179],
        [2.1338329446039586, 2.4851798094340607],
        [1.3555882856328183, 2.348042952879585],
        [2.1777941428164094, 2.4882873360456736],
        [3.0, 2.731058578630005],
    ];
    for ((f, drop, want, forgotten), lit) in cases.into_iter().zip(literals) {
        for (w, l) in want.iter().zip(lit) {
            assert!((w - l).abs() < 1e-12);
        }
        for backend in [Backend::Reference, Backend::Cpu, Backend::Unfused] {
            let out = run(f, drop, backend);
            for (o, w) in out.o.iter().zip(want) {
                assert!(
                    (*o as f64 - w).abs() < 1e-5,
                    "{} {backend:?} drop={drop}: {o} vs {w}",
                    f.name()
                );
            }
            assert_eq!(out.stats.forgotten, forgotten, "{} {backend:?}", f.name());
            assert_eq!(out.stats.entries, 6);
            if let Forgetting::Pfu(_) = f {
                assert_eq!(out.stats.threshold.m, Some(0.5));
                assert_eq!(out.stats.threshold.z, 0.5);
                assert_eq!(out.stats.at_median, 1);
            }
        }
    }
    // relu's row 0 normalizer: 1 + e^0.5 + e^1.
    let out = run(Forgetting::Relu, true, Backend::Cpu);
    assert!((out.lse[0] as f64 - (1.0 + e(0.5) + e(1.0)).ln()).abs() < 1e-6);
}
