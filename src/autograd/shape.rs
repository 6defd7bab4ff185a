//! Ops that move elements without arithmetic: reshape, permute, slicing, the
//! class token, and cutting an image into patches.

use rayon::prelude::*;

use super::{Contrib, Op, Tape, Tensor, Var, expect_rank, par};
use crate::error::{Error, Result};

pub(super) struct PatchifySaved {
    x: Var,
    /// `[B, C, H, W]` of the input.
    dims: [usize; 4],
    patch: usize,
}

/// Permutes the dimensions of a row-major tensor: output dimension `d` is
/// input dimension `perm[d]`.
pub(crate) fn permute_data(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let r = shape.len();
    let mut out = vec![0.0f32; x.len()];
    if r == 0 || x.is_empty() {
        out.copy_from_slice(x);
        return out;
    }
    let mut in_strides = vec![1usize; r];
    for d in (0..r - 1).rev() {
        in_strides[d] = in_strides[d + 1] * shape[d + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let (last, last_stride) = (out_shape[r - 1], src_strides[r - 1]);

    // One output row (the last output dimension) at a time: its start in the
    // input comes from the row's multi-index, its elements are `last_stride`
    // apart, a plain copy when the last dimension stays last.
    par::for_rows(&mut out, last, |row_index, row| {
        let (mut rem, mut base) = (row_index, 0usize);
        for d in (0..r - 1).rev() {
            base += (rem % out_shape[d]) * src_strides[d];
            rem /= out_shape[d];
        }
        if last_stride == 1 {
            row.copy_from_slice(&x[base..base + last]);
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                *o = x[base + j * last_stride];
            }
        }
    });
    out
}

impl Tape<'_> {
    /// The same elements under another shape; shares the storage.
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let value = self.value(x).reshaped(shape)?;
        Ok(self.push(value, Op::Reshape { x }, &[x]))
    }

    /// Reorders dimensions: output dimension `d` is input dimension `perm[d]`
    /// (`torch.permute`).
    pub fn permute(&mut self, x: Var, perm: &[usize]) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        let mut seen = vec![false; shape.len()];
        let valid = perm.len() == shape.len()
            && perm.iter().all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::OpShape {
                op: "permute",
                what: format!("{perm:?} is not a permutation of the dimensions of {shape:?}"),
            });
        }
        let data = permute_data(self.value(x).data(), &shape, perm);
        let out_shape = perm.iter().map(|&p| shape[p]).collect();
        let op = Op::Permute { x, perm: perm.to_vec() };
        Ok(self.push(Tensor::from_parts(out_shape, data), op, &[x]))
    }

    // The gradient of a permutation is the inverse permutation of the gradient.
    pub(super) fn permute_backward(
        &self,
        x: Var,
        perm: &[usize],
        value: &Tensor,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let mut inverse = vec![0; perm.len()];
        for (d, &p) in perm.iter().enumerate() {
            inverse[p] = d;
        }
        out.push((x, Contrib::Full(permute_data(g, value.shape(), &inverse))));
    }

    /// Element `index` along the first dimension: `[n, ...] -> [...]`.
    pub fn select(&mut self, x: Var, index: usize) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        if shape.is_empty() || index >= shape[0] {
            return Err(Error::OpShape {
                op: "select",
                what: format!("index {index} along the first dimension of {shape:?}"),
            });
        }
        let inner: usize = shape[1..].iter().product();
        let data = self.value(x).data()[index * inner..(index + 1) * inner].to_vec();
        let value = Tensor::from_parts(shape[1..].to_vec(), data);
        Ok(self.push(value, Op::Select { x, index }, &[x]))
    }

    /// Prepends the class token `cls` (`E` elements, e.g. `[1, 1, E]`) to every
    /// sequence of `x` `[B, N, E]`, giving `[B, N + 1, E]`.
    pub fn concat_cls(&mut self, cls: Var, x: Var) -> Result<Var> {
        let xs = self.shape(x).to_vec();
        expect_rank("concat_cls", &xs, 3)?;
        let (b, n, e) = (xs[0], xs[1], xs[2]);
        if n == 0 || e == 0 || self.value(cls).numel() != e {
            return Err(Error::OpShape {
                op: "concat_cls",
                what: format!("class token {:?} for width {e}", self.shape(cls)),
            });
        }
        let (cd, xd) = (self.value(cls).data(), self.value(x).data());
        let mut y = vec![0.0f32; b * (n + 1) * e];
        y.par_chunks_mut((n + 1) * e).zip(xd.par_chunks(n * e)).for_each(|(yb, xb)| {
            yb[..e].copy_from_slice(cd);
            yb[e..].copy_from_slice(xb);
        });
        let value = Tensor::from_parts(vec![b, n + 1, e], y);
        Ok(self.push(value, Op::ConcatCls { cls, x }, &[cls, x]))
    }

    // The class token collects the gradient of position 0 of every sequence.
    pub(super) fn concat_cls_backward(
        &self,
        cls: Var,
        x: Var,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let xs = self.shape(x);
        let (n, e) = (xs[1], xs[2]);
        if self.requires(cls) {
            let mut dcls = vec![0.0f32; e];
            for gb in g.chunks((n + 1) * e) {
                for (d, v) in dcls.iter_mut().zip(&gb[..e]) {
                    *d += v;
                }
            }
            out.push((cls, Contrib::Full(dcls)));
        }
        if self.requires(x) {
            let mut dx = vec![0.0f32; self.value(x).numel()];
            dx.par_chunks_mut(n * e)
                .zip(g.par_chunks((n + 1) * e))
                .for_each(|(dxb, gb)| dxb.copy_from_slice(&gb[e..]));
            out.push((x, Contrib::Full(dx)));
        }
    }

    /// Token `token` of every sequence: `[B, T, E] -> [B, E]`.
    pub fn select_token(&mut self, x: Var, token: usize) -> Result<Var> {
        let xs = self.shape(x).to_vec();
        expect_rank("select_token", &xs, 3)?;
        let (b, t, e) = (xs[0], xs[1], xs[2]);
        if token >= t {
            return Err(Error::OpShape {
                op: "select_token",
                what: format!("token {token} of {xs:?}"),
            });
        }
        let xd = self.value(x).data();
        let mut y = Vec::with_capacity(b * e);
        for i in 0..b {
            let start = (i * t + token) * e;
            y.extend_from_slice(&xd[start..start + e]);
        }
        let value = Tensor::from_parts(vec![b, e], y);
        Ok(self.push(value, Op::SelectToken { x, token }, &[x]))
    }

    pub(super) fn select_token_backward(
        &self,
        x: Var,
        token: usize,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let xs = self.shape(x);
        let (t, e) = (xs[1], xs[2]);
        let mut dx = vec![0.0f32; self.value(x).numel()];
        for (i, gi) in g.chunks(e.max(1)).enumerate() {
            let start = (i * t + token) * e;
            dx[start..start + e].copy_from_slice(gi);
        }
        out.push((x, Contrib::Full(dx)));
    }

    /// Cuts images `[B, C, H, W]` into non-overlapping `patch` x `patch`
    /// squares: `[B, (H / p) * (W / p), C * p * p]`, patches in row-major order,
    /// each flattened as (channel, row, column) like a conv kernel, so that a
    /// linear map with the kernel as weight is the patch embedding conv.
    pub fn patchify(&mut self, x: Var, patch: usize) -> Result<Var> {
        let xs = self.shape(x).to_vec();
        expect_rank("patchify", &xs, 4)?;
        let dims = [xs[0], xs[1], xs[2], xs[3]];
        let [b, c, h, w] = dims;
        if patch == 0 || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) {
            return Err(Error::OpShape {
                op: "patchify",
                what: format!("patch {patch} does not tile images {xs:?}"),
            });
        }
        let (gh, gw, p) = (h / patch, w / patch, patch);
        let row_len = c * p * p;
        let xd = self.value(x).data();
        let mut y = vec![0.0f32; b * gh * gw * row_len];
        par::for_rows(&mut y, row_len, |row, dst| {
            let (bi, cell) = (row / (gh * gw), row % (gh * gw));
            let (py, px) = (cell / gw, cell % gw);
            for ci in 0..c {
                for ky in 0..p {
                    let src = ((bi * c + ci) * h + py * p + ky) * w + px * p;
                    let at = (ci * p + ky) * p;
                    dst[at..at + p].copy_from_slice(&xd[src..src + p]);
                }
            }
        });
        let value = Tensor::from_parts(vec![b, gh * gw, row_len], y);
        let op = Op::Patchify(PatchifySaved { x, dims, patch });
        Ok(self.push(value, op, &[x]))
    }

    // Patches do not overlap: the gradient goes back to where each element came from.
    pub(super) fn patchify_backward(
        &self,
        s: &PatchifySaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let [b, c, h, w] = s.dims;
        let p = s.patch;
        let (gh, gw) = (h / p, w / p);
        let row_len = c * p * p;
        let mut dx = vec![0.0f32; b * c * h * w];
        dx.par_chunks_mut((c * h * w).max(1)).enumerate().for_each(|(bi, dxb)| {
            for cell in 0..gh * gw {
                let (py, px) = (cell / gw, cell % gw);
                let src_row = &g[(bi * gh * gw + cell) * row_len..][..row_len];
                for ci in 0..c {
                    for ky in 0..p {
                        let dst = (ci * h + py * p + ky) * w + px * p;
                        let at = (ci * p + ky) * p;
                        dxb[dst..dst + p].copy_from_slice(&src_row[at..at + p]);
                    }
                }
            }
        });
        out.push((s.x, Contrib::Full(dx)));
    }
}
