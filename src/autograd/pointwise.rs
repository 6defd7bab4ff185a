//! Element-wise ops: sums, GELU and dropout.

use super::{Contrib, Op, Tape, Tensor, Var, par};
use crate::error::{Error, Result};
use crate::op::fast::exp_f32;
use crate::op::philox;

/// `1 / sqrt(2 pi)`, the peak of the standard normal density.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The standard normal CDF `Phi(x)` and `exp(-x^2 / 2)`, to within 2e-7
/// absolute for `Phi`, branch-free so that loops over it vectorize (a libm
/// `erff` call per element costs GELU more than its two matrix products).
///
/// With `u = |x| / sqrt(2)`, `erfc(u) = poly(t) exp(-u^2)`, `t = 1 / (1 + p u)`
/// (Abramowitz and Stegun 7.1.26, error below 1.5e-7), and `Phi(x)` is
/// `1 - erfc(u) / 2` for `x >= 0`, `erfc(u) / 2` below: computing the small
/// side directly avoids the cancellation of `1 + erf(x / sqrt(2))` for
/// negative `x`. `exp(-u^2)` is also the density's factor, so the backward
/// pass reuses it.
#[inline(always)]
fn normal_cdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    let u = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * u);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = exp_f32(-u * u);
    let half_erfc = 0.5 * poly * e;
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, e)
}

/// GELU, erf form: `x * Phi(x)` with `Phi` the standard normal CDF.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf(x).0
}

/// `d/dx [x Phi(x)] = Phi(x) + x phi(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let (cdf, e) = normal_cdf(x);
    cdf + x * INV_SQRT_2PI * e
}

impl Tape<'_> {
    /// `a + b` for tensors of one shape.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        if self.shape(a) != self.shape(b) {
            return Err(Error::OpShape {
                op: "add",
                what: format!("{:?} + {:?}", self.shape(a), self.shape(b)),
            });
        }
        let bd = self.value(b).data();
        let mut y = self.value(a).to_vec();
        par::add_assign(&mut y, bd);
        let value = Tensor::from_parts(self.shape(a).to_vec(), y);
        Ok(self.push(value, Op::Add { a, b }, &[a, b]))
    }

    /// `x + y` where `y` repeats over the leading dimensions of `x`: the shape
    /// of `y`, leading ones dropped, must end the shape of `x` (a bias `[E]` on
    /// `[..., E]`, a position embedding `[1, T, E]` on `[B, T, E]`).
    pub fn add_broadcast(&mut self, x: Var, y: Var) -> Result<Var> {
        let (xs, ys) = (self.shape(x).to_vec(), self.shape(y).to_vec());
        let first = ys.iter().position(|&d| d != 1).unwrap_or(ys.len());
        let core = &ys[first..];
        if core.len() > xs.len() || xs[xs.len() - core.len()..] != *core || ys.is_empty() {
            return Err(Error::OpShape {
                op: "add_broadcast",
                what: format!("{ys:?} does not broadcast over {xs:?}"),
            });
        }
        let yd = self.value(y).data();
        let n = yd.len();
        let mut out = self.value(x).to_vec();
        par::for_rows(&mut out, n, |_, row| {
            for (o, v) in row.iter_mut().zip(yd) {
                *o += v;
            }
        });
        let value = Tensor::from_parts(xs, out);
        Ok(self.push(value, Op::AddBroadcast { x, y }, &[x, y]))
    }

    // y collects the sum of the gradient over every repetition.
    pub(super) fn add_broadcast_backward(
        &self,
        x: Var,
        y: Var,
        g: Vec<f32>,
        out: &mut Vec<(Var, Contrib)>,
    ) {
        if self.requires(y) {
            let n = self.value(y).numel();
            let dy = par::sum_rows(&g, n, n, |_, row, acc| {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            });
            out.push((y, Contrib::Full(dy)));
        }
        out.push((x, Contrib::Full(g)));
    }

    /// GELU, erf form (not the tanh approximation).
    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        let y = par::map(self.value(x).data(), gelu);
        let value = Tensor::from_parts(self.shape(x).to_vec(), y);
        Ok(self.push(value, Op::Gelu { x }, &[x]))
    }

    pub(super) fn gelu_backward(&self, x: Var, mut g: Vec<f32>, out: &mut Vec<(Var, Contrib)>) {
        let xd = self.value(x).data();
        par::zip_apply(&mut g, xd, |d, v| *d *= gelu_grad(v));
        out.push((x, Contrib::Full(g)));
    }

    /// Inverted dropout: each element is kept with probability `1 - p` and
    /// scaled by `1 / (1 - p)`. The mask is a pure function of `seed` and the
    /// element index (Philox), so the backward pass redraws it instead of
    /// storing it. With `p = 0` this is the identity and records nothing.
    pub fn dropout(&mut self, x: Var, p: f32, seed: u64) -> Result<Var> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidOption {
                name: "dropout",
                value: p.to_string(),
                reason: "must lie in [0, 1)",
            });
        }
        if p == 0.0 {
            return Ok(x);
        }
        let mut y = self.value(x).to_vec();
        apply_dropout(&mut y, p, seed);
        let value = Tensor::from_parts(self.shape(x).to_vec(), y);
        Ok(self.push(value, Op::Dropout { x, p, seed }, &[x]))
    }

    pub(super) fn dropout_backward(
        &self,
        x: Var,
        p: f32,
        seed: u64,
        mut g: Vec<f32>,
        out: &mut Vec<(Var, Contrib)>,
    ) {
        apply_dropout(&mut g, p, seed);
        out.push((x, Contrib::Full(g)));
    }
}

fn apply_dropout(x: &mut [f32], p: f32, seed: u64) {
    let key = philox::key_of(seed);
    let scale = 1.0 / (1.0 - p);
    par::for_each(x, |i, v| {
        *v = if philox::dropout_keep(key, i as u64, p) { *v * scale } else { 0.0 };
    });
}
