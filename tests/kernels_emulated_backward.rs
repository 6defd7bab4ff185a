//! The fused backward kernels under host emulation against the CPU reference
//! (the checks in backward_checks/), in both dQ modes. Shapes stay small: an
//! emulated barrier costs about a tenth of a millisecond.

mod backward_checks;
mod common;

use backward_checks::*;
use common::*;
use lwpf::op::kernels::backward::{BackwardTiles, DqMode};
use lwpf::op::kernels::emulated;
use lwpf::op::{
    AttentionConfig, AttentionInput, Forgetting, Forward, Grads, Pfu, Precision, Shape,
};

fn deterministic(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> lwpf::Result<Grads> {
    emulated::backward(input, cfg, fwd, d_o, DqMode::Deterministic)
}

fn atomic(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> lwpf::Result<Grads> {
    emulated::backward(input, cfg, fwd, d_o, DqMode::Atomic)
}

#[test]
fn backward_matches_reference_on_option_matrix() {
    backward_matches_reference(emulated::forward, deterministic, &ragged_backward_shapes());
}

#[test]
fn atomic_dq_matches_reference_on_option_matrix() {
    // One ragged shape with several key tiles is enough for the atomic path.
    let shapes = &ragged_backward_shapes()[2..3];
    backward_matches_reference(emulated::forward, atomic, shapes);
}

#[test]
fn backward_rows_with_every_key_forgotten() {
    rows_with_every_key_forgotten(emulated::forward, deterministic);
    rows_with_every_key_forgotten(emulated::forward, atomic);
}

#[test]
fn backward_center_gradient_over_median_ties() {
    center_gradient_over_ties(emulated::forward, deterministic);
    center_gradient_over_ties(emulated::forward, atomic);
}

#[test]
fn deterministic_dq_is_bit_identical() {
    deterministic_is_bit_identical(emulated::forward, deterministic);
}

#[test]
fn wide_backward_matches_reference_on_cases() {
    wide_backward_matches_reference(emulated::forward, deterministic, &wide_backward_shapes());
}

#[test]
fn wide_atomic_dq_matches_reference_on_cases() {
    // D = Dv = 128: the widest rows of atomic adds.
    wide_backward_matches_reference(emulated::forward, atomic, &wide_backward_shapes()[..1]);
}

#[test]
fn wide_deterministic_dq_is_bit_identical() {
    let shape = Shape { d_v: 100, ..Shape::new(1, 1, 40, 45, 128) };
    deterministic_is_bit_identical_on(emulated::forward, deterministic, shape, WIDE_BETA);
}

/// Both builds of the tiled kernels add the same terms in the same order
/// (columns past D or Dv are zeros that no sum reads), so on a shape the
/// narrow build holds the wide one must give its bits, for every option and
/// in both dQ modes. This holds the wide build to all of the checks above.
#[test]
fn wide_build_gives_the_narrow_builds_bits() {
    let seed = common::run_seed("wide build = narrow build");
    let mut r = common::rng(seed);
    // D at the narrow limit, Dv ragged; the second batch item fully padded.
    let shape = Shape { d_v: 37, ..Shape::new(2, 1, 35, 40, 64) };
    let q = common::dyadic(&mut r, shape.q_len());
    let k = common::dyadic(&mut r, shape.k_len());
    let v = common::uniform(&mut r, shape.v_len());
    let g = common::uniform(&mut r, shape.o_len());
    let m = common::mask(&mut r, shape.batch, shape.n_k, true);
    for (i, case) in common::option_matrix(0.125, seed).iter().enumerate() {
        // The mask on every other case: the matrix is long.
        let valid = (i % 2 == 1).then_some(&m[..]);
        let input = AttentionInput { q: &q, k: &k, v: &v, valid, shape };
        let f = emulated::forward(&input, &case.cfg).expect("forward");
        let mode = if i % 3 == 0 { DqMode::Atomic } else { DqMode::Deterministic };
        let run = |tiles| {
            emulated::backward_with_tiles(&input, &case.cfg, &f, &g, mode, tiles).expect("backward")
        };
        let (narrow, wide) = (run(BackwardTiles::D64), run(BackwardTiles::D128));
        for (t, a, b) in [
            ("dQ", &narrow.dq, &wide.dq),
            ("dK", &narrow.dk, &wide.dk),
            ("dV", &narrow.dv, &wide.dv),
        ] {
            // The atomic mode's dQ is summed in a fixed order here too: the
            // emulation runs blocks one after another.
            let name = format!("{}: {t}, the builds ({mode:?})", case.name);
            common::assert_same_bits(&name, b, a);
        }
    }
}

#[test]
fn backward_beyond_its_limits_is_a_typed_error() {
    // D = 129 with a small Dv: the forward runs, the backward refuses.
    let shape = Shape { d_v: 4, ..Shape::new(1, 1, 2, 3, 129) };
    let q = vec![0.5; shape.q_len()];
    let k = vec![0.5; shape.k_len()];
    let v = vec![0.5; shape.v_len()];
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let cfg = AttentionConfig::default();
    let f = emulated::forward(&input, &cfg).expect("forward");
    let g = vec![1.0; shape.o_len()];
    let e = deterministic(&input, &cfg, &f, &g).unwrap_err();
    assert!(matches!(e, lwpf::Error::BackendUnavailable { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("D, Dv <= 128") && text.contains("D = 129"), "{e}");
}

#[test]
fn narrow_build_refuses_a_wide_call() {
    let shape = Shape { d_v: 65, ..Shape::new(1, 1, 2, 3, 8) };
    let q = vec![0.5; shape.q_len()];
    let k = vec![0.5; shape.k_len()];
    let v = vec![0.5; shape.v_len()];
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let cfg = AttentionConfig::default();
    let f = emulated::forward(&input, &cfg).expect("forward");
    let g = vec![1.0; shape.o_len()];
    let mode = DqMode::Deterministic;
    let e =
        emulated::backward_with_tiles(&input, &cfg, &f, &g, mode, BackwardTiles::D64).unwrap_err();
    assert!(matches!(e, lwpf::Error::BackendUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("D, Dv <= 64, got D = 8, Dv = 65"), "{e}");
}

#[test]
fn backward_in_bf16_matches_reference() {
    backward_in_precision(emulated::forward, deterministic, Precision::Bf16);
}

#[test]
fn backward_in_f16_matches_reference() {
    backward_in_precision(emulated::forward, atomic, Precision::F16);
}

/// As the forward's bit test in kernels_emulated.rs: on continuous inputs
/// the 16-bit backward kernels give the f32 kernels' gradients bit for bit
/// on the rounded inputs, in the narrow and the wide build.
#[test]
fn sixteen_bit_backward_gives_the_f32_bits_on_rounded_inputs() {
    let seed = run_seed("16-bit backward bits");
    let mut r = rng(seed);
    for shape in [Shape { d_v: 9, ..Shape::new(1, 2, 37, 45, 36) }, Shape::new(1, 1, 35, 33, 72)] {
        let (q, k, v) = (
            uniform(&mut r, shape.q_len()),
            uniform(&mut r, shape.k_len()),
            uniform(&mut r, shape.v_len()),
        );
        let g = uniform(&mut r, shape.o_len());
        for precision in [Precision::Bf16, Precision::F16] {
            let round = |x: &[f32]| x.iter().map(|&a| precision.round(a)).collect::<Vec<_>>();
            let (qr, kr, vr) = (round(&q), round(&k), round(&v));
            let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
            let rounded = AttentionInput { q: &qr, k: &kr, v: &vr, valid: None, shape };
            let cfg = AttentionConfig {
                forgetting: Forgetting::Pfu(Pfu::median_preset()),
                drop_forgotten: false,
                training: true,
                dropout: 0.2,
                seed,
                precision,
                ..Default::default()
            };
            let f32_cfg = AttentionConfig { precision: Precision::F32, ..cfg };
            let name = format!("{} {shape}", precision.name());
            let fwd = emulated::forward(&input, &cfg).expect("16-bit forward");
            let got = deterministic(&input, &cfg, &fwd, &g).expect("16-bit backward");
            let want = deterministic(&rounded, &f32_cfg, &fwd, &g).expect("f32 backward");
            for (t, a, b) in
                [("dQ", &got.dq, &want.dq), ("dK", &got.dk, &want.dk), ("dV", &got.dv, &want.dv)]
            {
                common::assert_same_bits(&format!("{name}: {t}"), a, b);
            }
            let t = fwd.stats.threshold;
            assert!(t.center_gradient && t.m.is_some(), "{name}: the center gradient is on");
        }
    }
}
