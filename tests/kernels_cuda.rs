//! The fused kernels on a GPU against the CPU reference (the checks in
//! kernel_checks/, on the shapes of the emulation and on larger ones). Each
//! test says why it skips where the CUDA backend cannot run: a build without
//! the `cuda` feature, no driver, or no device.

mod common;
mod kernel_checks;

use common::gpu;
use lwpf::op::{self, AttentionConfig, AttentionInput, Backend, Shape};

#[cfg(feature = "cuda")]
use lwpf::op::kernels::cuda;

/// Where the backend cannot run, asking for it is a typed error that says
/// why, for empty calls too, and nothing panics.
#[test]
fn unavailable_cuda_is_a_typed_error() {
    if gpu("unavailable_cuda_is_a_typed_error") {
        return;
    }
    for shape in [Shape::new(1, 1, 2, 3, 4), Shape::new(1, 1, 2, 0, 4)] {
        let q = vec![0.5; shape.q_len()];
        let k = vec![0.5; shape.k_len()];
        let v = vec![0.5; shape.v_len()];
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: None, shape };
        let e = op::forward(&input, &AttentionConfig::default(), Backend::Cuda).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, lwpf::Error::BackendUnavailable { backend: "cuda", .. }), "{text}");
        assert!(
            ["driver", "device", "features cuda"].iter().any(|w| text.contains(w)),
            "the error says why: {text}"
        );
    }
}

#[cfg(feature = "cuda")]
fn cuda_forward(input: &AttentionInput, cfg: &AttentionConfig) -> lwpf::Result<lwpf::op::Forward> {
    op::forward(input, cfg, Backend::Cuda)
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use super::*;
    use lwpf::op::Precision;

    #[test]
    fn mma_wrapper_matches_loops() {
        if gpu("mma_wrapper_matches_loops") {
            kernel_checks::mma_matches_loops(cuda::selftest_mma);
        }
    }

    #[test]
    fn sixteen_bit_loads_match_half() {
        if gpu("sixteen_bit_loads_match_half") {
            kernel_checks::conversions_match_half(cuda::selftest_convert);
        }
    }

    #[test]
    fn forward_in_bf16_and_f16_matches_reference() {
        if gpu("forward_in_bf16_and_f16_matches_reference") {
            for p in [Precision::Bf16, Precision::F16] {
                kernel_checks::forward_in_precision(cuda_forward, p);
            }
        }
    }

    #[test]
    fn median_kernels_are_exact() {
        if gpu("median_kernels_are_exact") {
            kernel_checks::median_is_exact(cuda_forward);
        }
    }

    #[test]
    fn forward_matches_reference_on_option_matrix() {
        if gpu("forward_matches_reference_on_option_matrix") {
            let mut shapes = kernel_checks::ragged_kernel_shapes();
            shapes.extend([
                Shape { d_v: 5, ..Shape::new(2, 2, 130, 257, 64) },
                Shape::new(1, 3, 300, 100, 128),
            ]);
            kernel_checks::forward_matches_reference(cuda_forward, &shapes);
        }
    }

    #[test]
    fn rows_with_every_key_forgotten() {
        if gpu("rows_with_every_key_forgotten") {
            kernel_checks::rows_with_every_key_forgotten(cuda_forward);
        }
    }

    #[test]
    fn dropout_mask_is_philox_bit_for_bit() {
        if gpu("dropout_mask_is_philox_bit_for_bit") {
            kernel_checks::dropout_mask_is_philox(cuda_forward);
        }
    }
}
