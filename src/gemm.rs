//! Single-precision matrix products through the `gemm` crate, behind a small
//! safe, row-major interface. Every matrix product of the crate's CPU code goes
//! through [`sgemm`], so there is one place that checks bounds and picks the
//! threading.

/// How a matrix operand is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Row-major as stored: element (r, c) at `r * ld + c`.
    No,
    /// Transposed: element (r, c) of the operand at `c * ld + r`.
    Yes,
}

/// Whether a product may use the rayon pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    /// One thread: for products inside an already parallel loop.
    Seq,
    /// All of rayon's threads.
    Rayon,
}

fn span(rows: usize, cols: usize, ld: usize, t: Trans) -> usize {
    let (outer, inner) = match t {
        Trans::No => (rows, cols),
        Trans::Yes => (cols, rows),
    };
    if outer == 0 || inner == 0 { 0 } else { (outer - 1) * ld + inner }
}

/// `C = alpha * op(A) op(B) + beta * C` with `op(A)` of size m x k, `op(B)` of
/// size k x n and C of size m x n, all row-major with leading dimensions
/// `lda`, `ldb`, `ldc`. With `beta == 0` the old contents of C are not read.
///
/// Panics if a slice is too short for the sizes given: callers inside the
/// crate derive both from the same shapes, so that is a bug, never user input.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= span(m, n, ldc, Trans::No), "sgemm: C too short");
    if k == 0 {
        for r in 0..m {
            for v in &mut c[r * ldc..r * ldc + n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return;
    }
    assert!(a.len() >= span(m, k, lda, ta), "sgemm: A too short");
    assert!(b.len() >= span(k, n, ldb, tb), "sgemm: B too short");
    let (a_rs, a_cs) = match ta {
        Trans::No => (lda as isize, 1),
        Trans::Yes => (1, lda as isize),
    };
    let (b_rs, b_cs) = match tb {
        Trans::No => (ldb as isize, 1),
        Trans::Yes => (1, ldb as isize),
    };
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: the asserts above bound every index the strides reach: op(A) is
    // m x k, op(B) k x n and C m x n within their slices, and C is borrowed
    // mutably, so it aliases neither A nor B.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(ta: Trans, tb: Trans, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let at = |r: usize, c: usize| match ta {
            Trans::No => a[r * k + c],
            Trans::Yes => a[c * m + r],
        };
        let bt = |r: usize, c: usize| match tb {
            Trans::No => b[r * n + c],
            Trans::Yes => b[c * k + r],
        };
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        out
    }

    #[test]
    fn all_transpose_combinations_match_loops() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                let lda = if ta == Trans::No { k } else { m };
                let ldb = if tb == Trans::No { n } else { k };
                let want = naive(ta, tb, m, n, k, &a, &b);
                let mut c = vec![1.0; m * n];
                sgemm(ta, tb, m, n, k, 2.0, &a, lda, &b, ldb, 0.5, &mut c, n, Par::Seq);
                for (x, w) in c.iter().zip(&want) {
                    assert!((x - (2.0 * w + 0.5)).abs() < 1e-5, "{ta:?} {tb:?}");
                }
            }
        }
    }
}
