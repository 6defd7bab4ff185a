//! The exact lower median of a call's valid scores on the fast CPU path.
//!
//! The median is the element of rank `floor((n - 1) / 2)` of the multiset of
//! every valid score of the call. Scores are recomputed tile by tile with
//! [`super::fast::score_tile`] on the same grid as the forward and backward
//! passes, so the median is bit-identical to one of the scores they see.
//!
//! Two ways, both exact:
//! - at most [`MATERIALIZE_BUDGET`] scores: gather them all and select the
//!   rank with `select_nth_unstable` (linear time, one pass of score products);
//! - more: radix selection on order-preserving 32-bit keys. Pass one builds a
//!   histogram of the top 16 bits and finds the bucket holding the rank; pass
//!   two gathers the scores of that bucket and selects among them, or, when
//!   that bucket alone is over the budget, histograms their low 16 bits. Two
//!   passes of score products and 64-bit counts, no sort, no N x N buffer.

use rayon::prelude::*;

use super::AttentionInput;
use super::fast::{TK, TQ, score_tile};

/// Largest number of scores gathered into one buffer (16 MiB of f32). Above
/// it radix selection is also the faster way: selecting among millions of
/// gathered floats costs more than a second pass of score products.
pub const MATERIALIZE_BUDGET: usize = 1 << 22;

/// Maps a float to a u32 whose unsigned order is the float's order (negative
/// floats reversed, the sign bit set for non-negative ones).
#[inline]
pub fn order_key(x: f32) -> u32 {
    let u = x.to_bits();
    if u & 0x8000_0000 != 0 { !u } else { u | 0x8000_0000 }
}

/// Inverse of [`order_key`].
#[inline]
pub fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k & 0x7fff_ffff } else { !k })
}

/// Calls `f` with the keys of every valid score of the call's query tiles
/// assigned to one rayon task, and combines the tasks' results.
fn over_scores<T, F, R>(
    input: &AttentionInput,
    beta: f32,
    init: impl Fn() -> T + Sync + Send,
    f: F,
    reduce: R,
) -> T
where
    T: Send,
    F: Fn(&mut T, &[f32]) + Sync + Send,
    R: Fn(T, T) -> T + Sync + Send,
{
    let s = input.shape;
    let q_tiles = s.n_q.div_ceil(TQ);
    (0..s.batch * s.heads * q_tiles)
        .into_par_iter()
        .fold(
            || (init(), vec![0.0f32; TQ * TK], Vec::with_capacity(TQ * TK)),
            |(mut acc, mut tile, mut kept), task| {
                let (bh, i0) = (task / q_tiles, (task % q_tiles) * TQ);
                let tq = TQ.min(s.n_q - i0);
                let q = &input.q[(bh * s.n_q + i0) * s.d..];
                for j0 in (0..s.n_k).step_by(TK) {
                    let tk = TK.min(s.n_k - j0);
                    let k = &input.k[(bh * s.n_k + j0) * s.d..];
                    score_tile(q, k, tq, tk, s.d, beta, &mut tile[..tq * tk]);
                    kept.clear();
                    match input.valid {
                        None => kept.extend_from_slice(&tile[..tq * tk]),
                        Some(m) => {
                            let m = &m[(bh / s.heads) * s.n_k + j0..][..tk];
                            for r in 0..tq {
                                let row = &tile[r * tk..][..tk];
                                kept.extend(
                                    row.iter().zip(m).filter(|(_, v)| **v).map(|(x, _)| *x),
                                );
                            }
                        }
                    }
                    f(&mut acc, &kept);
                }
                (acc, tile, kept)
            },
        )
        .map(|(acc, _, _)| acc)
        .reduce(&init, reduce)
}

/// Number of valid scores of the call.
fn valid_count(input: &AttentionInput) -> u64 {
    let s = input.shape;
    let keys = match input.valid {
        None => (s.batch * s.n_k) as u64,
        Some(m) => m.iter().filter(|&&v| v).count() as u64,
    };
    keys * (s.heads * s.n_q) as u64
}

/// The exact lower median of the call's valid scores (`None` when it has
/// none), gathering them when there are at most `budget`.
pub fn call_median(input: &AttentionInput, beta: f32, budget: usize) -> Option<f32> {
    let n = valid_count(input);
    if n == 0 {
        return None;
    }
    let rank = (n - 1) / 2;
    if n <= budget as u64 {
        let mut all = over_scores(
            input,
            beta,
            Vec::new,
            |acc: &mut Vec<f32>, x| acc.extend_from_slice(x),
            |mut a, mut b| {
                a.append(&mut b);
                a
            },
        );
        let (_, m, _) = all.select_nth_unstable_by(rank as usize, |a, b| a.total_cmp(b));
        return Some(*m);
    }
    Some(radix_select(input, beta, rank, budget))
}

/// Bucket of a histogram holding `rank`, and the rank within that bucket.
fn find_bucket(hist: &[u64], mut rank: u64) -> (usize, u64) {
    for (i, &c) in hist.iter().enumerate() {
        if rank < c {
            return (i, rank);
        }
        rank -= c;
    }
    unreachable!("rank below the histogram's total by construction")
}

fn add_hist(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}

/// Radix selection of the element of `rank` in two passes over the scores.
fn radix_select(input: &AttentionInput, beta: f32, rank: u64, budget: usize) -> f32 {
    let hist_hi = over_scores(
        input,
        beta,
        || vec![0u64; 1 << 16],
        |h: &mut Vec<u64>, x| x.iter().for_each(|&v| h[(order_key(v) >> 16) as usize] += 1),
        add_hist,
    );
    let (hi, rank) = find_bucket(&hist_hi, rank);
    let hi = hi as u32;

    if hist_hi[hi as usize] as usize <= budget {
        let mut cand = over_scores(
            input,
            beta,
            Vec::new,
            |acc: &mut Vec<u32>, x| {
                acc.extend(x.iter().map(|&v| order_key(v)).filter(|k| k >> 16 == hi));
            },
            |mut a, mut b| {
                a.append(&mut b);
                a
            },
        );
        let (_, k, _) = cand.select_nth_unstable(rank as usize);
        return from_order_key(*k);
    }

    let hist_lo = over_scores(
        input,
        beta,
        || vec![0u64; 1 << 16],
        |h: &mut Vec<u64>, x| {
            for k in x.iter().map(|&v| order_key(v)).filter(|k| k >> 16 == hi) {
                h[(k & 0xffff) as usize] += 1;
            }
        },
        add_hist,
    );
    let (lo, _) = find_bucket(&hist_lo, rank);
    from_order_key(hi << 16 | lo as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_preserves_order_and_inverts() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} {}", w[0], w[1]);
        }
        for &x in &xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
    }
}
