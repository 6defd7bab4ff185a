//! The unfused CPU baseline: the authors' formulation done the ordinary way.
//!
//! Like the authors' PyTorch code in eager mode it materializes the whole
//! `[B, H, Nq, Nk]` score tensor, takes the median over a copy of it, applies
//! the forgetting function and the softmax elementwise, and multiplies by V;
//! the backward materializes P, dP and dS the same way. It exists to be
//! measured against the fused paths, and as a second oracle. Memory: several
//! N x N buffers per call.

use rayon::prelude::*;

use super::fast::exp_f32;
use super::{AttentionConfig, AttentionInput, CallStats, Forward, Grads, Threshold, philox};
use crate::gemm::{Par, Trans, sgemm};

/// Every score of the call, `[B*H, Nq, Nk]`, one product per head.
fn scores(input: &AttentionInput, beta: f32) -> Vec<f32> {
    let s = input.shape;
    let mut out = vec![0.0f32; s.rows() * s.n_k];
    out.par_chunks_mut((s.n_q * s.n_k).max(1)).enumerate().for_each(|(bh, o)| {
        let q = &input.q[bh * s.n_q * s.d..];
        let k = &input.k[bh * s.n_k * s.d..];
        sgemm(
            Trans::No,
            Trans::Yes,
            s.n_q,
            s.n_k,
            s.d,
            beta,
            q,
            s.d,
            k,
            s.d,
            0.0,
            o,
            s.n_k,
            Par::Seq,
        );
    });
    out
}

/// The probabilities `P` (kept entries) and the numerator weights `W`
/// (dropout applied; forgotten entries weighted `exp(b - lse)` unless dropped)
/// of the whole call, with the threshold and counts.
struct Weights {
    p: Vec<f32>,
    w: Vec<f32>,
    lse: Vec<f32>,
    stats: CallStats,
    sc: Vec<f32>,
}

fn weights(input: &AttentionInput, cfg: &AttentionConfig, thr: Option<Threshold>) -> Weights {
    let s = input.shape;
    let beta = cfg.beta_for(s.d);
    let sc = scores(input, beta);
    let thr = thr.unwrap_or_else(|| {
        let m = if cfg.forgetting.needs_median() {
            let mut valid: Vec<f32> = sc
                .chunks(s.n_k.max(1))
                .enumerate()
                .flat_map(|(r, row)| {
                    let b = r / (s.heads * s.n_q);
                    row.iter()
                        .enumerate()
                        .filter(move |(j, _)| input.is_valid(b, *j))
                        .map(|(_, x)| *x)
                })
                .collect();
            if valid.is_empty() {
                None
            } else {
                let rank = (valid.len() - 1) / 2;
                Some(*valid.select_nth_unstable_by(rank, |a, b| a.total_cmp(b)).1)
            }
        } else {
            None
        };
        Threshold::resolve(cfg, m)
    });
    let p_drop = cfg.effective_dropout();
    let key = philox::key_of(cfg.seed);
    let mut p = vec![0.0f32; sc.len()];
    let mut w = vec![0.0f32; sc.len()];
    let mut lse = vec![0.0f32; s.rows()];
    let n_k = s.n_k.max(1);
    let counts: (u64, u64, u64) = p
        .par_chunks_mut(n_k)
        .zip(w.par_chunks_mut(n_k))
        .zip(lse.par_iter_mut())
        .enumerate()
        .map(|(r, ((p_r, w_r), lse_r))| {
            let b = r / (s.heads * s.n_q);
            let row = &sc[r * s.n_k..][..s.n_k];
            let valid = |j: usize| input.is_valid(b, j);
            let forgotten = |j: usize| valid(j) && row[j] <= thr.z;
            let (mut nf, mut ne, mut nm) = (0, 0, 0);
            let mut max = f32::NEG_INFINITY;
            for j in (0..s.n_k).filter(|&j| valid(j)) {
                ne += 1;
                nm += u64::from(thr.m == Some(row[j]));
                if forgotten(j) {
                    nf += 1;
                    max = max.max(thr.b);
                } else {
                    max = max.max(row[j]);
                }
            }
            if max == f32::NEG_INFINITY {
                *lse_r = f32::NEG_INFINITY;
                return (nf, ne, nm);
            }
            let mut den = 0.0f32;
            for j in (0..s.n_k).filter(|&j| valid(j)) {
                den += exp_f32(if forgotten(j) { thr.b } else { row[j] } - max);
            }
            *lse_r = max + den.ln();
            for j in (0..s.n_k).filter(|&j| valid(j)) {
                let e = (r * s.n_k + j) as u64;
                let rd = philox::dropout_scale(key, e, p_drop);
                if forgotten(j) {
                    if !cfg.drop_forgotten {
                        w_r[j] = exp_f32(thr.b - *lse_r) * rd;
                    }
                } else {
                    p_r[j] = exp_f32(row[j] - *lse_r);
                    w_r[j] = p_r[j] * rd;
                }
            }
            (nf, ne, nm)
        })
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    Weights {
        p,
        w,
        lse,
        stats: CallStats {
            threshold: thr,
            forgotten: counts.0,
            entries: counts.1,
            at_median: counts.2,
        },
        sc,
    }
}

/// Forward pass: `O = W V` per head.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Forward {
    let s = input.shape;
    let wt = weights(input, cfg, None);
    let mut o = vec![0.0f32; s.o_len()];
    o.par_chunks_mut(s.n_q * s.d_v).enumerate().for_each(|(bh, o_h)| {
        let w = &wt.w[bh * s.n_q * s.n_k..];
        let v = &input.v[bh * s.n_k * s.d_v..];
        sgemm(
            Trans::No,
            Trans::No,
            s.n_q,
            s.d_v,
            s.n_k,
            1.0,
            w,
            s.n_k,
            v,
            s.d_v,
            0.0,
            o_h,
            s.d_v,
            Par::Seq,
        );
    });
    Forward { o, lse: wt.lse, stats: wt.stats }
}

/// Backward pass with every N x N intermediate materialized.
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
    let wt = weights(input, cfg, Some(thr));
    let w_forgotten = if cfg.drop_forgotten { 0.0 } else { 1.0 };
    let p_drop = cfg.effective_dropout();
    let key = philox::key_of(cfg.seed);
    let nn = s.n_q * s.n_k;

    // dP = dO V^T for every head.
    let mut dp = vec![0.0f32; s.rows() * s.n_k];
    dp.par_chunks_mut(nn.max(1)).enumerate().for_each(|(bh, dp_h)| {
        let g = &d_o[bh * s.n_q * dv..];
        let v = &input.v[bh * s.n_k * dv..];
        sgemm(
            Trans::No,
            Trans::Yes,
            s.n_q,
            s.n_k,
            dv,
            1.0,
            g,
            dv,
            v,
            dv,
            0.0,
            dp_h,
            s.n_k,
            Par::Seq,
        );
    });

    // dS = P (r dP - Delta); forgotten entries feed g_b instead.
    let mut ds = dp;
    let g_b: f64 = ds
        .par_chunks_mut(s.n_k.max(1))
        .enumerate()
        .map(|(r, row)| {
            let b = r / (s.heads * s.n_q);
            let delta: f32 =
                d_o[r * dv..][..dv].iter().zip(&fwd.o[r * dv..][..dv]).map(|(a, c)| a * c).sum();
            let lse = wt.lse[r];
            let mut g_b = 0.0f64;
            for (j, x) in row.iter_mut().enumerate() {
                let e = r * s.n_k + j;
                if !input.is_valid(b, j) || lse == f32::NEG_INFINITY {
                    *x = 0.0;
                    continue;
                }
                let rd = philox::dropout_scale(key, e as u64, p_drop);
                if wt.sc[e] <= thr.z {
                    g_b += (exp_f32(thr.b - lse) * (w_forgotten * rd * *x - delta)) as f64;
                    *x = 0.0;
                } else {
                    *x = wt.p[e] * (rd * *x - delta);
                }
            }
            g_b
        })
        .sum();

    if let (true, Some(m)) = (thr.center_gradient, thr.m) {
        let ties = wt.stats.at_median;
        if ties > 0 {
            let share = (g_b / ties as f64) as f32;
            for (g, (r, x)) in ds.iter_mut().zip(wt.sc.iter().enumerate()) {
                let b = r / (s.heads * nn.max(1));
                if *x == m && input.is_valid(b, r % s.n_k.max(1)) {
                    *g += share;
                }
            }
        }
    }

    let mut dq = vec![0.0f32; s.q_len()];
    let mut dk = vec![0.0f32; s.k_len()];
    let mut dvv = vec![0.0f32; s.v_len()];
    dq.par_chunks_mut(s.n_q * d)
        .zip(dk.par_chunks_mut(s.n_k * d))
        .zip(dvv.par_chunks_mut(s.n_k * dv))
        .enumerate()
        .for_each(|(bh, ((dq_h, dk_h), dv_h))| {
            let ds_h = &ds[bh * nn..];
            let w_h = &wt.w[bh * nn..];
            let q = &input.q[bh * s.n_q * d..];
            let k = &input.k[bh * s.n_k * d..];
            let g = &d_o[bh * s.n_q * dv..];
            sgemm(
                Trans::Yes,
                Trans::No,
                s.n_k,
                dv,
                s.n_q,
                1.0,
                w_h,
                s.n_k,
                g,
                dv,
                0.0,
                dv_h,
                dv,
                Par::Seq,
            );
            sgemm(
                Trans::No,
                Trans::No,
                s.n_q,
                d,
                s.n_k,
                beta,
                ds_h,
                s.n_k,
                k,
                d,
                0.0,
                dq_h,
                d,
                Par::Seq,
            );
            sgemm(
                Trans::Yes,
                Trans::No,
                s.n_k,
                d,
                s.n_q,
                beta,
                ds_h,
                s.n_k,
                q,
                d,
                0.0,
                dk_h,
                d,
                Par::Seq,
            );
        });
    Grads { dq, dk, dv: dvv }
}
