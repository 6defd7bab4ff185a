//! Bad input (SPEC section 6): a typed error naming the problem, no panic.

use lwpf::Error;
use lwpf::op::{self, AttentionConfig, AttentionInput, Backend, Forgetting, Pfu, Shape};

fn ones(n: usize) -> Vec<f32> {
    vec![0.5; n]
}

fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> lwpf::Result<op::Forward> {
    op::forward(input, cfg, Backend::Cpu)
}

#[test]
fn shape_and_value_errors_name_the_tensor() {
    let s = Shape::new(1, 2, 3, 4, 5);
    let (q, k, v) = (ones(s.q_len()), ones(s.k_len()), ones(s.v_len()));
    let cfg = AttentionConfig::default();
    let ok = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape: s };
    assert!(forward(&ok, &cfg).is_ok());

    let short = ones(s.k_len() - 1);
    let e = forward(&AttentionInput { k: &short, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { tensor: "K", got: 39, expected: 40, .. }), "{e}");

    let mask = vec![true; 3];
    let e = forward(&AttentionInput { valid: Some(&mask), ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { tensor: "key padding mask", .. }), "{e}");

    let mut bad = v.clone();
    bad[7] = f32::NAN;
    let e = forward(&AttentionInput { v: &bad, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "V", index: 7, .. }), "{e}");
    assert!(e.to_string().contains('V'));

    let mut inf = q.clone();
    inf[0] = f32::INFINITY;
    let e = forward(&AttentionInput { q: &inf, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "Q", index: 0, .. }), "{e}");

    let zero_d = Shape::new(1, 2, 3, 4, 0);
    let e = forward(&AttentionInput { q: &[], k: &[], v: &[], valid: None, shape: zero_d }, &cfg)
        .unwrap_err();
    assert!(matches!(e, Error::ZeroDim { dim: "d" }), "{e}");
}

#[test]
fn option_errors_name_the_option() {
    let s = Shape::new(1, 1, 2, 2, 2);
    let (q, k, v) = (ones(s.q_len()), ones(s.k_len()), ones(s.v_len()));
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape: s };
    let pfu = |noise_std| Forgetting::Pfu(Pfu { noise_std, ..Pfu::median_preset() });
    let cases: Vec<(&str, AttentionConfig)> = vec![
        ("beta", AttentionConfig { beta: Some(0.0), ..Default::default() }),
        ("beta", AttentionConfig { beta: Some(f32::NAN), ..Default::default() }),
        ("beta", AttentionConfig { beta: Some(-1.0), ..Default::default() }),
        ("dropout", AttentionConfig { dropout: 1.0, ..Default::default() }),
        ("dropout", AttentionConfig { dropout: -0.1, ..Default::default() }),
        ("noise_std", AttentionConfig { forgetting: pfu(-1.0), ..Default::default() }),
        ("noise_std", AttentionConfig { forgetting: pfu(f32::INFINITY), ..Default::default() }),
    ];
    for (name, cfg) in cases {
        match op::forward(&input, &cfg, Backend::Reference) {
            Err(Error::InvalidOption { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name}: expected InvalidOption, got {other:?}"),
        }
    }
}

#[test]
fn backward_checks_its_gradient() {
    let s = Shape::new(1, 1, 2, 2, 2);
    let (q, k, v) = (ones(s.q_len()), ones(s.k_len()), ones(s.v_len()));
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape: s };
    let cfg = AttentionConfig::default();
    let fwd = forward(&input, &cfg).expect("valid");
    let e = op::backward(&input, &cfg, &fwd, &[0.0; 3], Backend::Cpu).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { tensor: "dO", .. }), "{e}");
    let e = op::backward(&input, &cfg, &fwd, &[0.0, f32::NAN, 0.0, 0.0], Backend::Cpu).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "dO", index: 1, .. }), "{e}");
}

#[test]
fn cuda_request_without_cuda_is_an_error() {
    #[cfg(feature = "cuda")]
    if lwpf::op::kernels::cuda::available().is_ok() {
        eprintln!("skipped: this machine has a working CUDA device");
        return;
    }
    let s = Shape::new(1, 1, 1, 1, 1);
    let input = AttentionInput { q: &[1.0], k: &[1.0], v: &[1.0], valid: None, shape: s };
    let e = op::forward(&input, &AttentionConfig::default(), Backend::Cuda).unwrap_err();
    assert!(matches!(e, Error::BackendUnavailable { backend: "cuda", .. }), "{e}");
}

/// No key at all, or every key padded: rows are 0 and lse is -inf on every
/// backend, and nothing fails.
#[test]
fn empty_key_sets_give_zero_rows() {
    for backend in [Backend::Reference, Backend::Cpu, Backend::Unfused] {
        let s = Shape::new(2, 1, 3, 0, 2);
        let q = ones(s.q_len());
        let input = AttentionInput { q: &q, k: &[], v: &[], valid: None, shape: s };
        let cfg = AttentionConfig::with_forgetting(Forgetting::Pfu(Pfu::median_preset()));
        let out = op::forward(&input, &cfg, backend).expect("empty key set is valid");
        assert!(out.o.iter().all(|&x| x == 0.0));
        assert!(out.lse.iter().all(|&x| x == f32::NEG_INFINITY));
        assert_eq!(out.stats.entries, 0);

        let s = Shape::new(1, 2, 3, 4, 2);
        let (q, k, v) = (ones(s.q_len()), ones(s.k_len()), ones(s.v_len()));
        let mask = vec![false; 4];
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: Some(&mask), shape: s };
        let out = op::forward(&input, &cfg, backend).expect("all padded is valid");
        assert!(out.o.iter().all(|&x| x == 0.0), "{backend:?}");
        assert!(out.lse.iter().all(|&x| x == f32::NEG_INFINITY), "{backend:?}");
        assert_eq!(out.stats.threshold.m, None);
        let g = op::backward(&input, &cfg, &out, &ones(s.o_len()), backend).expect("backward");
        assert!(g.dq.iter().chain(&g.dk).chain(&g.dv).all(|&x| x == 0.0), "{backend:?}");
    }
}

/// A value that the call's precision cannot hold is an error naming the
/// tensor and the precision, on every backend; fp16 ends at 65504.
#[test]
fn values_beyond_the_precision_are_an_error() {
    use lwpf::op::Precision;
    let s = Shape::new(1, 1, 3, 4, 2);
    let (q, k, mut v) = (ones(s.q_len()), ones(s.k_len()), ones(s.v_len()));
    v[5] = 70_000.0;
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape: s };
    let f16 = AttentionConfig { precision: Precision::F16, ..Default::default() };
    for backend in [Backend::Reference, Backend::Cpu, Backend::Unfused] {
        let e = op::forward(&input, &f16, backend).unwrap_err();
        assert!(
            matches!(e, Error::OutOfRange { tensor: "V", index: 5, precision: "f16", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("beyond the range of f16"), "{e}");
    }
    let e = lwpf::op::kernels::emulated::forward(&input, &f16).unwrap_err();
    assert!(matches!(e, Error::OutOfRange { tensor: "V", .. }), "{e}");
    // bf16 has f32's range, and f32 holds it as it is.
    for precision in [Precision::Bf16, Precision::F32] {
        let cfg = AttentionConfig { precision, ..Default::default() };
        assert!(op::forward(&input, &cfg, Backend::Cpu).is_ok(), "{}", precision.name());
    }
    // The backward checks it too, on every input: K this time.
    let (mut k_big, v_ok) = (ones(s.k_len()), ones(s.v_len()));
    k_big[3] = -65_520.0;
    let ok = AttentionInput { q: &q, k: &k, v: &v_ok, valid: None, shape: s };
    let bad = AttentionInput { k: &k_big, ..ok };
    let f32_cfg = AttentionConfig::default();
    let fwd = op::forward(&ok, &f32_cfg, Backend::Cpu).expect("forward");
    for backend in [Backend::Reference, Backend::Cpu, Backend::Unfused, Backend::Emulated] {
        let e = op::backward(&bad, &f16, &fwd, &ones(s.o_len()), backend).unwrap_err();
        assert!(
            matches!(e, Error::OutOfRange { tensor: "K", index: 3, precision: "f16", .. }),
            "{backend:?}: {e}"
        );
    }
}

/// Rounding to nearest, ties to even, at known values: bf16 keeps 8
/// significant bits, fp16 11 and ends at 65504 (65519 rounds down to it,
/// 65520 is halfway to 2^16 and rounds to infinity).
#[test]
fn precision_rounds_to_nearest_even() {
    use lwpf::op::Precision;
    let bf = Precision::Bf16;
    assert_eq!(bf.round(1.0 + 2f32.powi(-8)), 1.0, "tie to the even 1");
    assert_eq!(bf.round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6), "tie to the even side");
    assert_eq!(bf.round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 1.0 + 2f32.powi(-7), "above a tie");
    assert_eq!(bf.bits(1.0), Some(0x3f80));
    let h = Precision::F16;
    assert_eq!(h.round(1.0 + 2f32.powi(-11)), 1.0, "tie to the even 1");
    assert_eq!(h.round(65_519.0), 65_504.0);
    assert_eq!(h.round(65_520.0), f32::INFINITY);
    assert_eq!(h.bits(1.0), Some(0x3c00));
    assert_eq!(h.bits(-2.0), Some(0xc000));
    assert_eq!(Precision::F32.round(1.0 + 2f32.powi(-20)), 1.0 + 2f32.powi(-20));
}
