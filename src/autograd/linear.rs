//! Matrix products: the affine map of a linear layer and the batched matmul.

use rayon::prelude::*;

use super::{Contrib, Op, Tape, Tensor, Var, par};
use crate::error::{Error, Result};
use crate::gemm::{Par, Trans, sgemm};

pub(super) struct LinearSaved {
    x: Var,
    w: Var,
    b: Option<Var>,
    /// Rows of x once its leading dimensions are flattened.
    rows: usize,
    n_in: usize,
    n_out: usize,
}

pub(super) struct MatMulSaved {
    a: Var,
    b: Var,
    ta: bool,
    tb: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
}

fn trans(t: bool) -> Trans {
    if t { Trans::Yes } else { Trans::No }
}

impl Tape<'_> {
    /// `y = x W^T + b` over the last dimension of `x` (timm's row-vector
    /// convention): x `[..., in]`, W `[out, in]` (or any shape `[out, ...]`
    /// with `in` elements per output, like a conv kernel), b `[out]`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let xs = self.shape(x).to_vec();
        let ws = self.shape(w).to_vec();
        let n_out = *ws
            .first()
            .ok_or_else(|| Error::OpShape { op: "linear", what: "the weight has rank 0".into() })?;
        let n_in = *xs.last().unwrap_or(&0);
        if n_out == 0 || n_in == 0 || self.value(w).numel() != n_out * n_in {
            return Err(Error::OpShape {
                op: "linear",
                what: format!("input {xs:?} does not fit weight {ws:?}"),
            });
        }
        if let Some(b) = b
            && self.value(b).numel() != n_out
        {
            return Err(Error::OpShape {
                op: "linear",
                what: format!("bias {:?} for {n_out} outputs", self.shape(b)),
            });
        }
        let rows = self.value(x).numel() / n_in;

        // The bias is written first and the product accumulated onto it.
        let mut y = vec![0.0f32; rows * n_out];
        let beta = match b {
            Some(b) => {
                let bias = self.value(b).data();
                par::for_rows(&mut y, n_out, |_, row| row.copy_from_slice(bias));
                1.0
            }
            None => 0.0,
        };
        let (xd, wd) = (self.value(x).data(), self.value(w).data());
        sgemm(
            Trans::No,
            Trans::Yes,
            rows,
            n_out,
            n_in,
            1.0,
            xd,
            n_in,
            wd,
            n_in,
            beta,
            &mut y,
            n_out,
            Par::Rayon,
        );

        let mut shape = xs;
        if let Some(last) = shape.last_mut() {
            *last = n_out;
        }
        let saved = LinearSaved { x, w, b, rows, n_in, n_out };
        let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        Ok(self.push(Tensor::from_parts(shape, y), Op::Linear(saved), &inputs))
    }

    // dx = dy W, dW = dy^T x, db = column sums of dy.
    pub(super) fn linear_backward(
        &self,
        s: &LinearSaved,
        g: Vec<f32>,
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let (rows, n_in, n_out) = (s.rows, s.n_in, s.n_out);
        if self.requires(s.x) {
            let mut dx = vec![0.0f32; rows * n_in];
            let wd = self.value(s.w).data();
            sgemm(
                Trans::No,
                Trans::No,
                rows,
                n_in,
                n_out,
                1.0,
                &g,
                n_out,
                wd,
                n_in,
                0.0,
                &mut dx,
                n_in,
                Par::Rayon,
            );
            out.push((s.x, Contrib::Full(dx)));
        }
        if self.requires(s.w) {
            let mut dw = vec![0.0f32; n_out * n_in];
            let xd = self.value(s.x).data();
            sgemm(
                Trans::Yes,
                Trans::No,
                n_out,
                n_in,
                rows,
                1.0,
                &g,
                n_out,
                xd,
                n_in,
                0.0,
                &mut dw,
                n_in,
                Par::Rayon,
            );
            out.push((s.w, Contrib::Full(dw)));
        }
        if let Some(b) = s.b
            && self.requires(b)
        {
            let db = par::sum_rows(&g, n_out, n_out, |_, row, acc| {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            });
            out.push((b, Contrib::Full(db)));
        }
    }

    /// Batched product `C = op(A) op(B)` over matching leading dimensions,
    /// `op` transposing the last two dimensions when `ta` / `tb` is set.
    /// A `[..., m, k]` (`[..., k, m]` with `ta`), B `[..., k, n]` (`[..., n, k]`
    /// with `tb`), C `[..., m, n]`.
    pub fn matmul(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        let bad = || Error::OpShape {
            op: "matmul",
            what: format!("{sa:?} (transposed: {ta}) times {sb:?} (transposed: {tb})"),
        };
        if sa.len() < 2 || sa.len() != sb.len() || sa[..sa.len() - 2] != sb[..sb.len() - 2] {
            return Err(bad());
        }
        let r = sa.len();
        let (m, k) = if ta { (sa[r - 1], sa[r - 2]) } else { (sa[r - 2], sa[r - 1]) };
        let (k2, n) = if tb { (sb[r - 1], sb[r - 2]) } else { (sb[r - 2], sb[r - 1]) };
        if k != k2 {
            return Err(bad());
        }
        let batch: usize = sa[..r - 2].iter().product();
        let mut c = vec![0.0f32; batch * m * n];
        batched_gemm(
            batch,
            (trans(ta), trans(tb)),
            (m, n, k),
            (self.value(a).data(), if ta { m } else { k }),
            (self.value(b).data(), if tb { k } else { n }),
            &mut c,
        );
        let mut shape = sa[..r - 2].to_vec();
        shape.extend([m, n]);
        let saved = MatMulSaved { a, b, ta, tb, batch, m, n, k };
        Ok(self.push(Tensor::from_parts(shape, c), Op::MatMul(saved), &[a, b]))
    }

    // With C = op(A) op(B): d op(A) = dC op(B)^T and d op(B) = op(A)^T dC; a
    // transposed operand takes the transpose of its product.
    pub(super) fn matmul_backward(
        &self,
        s: &MatMulSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let (m, n, k) = (s.m, s.n, s.k);
        let (ad, bd) = (self.value(s.a).data(), self.value(s.b).data());
        let lda = if s.ta { m } else { k };
        let ldb = if s.tb { k } else { n };
        if self.requires(s.a) {
            let mut da = vec![0.0f32; s.batch * m * k];
            if s.ta {
                // dA [k, m] = op(B) dC^T
                batched_gemm(
                    s.batch,
                    (trans(s.tb), Trans::Yes),
                    (k, m, n),
                    (bd, ldb),
                    (g, n),
                    &mut da,
                );
            } else {
                // dA [m, k] = dC op(B)^T
                batched_gemm(
                    s.batch,
                    (Trans::No, trans(!s.tb)),
                    (m, k, n),
                    (g, n),
                    (bd, ldb),
                    &mut da,
                );
            }
            out.push((s.a, Contrib::Full(da)));
        }
        if self.requires(s.b) {
            let mut db = vec![0.0f32; s.batch * k * n];
            if s.tb {
                // dB [n, k] = dC^T op(A)
                batched_gemm(
                    s.batch,
                    (Trans::Yes, trans(s.ta)),
                    (n, k, m),
                    (g, n),
                    (ad, lda),
                    &mut db,
                );
            } else {
                // dB [k, n] = op(A)^T dC
                batched_gemm(
                    s.batch,
                    (trans(!s.ta), Trans::No),
                    (k, n, m),
                    (ad, lda),
                    (g, n),
                    &mut db,
                );
            }
            out.push((s.b, Contrib::Full(db)));
        }
    }
}

/// `c[i] = op(a[i]) op(b[i])` for each of `batch` matrices stored back to
/// back; `c[i]` is m x n with leading dimension n. Many small products run in
/// parallel one thread each; few large ones use every thread per product.
fn batched_gemm(
    batch: usize,
    (ta, tb): (Trans, Trans),
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    c: &mut [f32],
) {
    let (a_len, b_len, c_len) = (m * k, k * n, m * n);
    if c_len == 0 {
        return;
    }
    let one = |i: usize, ci: &mut [f32], par: Par| {
        let ai = &a[i * a_len..(i + 1) * a_len];
        let bi = &b[i * b_len..(i + 1) * b_len];
        sgemm(ta, tb, m, n, k, 1.0, ai, lda, bi, ldb, 0.0, ci, n, par);
    };
    if batch >= rayon::current_num_threads() && batch > 1 {
        c.par_chunks_mut(c_len).enumerate().for_each(|(i, ci)| one(i, ci, Par::Seq));
    } else {
        for (i, ci) in c.chunks_mut(c_len).enumerate() {
            one(i, ci, Par::Rayon);
        }
    }
}
