//! Softmax cross-entropy.

use super::{Contrib, Op, Tape, Tensor, Var, expect_rank, par};
use crate::error::{Error, Result};

pub(super) struct CrossEntropySaved {
    logits: Var,
    /// Softmax of the logits, `[B, C]`.
    probs: Vec<f32>,
    labels: Vec<usize>,
    smoothing: f32,
}

impl Tape<'_> {
    /// Mean over the batch of the cross-entropy between `softmax(logits)`
    /// (`[B, C]`) and the targets: the one-hot label mixed with the uniform
    /// distribution, `(1 - smoothing) * onehot + smoothing / C` (label
    /// smoothing; 0 gives the plain loss). A scalar.
    pub fn cross_entropy(&mut self, logits: Var, labels: &[usize], smoothing: f32) -> Result<Var> {
        let ls = self.shape(logits).to_vec();
        expect_rank("cross_entropy", &ls, 2)?;
        let (b, c) = (ls[0], ls[1]);
        if labels.len() != b || b == 0 || c == 0 {
            return Err(Error::OpShape {
                op: "cross_entropy",
                what: format!("{} labels for logits {ls:?}", labels.len()),
            });
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
            return Err(Error::InvalidOption {
                name: "label",
                value: bad.to_string(),
                reason: "must be below the number of classes",
            });
        }
        if !(0.0..1.0).contains(&smoothing) {
            return Err(Error::InvalidOption {
                name: "label smoothing",
                value: smoothing.to_string(),
                reason: "must lie in [0, 1)",
            });
        }

        // Per row: the stable log-sum-exp, then the loss against the target.
        let z = self.value(logits).data();
        let mut probs = vec![0.0f32; b * c];
        let mut losses = vec![0.0f32; b];
        par::for_rows(&mut probs, c, |r, pr| {
            let zr = &z[r * c..(r + 1) * c];
            let max = zr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0f64;
            for (p, &v) in pr.iter_mut().zip(zr) {
                *p = (v - max).exp();
                sum += *p as f64;
            }
            let inv = (1.0 / sum) as f32;
            pr.iter_mut().for_each(|p| *p *= inv);
        });
        for (r, loss) in losses.iter_mut().enumerate() {
            let zr = &z[r * c..(r + 1) * c];
            let max = zr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max + zr.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            let mean_z = zr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let target =
                (1.0 - smoothing as f64) * zr[labels[r]] as f64 + smoothing as f64 * mean_z;
            *loss = (lse - target) as f32;
        }
        let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / b as f64;

        let saved = CrossEntropySaved { logits, probs, labels: labels.to_vec(), smoothing };
        let value = Tensor::scalar(mean as f32);
        Ok(self.push(value, Op::CrossEntropy(saved), &[logits]))
    }

    // d loss / d logits = (softmax - target) / B.
    pub(super) fn cross_entropy_backward(
        &self,
        s: &CrossEntropySaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let b = s.labels.len();
        let c = s.probs.len() / b;
        let scale = g[0] / b as f32;
        let uniform = s.smoothing / c as f32;
        let mut d = s.probs.clone();
        for (r, dr) in d.chunks_mut(c).enumerate() {
            for v in dr.iter_mut() {
                *v = (*v - uniform) * scale;
            }
            dr[s.labels[r]] -= (1.0 - s.smoothing) * scale;
        }
        out.push((s.logits, Contrib::Full(d)));
    }
}
