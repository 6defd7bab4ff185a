//! The fused backward kernels on a GPU against the CPU reference (the checks
//! in backward_checks/, on the emulation's shapes and larger ones), in both
//! dQ modes, and the deterministic mode bit for bit on the real scheduler.
//! Each test says why it skips where the CUDA backend cannot run.

mod backward_checks;
mod common;

use common::gpu;
use lwpf::op::{self, AttentionConfig, AttentionInput, Backend, Forward, Shape};

#[cfg(feature = "cuda")]
use lwpf::op::kernels::{backward::DqMode, cuda};

/// Where the backend cannot run, the backward is a typed error too.
#[test]
fn unavailable_cuda_backward_is_a_typed_error() {
    if gpu("unavailable_cuda_backward_is_a_typed_error") {
        return;
    }
    let shape = Shape::new(1, 1, 2, 3, 4);
    let q = vec![0.5; shape.q_len()];
    let k = vec![0.5; shape.k_len()];
    let v = vec![0.5; shape.v_len()];
    let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
    let cfg = AttentionConfig::default();
    let fwd: Forward = op::forward(&input, &cfg, Backend::Reference).expect("reference");
    let g = vec![1.0; shape.o_len()];
    let e = op::backward(&input, &cfg, &fwd, &g, Backend::Cuda).unwrap_err();
    assert!(matches!(e, lwpf::Error::BackendUnavailable { backend: "cuda", .. }), "{e}");
}

#[cfg(feature = "cuda")]
fn cuda_forward(input: &AttentionInput, cfg: &AttentionConfig) -> lwpf::Result<Forward> {
    op::forward(input, cfg, Backend::Cuda)
}

/// The op's CUDA backward (the deterministic mode).
#[cfg(feature = "cuda")]
fn cuda_backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> lwpf::Result<lwpf::op::Grads> {
    op::backward(input, cfg, fwd, d_o, Backend::Cuda)
}

#[cfg(feature = "cuda")]
fn cuda_atomic(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> lwpf::Result<lwpf::op::Grads> {
    cuda::backward(input, cfg, fwd, d_o, DqMode::Atomic)
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use super::*;
    use backward_checks::*;
    use lwpf::op::Precision;

    fn shapes() -> Vec<Shape> {
        let mut s = ragged_backward_shapes();
        s.extend([
            Shape { d_v: 5, ..Shape::new(2, 2, 130, 257, 64) },
            Shape::new(1, 3, 300, 100, 64),
        ]);
        s
    }

    #[test]
    fn backward_matches_reference_on_option_matrix() {
        if gpu("backward_matches_reference_on_option_matrix") {
            backward_matches_reference(cuda_forward, cuda_backward, &shapes());
        }
    }

    #[test]
    fn backward_in_bf16_and_f16_matches_reference() {
        if gpu("backward_in_bf16_and_f16_matches_reference") {
            backward_in_precision(cuda_forward, cuda_backward, Precision::Bf16);
            backward_in_precision(cuda_forward, cuda_atomic, Precision::F16);
        }
    }

    #[test]
    fn atomic_dq_matches_reference_on_option_matrix() {
        if gpu("atomic_dq_matches_reference_on_option_matrix") {
            backward_matches_reference(cuda_forward, cuda_atomic, &shapes());
        }
    }

    #[test]
    fn backward_rows_with_every_key_forgotten() {
        if gpu("backward_rows_with_every_key_forgotten") {
            rows_with_every_key_forgotten(cuda_forward, cuda_backward);
            rows_with_every_key_forgotten(cuda_forward, cuda_atomic);
        }
    }

    #[test]
    fn backward_center_gradient_over_median_ties() {
        if gpu("backward_center_gradient_over_median_ties") {
            center_gradient_over_ties(cuda_forward, cuda_backward);
            center_gradient_over_ties(cuda_forward, cuda_atomic);
        }
    }

    #[test]
    fn deterministic_dq_is_bit_identical() {
        if gpu("deterministic_dq_is_bit_identical") {
            deterministic_is_bit_identical(cuda_forward, cuda_backward);
        }
    }

    /// The wide build (D or Dv over 64), on the emulation's shapes and larger
    /// ones, on every option in both dQ modes.
    #[test]
    fn wide_backward_matches_reference_on_option_matrix() {
        if !gpu("wide_backward_matches_reference_on_option_matrix") {
            return;
        }
        let mut shapes = wide_backward_shapes();
        shapes.push(Shape { d_v: 100, ..Shape::new(2, 2, 130, 257, 128) });
        backward_matches_reference(cuda_forward, cuda_backward, &shapes);
        backward_matches_reference(cuda_forward, cuda_atomic, &shapes);
    }

    #[test]
    fn wide_deterministic_dq_is_bit_identical() {
        if gpu("wide_deterministic_dq_is_bit_identical") {
            // Four key tiles per head: an atomic dQ would add four partial
            // sums in the scheduler's order.
            let shape = Shape { d_v: 100, ..Shape::new(2, 3, 40, 110, 128) };
            deterministic_is_bit_identical_on(cuda_forward, cuda_backward, shape, WIDE_BETA);
        }
    }

    /// The deterministic mode on a shape with many blocks per head, where the
    /// scheduler's order varies between runs: still bit for bit.
    #[test]
    fn deterministic_dq_is_bit_identical_at_scale() {
        if gpu("deterministic_dq_is_bit_identical_at_scale") {
            bit_identical_at_scale(Shape::new(2, 4, 1000, 1000, 64));
        }
    }

    /// The same on the wide build.
    #[test]
    fn wide_deterministic_dq_is_bit_identical_at_scale() {
        if gpu("wide_deterministic_dq_is_bit_identical_at_scale") {
            bit_identical_at_scale(Shape::new(2, 4, 1000, 1000, 128));
        }
    }

    fn bit_identical_at_scale(shape: Shape) {
        let seed = common::run_seed("deterministic at scale");
        let mut r = common::rng(seed);
        let q = common::uniform(&mut r, shape.q_len());
        let k = common::uniform(&mut r, shape.k_len());
        let v = common::uniform(&mut r, shape.v_len());
        let g = common::uniform(&mut r, shape.o_len());
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
        let cfg = AttentionConfig {
            forgetting: lwpf::op::Forgetting::Pfu(lwpf::op::Pfu::median_preset()),
            dropout: 0.1,
            seed,
            training: true,
            ..Default::default()
        };
        let f = cuda_forward(&input, &cfg).expect("forward");
        let a = cuda_backward(&input, &cfg, &f, &g).expect("backward");
        for run in 0..3 {
            let b = cuda_backward(&input, &cfg, &f, &g).expect("backward");
            for (t, x, y) in [("dQ", &a.dq, &b.dq), ("dK", &a.dk, &b.dk), ("dV", &a.dv, &b.dv)] {
                common::assert_same_bits(&format!("{t}, run {run}"), y, x);
            }
        }
    }

    /// The autograd node's path: the forward leaves its tensors on the
    /// device, and the backward on them gives the uploading backward's bits;
    /// a backward of another call's options is refused.
    #[test]
    fn resident_backward_gives_the_uploading_backwards_bits() {
        if !gpu("resident_backward_gives_the_uploading_backwards_bits") {
            return;
        }
        let seed = common::run_seed("resident backward");
        let mut r = common::rng(seed);
        let shape = Shape { d_v: 48, ..Shape::new(2, 3, 130, 97, 64) };
        let (q, k, v) = (
            common::uniform(&mut r, shape.q_len()),
            common::uniform(&mut r, shape.k_len()),
            common::uniform(&mut r, shape.v_len()),
        );
        let g = common::uniform(&mut r, shape.o_len());
        let m = common::mask(&mut r, shape.batch, shape.n_k, false);
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: Some(&m), shape };
        for precision in [Precision::F32, Precision::Bf16] {
            let cfg = AttentionConfig {
                forgetting: lwpf::op::Forgetting::Pfu(lwpf::op::Pfu::median_preset()),
                dropout: 0.1,
                seed,
                training: true,
                precision,
                ..Default::default()
            };
            let (f, saved) = op::forward_saving(&input, &cfg, Backend::Cuda).expect("forward");
            assert!(saved.on_device(), "the CUDA forward keeps its tensors");
            // The resident forward is the checked forward: a wrong but
            // consistent device copy (say, its mask) would fool the
            // comparison of the two backwards below.
            let plain = cuda_forward(&input, &cfg).expect("forward");
            let name = precision.name();
            assert_eq!(f.stats, plain.stats, "{name}: statistics");
            common::assert_same_bits(&format!("{name}: O"), &f.o, &plain.o);
            common::assert_same_bits(&format!("{name}: lse"), &f.lse, &plain.lse);
            assert!(f.stats.threshold.center_gradient, "{name}: the center gradient is on");
            let a = op::backward_saved(&input, &cfg, (&f, &saved), &g, Backend::Cuda).unwrap();
            let b = cuda_backward(&input, &cfg, &f, &g).expect("backward");
            for (t, x, y) in [("dQ", &a.dq, &b.dq), ("dK", &a.dk, &b.dk), ("dV", &a.dv, &b.dv)] {
                common::assert_same_bits(&format!("{name}: {t}"), x, y);
            }
            let other = AttentionConfig { seed: seed ^ 1, ..cfg };
            let e = op::backward_saved(&input, &other, (&f, &saved), &g, Backend::Cuda);
            assert!(matches!(e, Err(lwpf::Error::InvalidConfig { .. })), "{e:?}");
        }
    }
}
