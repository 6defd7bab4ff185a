//! The unfused CUDA baseline (cuBLAS and kernels/unfused.cu) on a GPU against
//! the CPU reference, with the checks of backward_checks/. Each test says why
//! it skips where the CUDA backend cannot run.

mod backward_checks;
mod common;

#[cfg(feature = "cuda")]
mod on_gpu {
    use super::backward_checks::*;
    use super::common::gpu;
    use lwpf::op::Shape;
    use lwpf::op::kernels::cuda;

    #[test]
    fn unfused_matches_reference_on_option_matrix() {
        if gpu("unfused_matches_reference_on_option_matrix") {
            let mut shapes = ragged_backward_shapes();
            shapes.push(Shape { d_v: 5, ..Shape::new(2, 2, 130, 257, 64) });
            shapes.push(Shape::new(1, 2, 70, 90, 128));
            backward_matches_reference(cuda::unfused_forward, cuda::unfused_backward, &shapes);
        }
    }

    #[test]
    fn unfused_rows_with_every_key_forgotten() {
        if gpu("unfused_rows_with_every_key_forgotten") {
            rows_with_every_key_forgotten(cuda::unfused_forward, cuda::unfused_backward);
        }
    }

    #[test]
    fn unfused_center_gradient_over_median_ties() {
        if gpu("unfused_center_gradient_over_median_ties") {
            center_gradient_over_ties(cuda::unfused_forward, cuda::unfused_backward);
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn unfused_cuda_needs_the_cuda_feature() {
    eprintln!("kernels_cuda_unfused: skipped, no GPU backend (built without the `cuda` feature)");
}
