//! Ops the Hopfield layers and their experiments need beyond the transformer's:
//! binary cross-entropy on logits, and a per-head choice between two tensors
//! (the update iteration freezes a head once it has converged).

use super::{Contrib, Op, Tape, Tensor, Var};
use crate::error::{Error, Result};

pub(super) struct BceSaved {
    logits: Var,
    /// `sigmoid(logits)`, one per element.
    probs: Vec<f32>,
    targets: Vec<f32>,
}

pub(super) struct SelectHeadsSaved {
    a: Var,
    b: Var,
    /// Per head: whether the output takes it from `a` (else from `b`).
    take_a: Vec<bool>,
    /// Elements of one head of one batch item.
    inner: usize,
}

/// `log(1 + exp(x))` without overflow for large `x` or loss of precision for
/// very negative `x`.
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() }
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl Tape<'_> {
    /// Mean binary cross-entropy between `sigmoid(logits)` and `targets` in
    /// [0, 1], one target per element of `logits` (any shape): per element
    /// `softplus(z) - y z`, the stable form of `-y log s - (1 - y) log(1 - s)`.
    /// A scalar.
    pub fn bce_with_logits(&mut self, logits: Var, targets: &[f32]) -> Result<Var> {
        let n = self.value(logits).numel();
        if targets.len() != n || n == 0 {
            return Err(Error::OpShape {
                op: "bce_with_logits",
                what: format!("{} targets for logits {:?}", targets.len(), self.shape(logits)),
            });
        }
        if let Some(&bad) = targets.iter().find(|&&y| !(0.0..=1.0).contains(&y)) {
            return Err(Error::InvalidOption {
                name: "binary target",
                value: bad.to_string(),
                reason: "must lie in [0, 1]",
            });
        }
        let z = self.value(logits).data();
        let sum: f64 =
            z.iter().zip(targets).map(|(&z, &y)| softplus(z as f64) - y as f64 * z as f64).sum();
        let value = Tensor::scalar((sum / n as f64) as f32);
        if !self.any_requires(&[logits]) {
            return Ok(self.push(value, Op::Constant, &[]));
        }
        let saved = BceSaved {
            logits,
            probs: z.iter().map(|&z| sigmoid(z)).collect(),
            targets: targets.to_vec(),
        };
        Ok(self.push(value, Op::BceWithLogits(saved), &[logits]))
    }

    // d loss / d z = (sigmoid(z) - y) / n.
    pub(super) fn bce_with_logits_backward(
        &self,
        s: &BceSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let scale = g[0] / s.probs.len() as f32;
        let d = s.probs.iter().zip(&s.targets).map(|(p, y)| (p - y) * scale).collect();
        out.push((s.logits, Contrib::Full(d)));
    }

    /// Per head, the head of `a` or of `b`: for `a`, `b` of one shape
    /// `[B, H, ...]`, output head `h` of every batch item is `a`'s where
    /// `take_a[h]`, else `b`'s.
    pub fn select_heads(&mut self, a: Var, b: Var, take_a: &[bool]) -> Result<Var> {
        let shape = self.shape(a).to_vec();
        if shape != self.shape(b) || shape.len() < 2 || shape[1] != take_a.len() {
            return Err(Error::OpShape {
                op: "select_heads",
                what: format!(
                    "{shape:?} and {:?} with a choice for {} heads",
                    self.shape(b),
                    take_a.len()
                ),
            });
        }
        let inner: usize = shape[2..].iter().product();
        let heads = take_a.len();
        let (ad, bd) = (self.value(a).data(), self.value(b).data());
        let mut y = Vec::with_capacity(ad.len());
        for (i, (ca, cb)) in ad.chunks(inner.max(1)).zip(bd.chunks(inner.max(1))).enumerate() {
            y.extend_from_slice(if take_a[i % heads] { ca } else { cb });
        }
        let value = Tensor::from_parts(shape, y);
        let saved = SelectHeadsSaved { a, b, take_a: take_a.to_vec(), inner };
        Ok(self.push(value, Op::SelectHeads(saved), &[a, b]))
    }

    // Each head's gradient goes to the tensor it was taken from, zero to the other.
    pub(super) fn select_heads_backward(
        &self,
        s: &SelectHeadsSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let heads = s.take_a.len();
        let split = |from_a: bool| -> Vec<f32> {
            let mut d = g.to_vec();
            for (i, chunk) in d.chunks_mut(s.inner.max(1)).enumerate() {
                if s.take_a[i % heads] != from_a {
                    chunk.fill(0.0);
                }
            }
            d
        };
        if self.requires(s.a) {
            out.push((s.a, Contrib::Full(split(true))));
        }
        if self.requires(s.b) {
            out.push((s.b, Contrib::Full(split(false))));
        }
    }
}
