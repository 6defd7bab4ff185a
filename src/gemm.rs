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
    if m * n * k <= SMALL {
        small_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
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

/// Products of at most this many multiply-adds run as plain loops: the
/// `gemm` crate's dispatch and packing cost more than such a product itself
/// (attention over bags of 16 calls it thousands of times per step).
const SMALL: usize = 4096;

/// `C = alpha op(A) op(B) + beta C` by loops. A transposed operand is first
/// copied into row-major `op(X)`, so that the innermost loop always runs along
/// a contiguous row of `op(B)` and of C, which the compiler vectorizes.
#[allow(clippy::too_many_arguments)]
fn small_gemm(
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
) {
    let mut packed_a = Vec::new();
    let (a, lda) = match ta {
        Trans::No => (a, lda),
        Trans::Yes => {
            packed_a.reserve(m * k);
            for r in 0..m {
                packed_a.extend((0..k).map(|p| a[p * lda + r]));
            }
            (packed_a.as_slice(), k)
        }
    };
    let mut packed_b = Vec::new();
    let (b, ldb) = match tb {
        Trans::No => (b, ldb),
        Trans::Yes => {
            packed_b.reserve(k * n);
            for p in 0..k {
                packed_b.extend((0..n).map(|j| b[j * ldb + p]));
            }
            (packed_b.as_slice(), n)
        }
    };
    // A block of R rows x W columns of C accumulates in registers: R
    // independent chains of vector multiply-adds hide their latency.
    const R: usize = 4;
    const W: usize = 8;
    let store = |c: &mut [f32], r: usize, j0: usize, acc: &[f32]| {
        let out = &mut c[r * ldc + j0..r * ldc + j0 + acc.len()];
        for (o, &v) in out.iter_mut().zip(acc) {
            *o = if beta == 0.0 { alpha * v } else { beta * *o + alpha * v };
        }
    };
    let full_rows = m - m % R;
    let full_cols = n - n % W;
    for r0 in (0..full_rows).step_by(R) {
        for j0 in (0..full_cols).step_by(W) {
            let mut acc = [[0.0f32; W]; R];
            for p in 0..k {
                let Ok(b8) = <&[f32; W]>::try_from(&b[p * ldb + j0..p * ldb + j0 + W]) else {
                    continue;
                };
                for (rr, acc_r) in acc.iter_mut().enumerate() {
                    let x = a[(r0 + rr) * lda + p];
                    for i in 0..W {
                        acc_r[i] += x * b8[i];
                    }
                }
            }
            for (rr, acc_r) in acc.iter().enumerate() {
                store(c, r0 + rr, j0, acc_r);
            }
        }
    }
    // The ragged right columns of the full row blocks, and the last rows.
    let mut row = vec![0.0f32; n];
    for r in 0..m {
        let j_start = if r < full_rows { full_cols } else { 0 };
        if j_start == n {
            continue;
        }
        let acc = &mut row[j_start..];
        acc.fill(0.0);
        for p in 0..k {
            let x = a[r * lda + p];
            for (o, &y) in acc.iter_mut().zip(&b[p * ldb + j_start..p * ldb + n]) {
                *o += x * y;
            }
        }
        store(c, r, j_start, acc);
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
        // Below and above the size where the loops hand over to the gemm crate.
        for (m, n, k) in [(5, 7, 3), (9, 17, 5), (21, 19, 17)] {
            combinations_match_loops(m, n, k);
        }
    }

    fn combinations_match_loops(m: usize, n: usize, k: usize) {
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
