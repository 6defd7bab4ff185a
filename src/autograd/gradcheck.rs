//! Finite-difference gradient checks in `f32`, with a tolerance derived from
//! the step size instead of tuned to pass.
//!
//! A check projects an output onto a fixed random direction `r`,
//! `L = sum(out * r)` (accumulated in f64), and compares the tape's gradient
//! of `L` with the central difference `D(h) = (L(x + h) - L(x - h)) / 2h`,
//! which is off by two things:
//!
//! - truncation, `c h^2` for a smooth function. `D(2h)` is off by `4 c h^2`,
//!   so `|D(2h) - D(h)| / 3` estimates it from the data (Richardson);
//! - rounding: each evaluation of `L` in f32 is off by about `k * eps * S`,
//!   `S = sum |out * r|`, `eps = 2^-24` and `k` the depth of rounding per
//!   element ([`ROUNDING_DEPTH`]), and the difference divides that by `2h`.
//!
//! The tolerance is twice the truncation estimate plus the rounding bound. A
//! function that is not smooth around the point (an entry crossing the
//! forgetting threshold, a kink) shows a truncation estimate of the size of
//! the gradient itself; [`CoordCheck::smooth`] reports it so that tests refuse
//! such points instead of passing them with a huge tolerance.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{ParamStore, Tape, Tensor, Var};
use crate::error::Result;

/// Rounding steps charged to every output element, relative to `eps`: the
/// ops here accumulate a few dozen terms per element, whose relative error
/// grows like the square root of the count, so 16 covers sums up to a few
/// hundred terms with margin.
pub const ROUNDING_DEPTH: f64 = 16.0;

/// Unit roundoff of `f32`.
const EPS: f64 = 1.0 / 16_777_216.0;

/// The comparison at one coordinate.
#[derive(Clone, Copy, Debug)]
pub struct CoordCheck {
    pub analytic: f64,
    pub numeric: f64,
    /// Estimated truncation error of `numeric`.
    pub truncation: f64,
    /// Bound on the rounding error of `numeric`.
    pub rounding: f64,
}

impl CoordCheck {
    pub fn tolerance(&self) -> f64 {
        2.0 * self.truncation + self.rounding
    }

    pub fn error(&self) -> f64 {
        (self.analytic - self.numeric).abs()
    }

    pub fn passes(&self) -> bool {
        self.error() <= self.tolerance()
    }

    /// Whether the function looked smooth at this point: the truncation
    /// estimate is small next to the derivative (or tiny in absolute terms).
    pub fn smooth(&self) -> bool {
        self.truncation <= 0.05 * self.numeric.abs().max(self.analytic.abs()) + self.rounding
    }
}

/// Compares `analytic` with central differences of `loss_at`, which sets the
/// coordinate to the value it is given and returns `(L, S)` (the projected
/// loss and `sum |out * r|`), around `x0` with step `h`.
pub fn check_coordinate(
    x0: f32,
    analytic: f32,
    h: f32,
    mut loss_at: impl FnMut(f32) -> Result<(f64, f64)>,
) -> Result<CoordCheck> {
    let mut central = |step: f32| -> Result<(f64, f64)> {
        let (xp, xm) = (x0 + step, x0 - step);
        let (lp, sp) = loss_at(xp)?;
        let (lm, sm) = loss_at(xm)?;
        // The step actually taken, after rounding x0 +- step to f32.
        let delta = xp as f64 - xm as f64;
        Ok(((lp - lm) / delta, sp.max(sm) / delta))
    };
    let (d1, s1) = central(h)?;
    let (d2, _) = central(2.0 * h)?;
    Ok(CoordCheck {
        analytic: analytic as f64,
        numeric: d1,
        truncation: (d2 - d1).abs() / 3.0,
        rounding: 2.0 * ROUNDING_DEPTH * EPS * s1,
    })
}

/// `(sum(out * r), sum |out * r|)` in f64.
pub fn project(out: &[f32], r: &[f32]) -> (f64, f64) {
    out.iter().zip(r).fold((0.0, 0.0), |(l, s), (&o, &w)| {
        let t = o as f64 * w as f64;
        (l + t, s + t.abs())
    })
}

/// A reproducible random direction of `n` elements in [-1, 1).
pub fn direction(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// One checked coordinate of [`check_inputs`].
#[derive(Clone, Copy, Debug)]
pub struct InputCheck {
    pub input: usize,
    pub index: usize,
    pub check: CoordCheck,
}

/// Checks the gradient of `build` with respect to every element of every
/// input. `build` makes the function on a fresh tape from the inputs (as
/// leaves) and must not depend on anything else, so that each evaluation sees
/// the same function.
pub fn check_inputs(
    params: &ParamStore,
    inputs: &[Tensor],
    h: f32,
    build: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) -> Result<Vec<InputCheck>> {
    let run = |values: &[Tensor]| -> Result<(Tape, Var, Vec<Var>)> {
        let mut tape = Tape::new(params);
        let vars: Vec<Var> = values.iter().map(|t| tape.leaf(t.clone())).collect();
        let out = build(&mut tape, &vars)?;
        Ok((tape, out, vars))
    };

    let (tape, out, vars) = run(inputs)?;
    let r = direction(tape.value(out).numel(), 0x5eed);
    let grads = tape.backward_with(out, &r)?;
    let mut checks = Vec::new();
    for (input, var) in vars.iter().enumerate() {
        let analytic = match grads.get(*var) {
            Some(g) => g.to_vec(),
            None => vec![0.0; inputs[input].numel()],
        };
        for (index, &a) in analytic.iter().enumerate() {
            let x0 = inputs[input].data()[index];
            let check = check_coordinate(x0, a, h, |x| {
                let mut values = inputs.to_vec();
                values[input].data_mut()[index] = x;
                let (tape, out, _) = run(&values)?;
                Ok(project(tape.value(out).data(), &r))
            })?;
            checks.push(InputCheck { input, index, check });
        }
    }
    Ok(checks)
}

/// A description of the first coordinates that do not pass, or that were not
/// smooth enough to be checked; `None` when every coordinate passes.
pub fn failures(checks: &[InputCheck]) -> Option<String> {
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| !c.check.passes() || !c.check.smooth())
        .take(5)
        .map(|c| {
            format!(
                "input {} index {}: analytic {:.6e}, numeric {:.6e}, tolerance {:.2e}, \
                 truncation {:.2e}{}",
                c.input,
                c.index,
                c.check.analytic,
                c.check.numeric,
                c.check.tolerance(),
                c.check.truncation,
                if c.check.smooth() { "" } else { " (not smooth here)" }
            )
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}
