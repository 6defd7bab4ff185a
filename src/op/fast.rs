//! The fast CPU path: tiled, online softmax, no N x N buffer, multithreaded.
//!
//! Work is split over (batch, head, query tile) in the forward pass and over
//! (batch, head) in the backward pass, each task on one rayon thread with its
//! matrix products through [`crate::gemm::sgemm`] single-threaded. Scores are
//! recomputed tile by tile from Q and K ([`score_tile`]); the median, the
//! forward and the backward all use the same tile grid, so every score has the
//! same f32 value in all three and kept/forgotten decisions and median ties
//! agree exactly.
//!
//! Extra memory per task: one `TQ x TK` score tile and a few of its size, plus
//! the row statistics. The median may materialize the call's scores below a
//! size budget (see [`super::median`]).

use rayon::prelude::*;

use super::{
    AttentionConfig, AttentionInput, CallStats, Forward, Grads, Threshold, median, philox,
};
use crate::gemm::{Par, Trans, sgemm};

/// Query rows per tile.
pub const TQ: usize = 64;
/// Keys per tile.
pub const TK: usize = 128;

/// `out[r * tk + c] = beta * q[r] . k[c]` for a `tq x tk` tile; `q` and `k`
/// start at the tile's first row and key.
pub fn score_tile(
    q: &[f32],
    k: &[f32],
    tq: usize,
    tk: usize,
    d: usize,
    beta: f32,
    out: &mut [f32],
) {
    sgemm(Trans::No, Trans::Yes, tq, tk, d, beta, q, d, k, d, 0.0, out, tk, Par::Seq);
}

/// `exp(x)` for f32 to within about 1 ulp, in a form the compiler vectorizes
/// (no branches, no libm call); returns 0 below -87.3 and for -inf.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split into a part exact in f32 and a correction (Cody-Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.7);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r2 + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { y * scale }
}

/// Lanes for the reductions below: independent partial results let the
/// compiler keep them in one vector register, where a single running value
/// would serialize every addition.
const LANES: usize = 16;

/// The largest element (-inf for an empty slice).
#[inline]
pub(crate) fn max_of(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in m.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    tail.iter().chain(&m).fold(f32::NEG_INFINITY, |a, &v| a.max(v))
}

/// `x = exp(x - sub)` elementwise; returns the sum.
#[inline]
pub(crate) fn exp_in_place(x: &mut [f32], sub: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp_f32(*v - sub);
            *a += *v;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - sub);
        sum += *v;
    }
    sum
}

/// Dropout scales `r_ij` of one row's tile, drawn from the Philox stream.
pub(crate) fn dropout_row(key: [u32; 2], first: u64, p: f32, out: &mut [f32]) {
    let scale = 1.0 / (1.0 - p);
    let mut group = u64::MAX;
    let mut words = [0u32; 4];
    for (c, r) in out.iter_mut().enumerate() {
        let e = first + c as u64;
        if e >> 2 != group {
            group = e >> 2;
            words = philox::dropout_words(key, group);
        }
        let keep = philox::unit_f32(words[(e & 3) as usize]) >= p;
        *r = if keep { scale } else { 0.0 };
    }
}

/// The padding mask of keys `j0 .. j0 + tk` of batch item `b` (all true
/// without a mask).
fn valid_slice<'a>(
    input: &AttentionInput<'a>,
    b: usize,
    j0: usize,
    tk: usize,
) -> Option<&'a [bool]> {
    input.valid.map(|m| &m[b * input.shape.n_k + j0..][..tk])
}

/// The median of the call's valid scores, for the forgetting functions that
/// need one.
fn call_threshold(input: &AttentionInput, cfg: &AttentionConfig, beta: f32) -> Threshold {
    let m = if cfg.forgetting.needs_median() {
        median::call_median(input, beta, median::MATERIALIZE_BUDGET)
    } else {
        None
    };
    Threshold::resolve(cfg, m)
}

/// Per-task counts of the forward pass.
#[derive(Default, Clone, Copy)]
struct Counts {
    forgotten: u64,
    entries: u64,
    at_median: u64,
}

/// Forward pass (SPEC section 3) with the online softmax.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Forward {
    let beta = cfg.beta_for(input.shape.d);
    let thr = call_threshold(input, cfg, beta);
    forward_at(input, cfg, thr)
}

/// Forward pass at a resolved threshold.
pub fn forward_at(input: &AttentionInput, cfg: &AttentionConfig, thr: Threshold) -> Forward {
    let s = input.shape;
    let beta = cfg.beta_for(s.d);
    let mut o = vec![0.0f32; s.o_len()];
    let mut lse = vec![0.0f32; s.rows()];
    let q_tiles = s.n_q.div_ceil(TQ);

    // One task per (bh, query tile): its rows of O and lse are disjoint.
    let tasks: Vec<(usize, usize, &mut [f32], &mut [f32])> = o
        .chunks_mut(s.n_q * s.d_v)
        .zip(lse.chunks_mut(s.n_q))
        .enumerate()
        .flat_map(|(bh, (o_bh, lse_bh))| {
            o_bh.chunks_mut(TQ * s.d_v)
                .zip(lse_bh.chunks_mut(TQ))
                .enumerate()
                .map(move |(t, (o_t, l_t))| (bh, t * TQ, o_t, l_t))
        })
        .collect();
    debug_assert_eq!(tasks.len(), s.batch * s.heads * q_tiles);

    let counts = tasks
        .into_par_iter()
        .map(|(bh, i0, o_t, lse_t)| forward_tile(input, cfg, &thr, beta, bh, i0, o_t, lse_t))
        .reduce(Counts::default, |a, b| Counts {
            forgotten: a.forgotten + b.forgotten,
            entries: a.entries + b.entries,
            at_median: a.at_median + b.at_median,
        });

    Forward {
        o,
        lse,
        stats: CallStats {
            threshold: thr,
            forgotten: counts.forgotten,
            entries: counts.entries,
            at_median: counts.at_median,
        },
    }
}

/// Rows `i0 .. i0 + tq` of head `bh`: loop over key tiles keeping the running
/// maximum `mx`, the running normalizer `l` (both over the *effective* scores:
/// `s` when kept, `b` when forgotten) and the unnormalized output `acc`.
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    thr: &Threshold,
    beta: f32,
    bh: usize,
    i0: usize,
    o_t: &mut [f32],
    lse_t: &mut [f32],
) -> Counts {
    let s = input.shape;
    let (d, dv) = (s.d, s.d_v);
    let tq = lse_t.len();
    let b_item = bh / s.heads;
    let q = &input.q[(bh * s.n_q + i0) * d..];
    let p_drop = cfg.effective_dropout();
    let key = philox::key_of(cfg.seed);
    let (z, b) = (thr.z, thr.b);
    let forgetting = z != f32::NEG_INFINITY;

    let mut mx = vec![f32::NEG_INFINITY; tq];
    let mut l = vec![0.0f32; tq];
    let acc = o_t;
    acc.fill(0.0);
    // Buffers sized by the call, not the tile bound: tiny calls are common
    // (bags of 16) and zeroing a full tile per task would dominate them.
    let tk_max = TK.min(s.n_k);
    let mut sc = vec![0.0f32; tq * tk_max];
    let mut rdrop = vec![1.0f32; tk_max];
    let mut fmask = [false; TK];
    let mut counts = Counts::default();

    for j0 in (0..s.n_k).step_by(TK) {
        let tk = TK.min(s.n_k - j0);
        let k = &input.k[(bh * s.n_k + j0) * d..];
        let v = &input.v[(bh * s.n_k + j0) * dv..];
        let valid = valid_slice(input, b_item, j0, tk);
        let sc = &mut sc[..tq * tk];
        score_tile(q, k, tq, tk, d, beta, sc);

        let tile_entries = valid.map_or(tk, |m| m.iter().filter(|&&x| x).count()) as u64;
        for r in 0..tq {
            let row = &mut sc[r * tk..][..tk];
            let fm = &mut fmask[..tk];
            counts.entries += tile_entries;
            // Padded keys become -inf: weight 0, never forgotten, never a tie.
            if let Some(m) = valid {
                for (x, &ok) in row.iter_mut().zip(m) {
                    *x = if ok { *x } else { f32::NEG_INFINITY };
                }
            }
            if let Some(m) = thr.m {
                counts.at_median += row.iter().filter(|&&x| x == m).count() as u64;
            }
            // Effective scores: a forgotten entry takes the value b.
            if forgetting {
                let mut n = 0u32;
                for (x, f) in row.iter_mut().zip(fm.iter_mut()) {
                    let forgotten = *x <= z && *x != f32::NEG_INFINITY;
                    *f = forgotten;
                    n += forgotten as u32;
                    *x = if forgotten { b } else { *x };
                }
                counts.forgotten += n as u64;
            }
            let new_max = mx[r].max(max_of(row));
            if new_max == f32::NEG_INFINITY {
                // Nothing in this row contributes yet: every weight is 0.
                row.fill(0.0);
                continue;
            }
            let rescale = exp_f32(mx[r] - new_max);
            mx[r] = new_max;
            l[r] = l[r] * rescale + exp_in_place(row, new_max);
            for a in &mut acc[r * dv..][..dv] {
                *a *= rescale;
            }

            // The numerator: forgotten entries leave it with drop_forgotten,
            // and dropout scales what stays.
            if forgetting && cfg.drop_forgotten {
                for (x, &f) in row.iter_mut().zip(fm.iter()) {
                    *x = if f { 0.0 } else { *x };
                }
            }
            if p_drop > 0.0 {
                let first = ((bh * s.n_q + i0 + r) * s.n_k + j0) as u64;
                dropout_row(key, first, p_drop, &mut rdrop[..tk]);
                for (x, rd) in row.iter_mut().zip(&rdrop) {
                    *x *= rd;
                }
            }
        }
        sgemm(Trans::No, Trans::No, tq, dv, tk, 1.0, sc, tk, v, dv, 1.0, acc, dv, Par::Seq);
    }

    for r in 0..tq {
        let a = &mut acc[r * dv..][..dv];
        if l[r] > 0.0 {
            let inv = 1.0 / l[r];
            a.iter_mut().for_each(|x| *x *= inv);
            lse_t[r] = mx[r] + l[r].ln();
        } else {
            a.fill(0.0);
            lse_t[r] = f32::NEG_INFINITY;
        }
    }
    counts
}

/// Per-head results of the backward pass that the call combines afterwards.
struct HeadGrad {
    /// Gradient reaching b from this head's rows.
    g_b: f64,
    /// Valid entries `(i, j)` whose score equals the median.
    ties: Vec<(usize, usize)>,
}

/// Backward pass (SPEC section 5): per (batch, head), loop over query tiles
/// and key tiles, recompute the scores and `P = exp(s - lse)`, and accumulate
/// `dV += W^T dO`, `dS = P (r dP - Delta)` with `dP = dO V^T`, `dQ += beta dS K`
/// and `dK += beta dS^T Q`. The center gradient, spread over the scores equal
/// to the median, is added once the whole call's `g_b` is known.
pub fn backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> Grads {
    let s = input.shape;
    let (d, dv) = (s.d, s.d_v);
    let beta = cfg.beta_for(d);
    let thr = fwd.stats.threshold;
    let mut dq = vec![0.0f32; s.q_len()];
    let mut dk = vec![0.0f32; s.k_len()];
    let mut dvv = vec![0.0f32; s.v_len()];

    // Delta_i = dO_i . O_i, the softmax backward's row term.
    let delta: Vec<f32> = d_o
        .par_chunks(dv)
        .zip(fwd.o.par_chunks(dv))
        .map(|(g, o)| g.iter().zip(o).map(|(a, b)| a * b).sum())
        .collect();

    let heads: Vec<HeadGrad> = dq
        .par_chunks_mut(s.n_q * d)
        .zip(dk.par_chunks_mut(s.n_k * d))
        .zip(dvv.par_chunks_mut(s.n_k * dv))
        .enumerate()
        .map(|(bh, ((dq_h, dk_h), dv_h))| {
            backward_head(input, cfg, &thr, fwd, d_o, &delta, bh, dq_h, dk_h, dv_h)
        })
        .collect();

    if thr.center_gradient {
        let g_b: f64 = heads.iter().map(|h| h.g_b).sum();
        let ties: usize = heads.iter().map(|h| h.ties.len()).sum();
        if ties > 0 {
            // d s_ij / d Q_i = beta K_j and d s_ij / d K_j = beta Q_i.
            let share = (g_b / ties as f64) as f32 * beta;
            for (bh, h) in heads.iter().enumerate() {
                for &(i, j) in &h.ties {
                    let qi = &input.q[(bh * s.n_q + i) * d..][..d];
                    let kj = &input.k[(bh * s.n_k + j) * d..][..d];
                    for c in 0..d {
                        dq[(bh * s.n_q + i) * d + c] += share * kj[c];
                        dk[(bh * s.n_k + j) * d + c] += share * qi[c];
                    }
                }
            }
        }
    }
    Grads { dq, dk, dv: dvv }
}

#[allow(clippy::too_many_arguments)]
fn backward_head(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    thr: &Threshold,
    fwd: &Forward,
    d_o: &[f32],
    delta: &[f32],
    bh: usize,
    dq_h: &mut [f32],
    dk_h: &mut [f32],
    dv_h: &mut [f32],
) -> HeadGrad {
    let s = input.shape;
    let (d, dv) = (s.d, s.d_v);
    let beta = cfg.beta_for(d);
    let p_drop = cfg.effective_dropout();
    let key = philox::key_of(cfg.seed);
    let w_forgotten = if cfg.drop_forgotten { 0.0 } else { 1.0 };
    let b_item = bh / s.heads;
    let q_h = &input.q[bh * s.n_q * d..][..s.n_q * d];
    let k_h = &input.k[bh * s.n_k * d..][..s.n_k * d];
    let v_h = &input.v[bh * s.n_k * dv..][..s.n_k * dv];
    let do_h = &d_o[bh * s.n_q * dv..][..s.n_q * dv];

    let (tq_max, tk_max) = (TQ.min(s.n_q), TK.min(s.n_k));
    let mut sc = vec![0.0f32; tq_max * tk_max];
    let mut w = vec![0.0f32; tq_max * tk_max];
    let mut dp = vec![0.0f32; tq_max * tk_max];
    let mut rdrop = vec![1.0f32; tk_max];
    let mut out = HeadGrad { g_b: 0.0, ties: Vec::new() };

    for i0 in (0..s.n_q).step_by(TQ) {
        let tq = TQ.min(s.n_q - i0);
        let q = &q_h[i0 * d..];
        let g_o = &do_h[i0 * dv..];
        for j0 in (0..s.n_k).step_by(TK) {
            let tk = TK.min(s.n_k - j0);
            let k = &k_h[j0 * d..];
            let v = &v_h[j0 * dv..];
            let valid = valid_slice(input, b_item, j0, tk);
            let (sc, w, dp) = (&mut sc[..tq * tk], &mut w[..tq * tk], &mut dp[..tq * tk]);
            score_tile(q, k, tq, tk, d, beta, sc);
            // dP = dO V^T, needed for every entry before dS.
            sgemm(Trans::No, Trans::Yes, tq, tk, dv, 1.0, g_o, dv, v, dv, 0.0, dp, tk, Par::Seq);

            for r in 0..tq {
                let row_idx = bh * s.n_q + i0 + r;
                let lse = fwd.lse[row_idx];
                let dl = delta[row_idx];
                let (srow, wrow, dprow) =
                    (&mut sc[r * tk..][..tk], &mut w[r * tk..][..tk], &mut dp[r * tk..][..tk]);
                if lse == f32::NEG_INFINITY {
                    // An empty row passes no gradient anywhere.
                    wrow.fill(0.0);
                    srow.fill(0.0);
                    continue;
                }
                let rd = &mut rdrop[..tk];
                if p_drop > 0.0 {
                    dropout_row(key, (row_idx * s.n_k + j0) as u64, p_drop, rd);
                } else {
                    rd.fill(1.0);
                }
                if let Some(m) = valid {
                    for (x, &ok) in srow.iter_mut().zip(m) {
                        *x = if ok { *x } else { f32::NEG_INFINITY };
                    }
                }
                if let (true, Some(m)) = (thr.center_gradient, thr.m) {
                    for (c, _) in srow.iter().enumerate().filter(|(_, x)| **x == m) {
                        out.ties.push((i0 + r, j0 + c));
                    }
                }
                // Kept: W = P r and dS = P (r dP - Delta). Forgotten: no
                // gradient through the mask, W = w exp(b - lse) r, and b
                // collects the entry's share of the score gradient.
                let p_b = exp_f32(thr.b - lse);
                let mut g_b = 0.0f32;
                for c in 0..tk {
                    let x = srow[c];
                    let forgotten = x <= thr.z && x != f32::NEG_INFINITY;
                    let p = exp_f32(x - lse);
                    let rd = rd[c];
                    wrow[c] = if forgotten { w_forgotten * p_b * rd } else { p * rd };
                    let gf = p_b * (w_forgotten * rd * dprow[c] - dl);
                    g_b += if forgotten { gf } else { 0.0 };
                    srow[c] = if forgotten { 0.0 } else { p * (rd * dprow[c] - dl) };
                }
                out.g_b += g_b as f64;
            }

            // dV_j += sum_i W_ij dO_i; dQ += beta dS K; dK += beta dS^T Q.
            let dv_t = &mut dv_h[j0 * dv..][..tk * dv];
            sgemm(Trans::Yes, Trans::No, tk, dv, tq, 1.0, w, tk, g_o, dv, 1.0, dv_t, dv, Par::Seq);
            let dq_t = &mut dq_h[i0 * d..][..tq * d];
            sgemm(Trans::No, Trans::No, tq, d, tk, beta, sc, tk, k, d, 1.0, dq_t, d, Par::Seq);
            let dk_t = &mut dk_h[j0 * d..][..tk * d];
            sgemm(Trans::Yes, Trans::No, tk, d, tq, beta, sc, tk, q, d, 1.0, dk_t, d, Par::Seq);
        }
    }
    out
}
