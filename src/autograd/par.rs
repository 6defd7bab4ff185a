//! Row-parallel helpers. Work is split into fixed chunks and partial sums are
//! combined in chunk order, so results do not depend on how rayon schedules
//! the chunks: a run is reproducible from its seed.

use rayon::prelude::*;

/// Elements below which a loop stays on the calling thread: splitting costs
/// more than it saves there.
pub(crate) const SEQ_BELOW: usize = 1 << 14;

/// Rows per rayon task so that a task holds at least `SEQ_BELOW` elements.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (SEQ_BELOW / row_len.max(1)).max(1)
}

/// Runs `f(row_index, row)` on every `row_len`-long row of `out`.
pub(crate) fn for_rows<F>(out: &mut [f32], row_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if row_len == 0 {
        return;
    }
    if out.len() < SEQ_BELOW {
        out.chunks_mut(row_len).enumerate().for_each(|(r, row)| f(r, row));
    } else {
        out.par_chunks_mut(row_len)
            .with_min_len(rows_per_task(row_len))
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

/// Elements per rayon task in the element-wise loops.
const CHUNK: usize = 1 << 13;

/// Runs `f(index, x)` on every element of `out`.
pub(crate) fn for_each<F>(out: &mut [f32], f: F)
where
    F: Fn(usize, &mut f32) + Sync + Send,
{
    if out.len() < SEQ_BELOW {
        out.iter_mut().enumerate().for_each(|(i, x)| f(i, x));
    } else {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (i, x) in chunk.iter_mut().enumerate() {
                f(c * CHUNK + i, x);
            }
        });
    }
}

/// Runs `f(o, x)` on matching elements of `out` and `x`; the inner loop is
/// a plain zip of two slices, which the compiler vectorizes.
pub(crate) fn zip_apply<F>(out: &mut [f32], x: &[f32], f: F)
where
    F: Fn(&mut f32, f32) + Sync + Send,
{
    debug_assert_eq!(out.len(), x.len());
    let run = |o: &mut [f32], x: &[f32]| {
        for (o, &v) in o.iter_mut().zip(x) {
            f(o, v);
        }
    };
    if out.len() < SEQ_BELOW {
        run(out, x);
    } else {
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| run(o, x));
    }
}

/// `f` of every element of `x`.
pub(crate) fn map<F>(x: &[f32], f: F) -> Vec<f32>
where
    F: Fn(f32) -> f32 + Sync + Send,
{
    let mut out = vec![0.0f32; x.len()];
    zip_apply(&mut out, x, |o, v| *o = f(v));
    out
}

/// `acc += x`, element by element.
pub(crate) fn add_assign(acc: &mut [f32], x: &[f32]) {
    zip_apply(acc, x, |a, v| *a += v);
}

/// Independent partial sums in [`sum_map`]: they let the compiler keep the
/// running sums in one vector register instead of serializing every addition.
const LANES: usize = 16;

/// `sum_i f(a[i], b[i])` over two slices of one length, in `f32` with
/// [`LANES`] partial sums.
#[inline]
pub(crate) fn sum_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(xa[l], xb[l]);
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().sum::<f32>() + tail
}

/// Sums of `f(row)` over groups of `row_len`-long rows of `x`, each a vector
/// of `out_len`; the groups' sums are added in order.
pub(crate) fn sum_rows<F>(x: &[f32], row_len: usize, out_len: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &[f32], &mut [f32]) + Sync + Send,
{
    let mut total = vec![0.0f32; out_len];
    if row_len == 0 || x.is_empty() {
        return total;
    }
    let group = rows_per_task(row_len) * row_len;
    let partial = |(c, chunk): (usize, &[f32])| {
        let mut acc = vec![0.0f32; out_len];
        let first_row = c * group / row_len;
        for (r, row) in chunk.chunks(row_len).enumerate() {
            f(first_row + r, row, &mut acc);
        }
        acc
    };
    let partials: Vec<Vec<f32>> = if x.len() < SEQ_BELOW {
        vec![partial((0, x))]
    } else {
        x.par_chunks(group).enumerate().map(partial).collect()
    };
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}
