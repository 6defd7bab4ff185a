//! Parameter initializers, reproducible from a seed.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::autograd::Tensor;

/// The generator that initializes a model; one seed gives one model.
pub struct InitRng(SmallRng);

impl InitRng {
    pub fn new(seed: u64) -> Self {
        InitRng(SmallRng::seed_from_u64(seed))
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        // u1 in (0, 1] keeps ln(u1) finite.
        let u1 = 1.0 - self.0.random::<f64>();
        let u2 = self.0.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }
}

/// Normal with mean 0 and standard deviation `std`, redrawn outside [-2, 2]
/// (timm's `trunc_normal_`, whose bounds are absolute, not in units of std).
pub fn trunc_normal(rng: &mut InitRng, shape: &[usize], std: f32) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            loop {
                let v = rng.normal() * std as f64;
                if (-2.0..=2.0).contains(&v) {
                    break v as f32;
                }
            }
        })
        .collect();
    Tensor::from_parts(shape.to_vec(), data)
}

/// Uniform on [-bound, bound).
pub fn uniform(rng: &mut InitRng, shape: &[usize], bound: f32) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n).map(|_| ((rng.unit() * 2.0 - 1.0) * bound as f64) as f32).collect();
    Tensor::from_parts(shape.to_vec(), data)
}

/// Normal with mean 0 and standard deviation `std`, not truncated.
pub fn normal(rng: &mut InitRng, shape: &[usize], std: f32) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n).map(|_| (rng.normal() * std as f64) as f32).collect();
    Tensor::from_parts(shape.to_vec(), data)
}
