//! The unfused baseline's elementwise kernels (kernels/unfused.cu) under host
//! emulation, with the host matrix product standing in for cuBLAS, against
//! the CPU reference: forward and backward on the option matrix, rows with
//! every key forgotten, and the center gradient over median ties.

mod backward_checks;
mod common;

use backward_checks::*;
use lwpf::op::Shape;
use lwpf::op::kernels::unfused::{emulated_backward, emulated_forward};

#[test]
fn unfused_matches_reference_on_option_matrix() {
    // One block per row of S, so rows cost emulated barriers: few rows, and
    // rows longer than a block's 128 threads.
    let shapes = [Shape::new(2, 1, 5, 7, 4), Shape { d_v: 3, ..Shape::new(2, 1, 2, 131, 5) }];
    backward_matches_reference(emulated_forward, emulated_backward, &shapes);
}

#[test]
fn unfused_rows_with_every_key_forgotten() {
    rows_with_every_key_forgotten(emulated_forward, emulated_backward);
}

#[test]
fn unfused_center_gradient_over_median_ties() {
    center_gradient_over_ties(emulated_forward, emulated_backward);
}
