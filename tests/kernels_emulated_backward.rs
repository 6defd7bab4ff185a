//! The fused backward kernels under host emulation against the CPU reference
//! (the checks in backward_checks/), in both dQ modes. Shapes stay small: an
//! emulated barrier costs about a tenth of a millisecond.

mod backward_checks;
mod common;

use backward_checks::*;
use lwpf::op::kernels::backward::DqMode;
use lwpf::op::kernels::emulated;
use lwpf::op::{AttentionConfig, AttentionInput, Forward, Grads};

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
fn backward_beyond_its_limits_is_a_typed_error() {
    let shape = lwpf::op::Shape::new(1, 1, 2, 3, 65);
    let q = vec![0.5; shape.q_len()];
    let k = vec![0.5; shape.k_len()];
    let v = vec![0.5; shape.v_len()];
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let cfg = AttentionConfig::default();
    let f = emulated::forward(&input, &cfg).expect("forward");
    let e = deterministic(&input, &cfg, &f, &vec![1.0; shape.o_len()]).unwrap_err();
    assert!(matches!(e, lwpf::Error::BackendUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("D = 65"), "{e}");
}
