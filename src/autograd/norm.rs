//! Layer normalization over the last dimension.

use rayon::prelude::*;

use super::{Contrib, Op, Tape, Tensor, Var, par};
use crate::error::{Error, Result};

pub(super) struct LayerNormSaved {
    x: Var,
    w: Var,
    b: Var,
    /// Per row: mean and `1 / sqrt(var + eps)`.
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl Tape<'_> {
    /// `y = (x - mean) / sqrt(var + eps) * w + b` over the last dimension of
    /// `x`, with the biased variance (as `torch.nn.LayerNorm`); w, b `[C]`.
    pub fn layer_norm(&mut self, x: Var, w: Var, b: Var, eps: f32) -> Result<Var> {
        let xs = self.shape(x).to_vec();
        let c = *xs.last().unwrap_or(&0);
        if c == 0 || self.value(w).numel() != c || self.value(b).numel() != c {
            return Err(Error::OpShape {
                op: "layer_norm",
                what: format!("input {xs:?}, weight {:?}, bias {:?}", self.shape(w), self.shape(b)),
            });
        }
        let rows = self.value(x).numel() / c;
        let (xd, wd, bd) = (self.value(x).data(), self.value(w).data(), self.value(b).data());

        // Two passes per row, mean first, then the mean squared deviation:
        // unlike E[x^2] - E[x]^2 this keeps the variance of a row of large,
        // nearly equal values in f32.
        let mut y = vec![0.0f32; rows * c];
        let mut stats = vec![0.0f32; rows * 2];
        let row_pass = |(r, (yr, st)): (usize, (&mut [f32], &mut [f32]))| {
            let row = &xd[r * c..(r + 1) * c];
            let mean = par::sum_map(row, row, |v, _| v) / c as f32;
            let var = par::sum_map(row, row, |v, _| (v - mean) * (v - mean)) / c as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                yr[i] = (row[i] - mean) * rstd * wd[i] + bd[i];
            }
            st[0] = mean;
            st[1] = rstd;
        };
        if y.len() < par::SEQ_BELOW {
            y.chunks_mut(c).zip(stats.chunks_mut(2)).enumerate().for_each(row_pass);
        } else {
            y.par_chunks_mut(c)
                .zip(stats.par_chunks_mut(2))
                .with_min_len(par::rows_per_task(c))
                .enumerate()
                .for_each(row_pass);
        }

        let value = Tensor::from_parts(xs, y);
        if !self.any_requires(&[x, w, b]) {
            return Ok(self.push(value, Op::Constant, &[]));
        }
        let (mean, rstd) = stats.chunks(2).map(|s| (s[0], s[1])).unzip();
        let saved = LayerNormSaved { x, w, b, mean, rstd };
        Ok(self.push(value, Op::LayerNorm(saved), &[x, w, b]))
    }

    // With xhat = (x - mean) * rstd and dxhat = dy * w:
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
    // dw = sum over rows of dy * xhat, db = sum over rows of dy.
    pub(super) fn layer_norm_backward(
        &self,
        s: &LayerNormSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let xd = self.value(s.x).data();
        let wd = self.value(s.w).data();
        let c = wd.len();
        let xhat = |r: usize, i: usize| (xd[r * c + i] - s.mean[r]) * s.rstd[r];

        if self.requires(s.x) {
            let mut dx = vec![0.0f32; xd.len()];
            par::for_rows(&mut dx, c, |r, dxr| {
                let gr = &g[r * c..(r + 1) * c];
                let xr = &xd[r * c..(r + 1) * c];
                let (mean, rstd) = (s.mean[r], s.rstd[r]);
                // dx holds dxhat until the row's two means are known.
                for i in 0..c {
                    dxr[i] = gr[i] * wd[i];
                }
                let mean_d = par::sum_map(dxr, dxr, |d, _| d) / c as f32;
                let mean_dx = par::sum_map(dxr, xr, |d, v| d * (v - mean)) * rstd / c as f32;
                for i in 0..c {
                    let xhat = (xr[i] - mean) * rstd;
                    dxr[i] = rstd * (dxr[i] - mean_d - xhat * mean_dx);
                }
            });
            out.push((s.x, Contrib::Full(dx)));
        }
        if self.requires(s.w) || self.requires(s.b) {
            let sums = par::sum_rows(g, c, 2 * c, |r, gr, acc| {
                let (dw, db) = acc.split_at_mut(c);
                for i in 0..c {
                    dw[i] += gr[i] * xhat(r, i);
                    db[i] += gr[i];
                }
            });
            let (dw, db) = sums.split_at(c);
            out.push((s.w, Contrib::Full(dw.to_vec())));
            out.push((s.b, Contrib::Full(db.to_vec())));
        }
    }
}
