//! Multiple-instance bags of different sizes in one minibatch: the instances
//! of every bag arrive stacked as rows, and the attention op wants them as
//! `[B, N_max, D]` with a key padding mask.

use super::{Contrib, Op, Tape, Tensor, Var, expect_rank};
use crate::error::{Error, Result};

pub(super) struct PadBagsSaved {
    x: Var,
    sizes: Vec<usize>,
    n_max: usize,
}

impl Tape<'_> {
    /// Rows `[S, D]`, bag after bag (`sizes` rows each, summing to S), laid
    /// out as `[B, N_max, D]` with zero rows after each bag's last instance.
    /// Returns the padded tensor and its key padding mask `[B, N_max]` (true
    /// = a real instance), the form [`Tape::attention`] takes.
    pub fn pad_bags(&mut self, x: Var, sizes: &[usize]) -> Result<(Var, Vec<bool>)> {
        let shape = self.shape(x).to_vec();
        expect_rank("pad_bags", &shape, 2)?;
        let (rows, d) = (shape[0], shape[1]);
        let total: usize = sizes.iter().sum();
        if sizes.is_empty() || sizes.contains(&0) || total != rows {
            return Err(Error::OpShape {
                op: "pad_bags",
                what: format!("bag sizes {sizes:?} for {rows} rows (each must be positive)"),
            });
        }
        let n_max = sizes.iter().copied().max().unwrap_or(0);
        let src = self.value(x).data();
        let mut out = vec![0.0; sizes.len() * n_max * d];
        let mut valid = vec![false; sizes.len() * n_max];
        let mut start = 0;
        for (b, &n) in sizes.iter().enumerate() {
            out[b * n_max * d..][..n * d].copy_from_slice(&src[start * d..(start + n) * d]);
            valid[b * n_max..][..n].fill(true);
            start += n;
        }
        let value = Tensor::from_parts(vec![sizes.len(), n_max, d], out);
        let saved = PadBagsSaved { x, sizes: sizes.to_vec(), n_max };
        Ok((self.push(value, Op::PadBags(saved), &[x]), valid))
    }

    // The padding rows take no part, so each row's gradient is read back
    // from where the forward pass put it.
    pub(super) fn pad_bags_backward(
        &self,
        s: &PadBagsSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let d = g.len() / (s.sizes.len() * s.n_max).max(1);
        let mut dx = Vec::with_capacity(s.sizes.iter().sum::<usize>() * d);
        for (b, &n) in s.sizes.iter().enumerate() {
            dx.extend_from_slice(&g[b * s.n_max * d..][..n * d]);
        }
        out.push((s.x, Contrib::Full(dx)));
    }
}
