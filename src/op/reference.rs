//! The reference backend: the oracle every other backend is tested against.
//!
//! Written to be obviously right, not fast: it works in f64 throughout, keeps
//! every score of the call in memory, finds the median with
//! `select_nth_unstable`, and follows SPEC sections 3 to 5 line by line. Its
//! f64 entry points ([`forward64`], [`backward64`]) let gradient checks take
//! finite differences without f32 rounding in the way.

use super::{
    AttentionConfig, AttentionInput, Bias, CallStats, Center, Forgetting, Forward, Grads, Shape,
    Threshold, philox,
};

/// The tensors of a call in f64.
#[derive(Clone, Copy, Debug)]
pub struct Input64<'a> {
    pub q: &'a [f64],
    pub k: &'a [f64],
    pub v: &'a [f64],
    pub valid: Option<&'a [bool]>,
    pub shape: Shape,
}

impl Input64<'_> {
    fn is_valid(&self, b: usize, j: usize) -> bool {
        self.valid.is_none_or(|m| m[b * self.shape.n_k + j])
    }
}

/// A resolved threshold in f64 (see [`Threshold`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold64 {
    pub z: f64,
    pub b: f64,
    pub m: Option<f64>,
    pub center_gradient: bool,
}

impl Threshold64 {
    /// Widens an f32 threshold.
    pub fn from_f32(t: &Threshold) -> Self {
        Threshold64 {
            z: t.z as f64,
            b: t.b as f64,
            m: t.m.map(|m| m as f64),
            center_gradient: t.center_gradient,
        }
    }

    /// Resolves the threshold entirely in f64 from the f64 median, so that a
    /// perturbation of the median's score moves z (and b = z) with it.
    pub fn resolve(cfg: &AttentionConfig, median: Option<f64>) -> Self {
        match cfg.forgetting {
            Forgetting::Pfu(p) => {
                let (center, m) = match p.center {
                    Center::Fixed(c) => (c as f64, None),
                    Center::Median => (median.unwrap_or(0.0), median),
                };
                let z = if cfg.training {
                    center + p.noise_std as f64 * philox::threshold_eps(cfg.seed) as f64
                } else {
                    center
                };
                let b = match p.bias {
                    Bias::Threshold => z,
                    Bias::Fixed(b) => b as f64,
                    Bias::NegInf => f64::NEG_INFINITY,
                };
                Threshold64 {
                    z,
                    b,
                    m,
                    center_gradient: p.center_gradient
                        && m.is_some()
                        && matches!(p.bias, Bias::Threshold),
                }
            }
            _ => Threshold64::from_f32(&Threshold::resolve(cfg, None)),
        }
    }
}

/// Output of [`forward64`].
#[derive(Clone, Debug)]
pub struct Forward64 {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
    pub threshold: Threshold64,
    pub forgotten: u64,
    pub entries: u64,
    pub at_median: u64,
}

/// All scores of the call, `[((bh * n_q) + i) * n_k + j]`; padded keys hold
/// NaN, which no comparison selects.
fn scores(x: &Input64, beta: f64) -> Vec<f64> {
    let s = x.shape;
    let mut out = vec![f64::NAN; s.rows() * s.n_k];
    for bh in 0..s.batch * s.heads {
        for i in 0..s.n_q {
            let q = &x.q[(bh * s.n_q + i) * s.d..][..s.d];
            for j in (0..s.n_k).filter(|&j| x.is_valid(bh / s.heads, j)) {
                let k = &x.k[(bh * s.n_k + j) * s.d..][..s.d];
                let dot: f64 = q.iter().zip(k).map(|(a, c)| a * c).sum();
                out[(bh * s.n_q + i) * s.n_k + j] = beta * dot;
            }
        }
    }
    out
}

/// The lower median (rank `floor((n - 1) / 2)`) of the non-NaN entries.
pub fn lower_median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    let rank = (v.len() - 1) / 2;
    let (_, m, _) = v.select_nth_unstable_by(rank, |a, b| a.total_cmp(b));
    Some(*m)
}

/// The median of the call's valid scores, when its forgetting function needs one.
pub fn call_median(x: &Input64, cfg: &AttentionConfig) -> Option<f64> {
    if !cfg.forgetting.needs_median() {
        return None;
    }
    lower_median(&scores(x, cfg.beta_for(x.shape.d) as f64))
}

/// Dropout scale of entry `e`: `keep / (1 - p)`, 1 without dropout.
fn dropout_scale(cfg: &AttentionConfig, e: usize) -> f64 {
    let p = cfg.effective_dropout();
    if p == 0.0 {
        return 1.0;
    }
    if philox::dropout_keep(philox::key_of(cfg.seed), e as u64, p) {
        1.0 / (1.0 - p as f64)
    } else {
        0.0
    }
}

/// One row: `lse` and, per key, whether it is forgotten and the weight of its
/// value in the numerator before dropout (`exp(s - lse)` kept; `exp(b - lse)`
/// or 0 forgotten; 0 padded).
struct Row {
    lse: f64,
    weight: Vec<f64>,
    forgotten: Vec<bool>,
}

fn row(sc: &[f64], valid: &[bool], thr: &Threshold64, drop: bool) -> Row {
    let forgotten: Vec<bool> = sc.iter().zip(valid).map(|(&s, &v)| v && s <= thr.z).collect();
    let kept = |j: usize| valid[j] && !forgotten[j];
    let c = forgotten.iter().filter(|&&f| f).count();
    // Stable: subtract the largest term of the normalizer, the largest kept
    // score or b when an entry is forgotten.
    let mut max =
        (0..sc.len()).filter(|&j| kept(j)).map(|j| sc[j]).fold(f64::NEG_INFINITY, f64::max);
    if c > 0 {
        max = max.max(thr.b);
    }
    if max == f64::NEG_INFINITY {
        return Row { lse: f64::NEG_INFINITY, weight: vec![0.0; sc.len()], forgotten };
    }
    let den = (0..sc.len()).filter(|&j| kept(j)).map(|j| (sc[j] - max).exp()).sum::<f64>()
        + c as f64 * (thr.b - max).exp();
    let lse = max + den.ln();
    let weight = (0..sc.len())
        .map(|j| match (valid[j], forgotten[j], drop) {
            (false, _, _) => 0.0,
            (true, false, _) => (sc[j] - lse).exp(),
            (true, true, true) => 0.0,
            (true, true, false) => (thr.b - lse).exp(),
        })
        .collect();
    Row { lse, weight, forgotten }
}

fn valid_row(x: &Input64, b: usize) -> Vec<bool> {
    (0..x.shape.n_k).map(|j| x.is_valid(b, j)).collect()
}

/// Forward pass in f64 at threshold `thr`, or at the call's own threshold
/// (median found in f64) when `thr` is `None`.
pub fn forward64(x: &Input64, cfg: &AttentionConfig, thr: Option<Threshold64>) -> Forward64 {
    let s = x.shape;
    let all = scores(x, cfg.beta_for(s.d) as f64);
    let thr = thr.unwrap_or_else(|| {
        let m = if cfg.forgetting.needs_median() { lower_median(&all) } else { None };
        Threshold64::resolve(cfg, m)
    });
    let mut o = vec![0.0; s.o_len()];
    let mut lse = vec![0.0; s.rows()];
    let (mut forgotten, mut entries, mut at_median) = (0, 0, 0);
    for bh in 0..s.batch * s.heads {
        let valid = valid_row(x, bh / s.heads);
        for i in 0..s.n_q {
            let r = bh * s.n_q + i;
            let sc = &all[r * s.n_k..][..s.n_k];
            let w = row(sc, &valid, &thr, cfg.drop_forgotten);
            lse[r] = w.lse;
            forgotten += w.forgotten.iter().filter(|&&f| f).count() as u64;
            entries += valid.iter().filter(|&&v| v).count() as u64;
            at_median += thr.m.map_or(0, |m| sc.iter().filter(|&&x| x == m).count() as u64);
            let o_i = &mut o[r * s.d_v..][..s.d_v];
            for j in 0..s.n_k {
                let wj = w.weight[j] * dropout_scale(cfg, r * s.n_k + j);
                for (a, &v) in o_i.iter_mut().zip(&x.v[(bh * s.n_k + j) * s.d_v..][..s.d_v]) {
                    *a += wj * v;
                }
            }
        }
    }
    Forward64 { o, lse, threshold: thr, forgotten, entries, at_median }
}

/// Gradients in f64.
#[derive(Clone, Debug)]
pub struct Grads64 {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
}

/// Backward pass in f64 at threshold `thr` (SPEC section 5).
pub fn backward64(x: &Input64, cfg: &AttentionConfig, thr: &Threshold64, d_o: &[f64]) -> Grads64 {
    let s = x.shape;
    let beta = cfg.beta_for(s.d) as f64;
    let all = scores(x, beta);
    let mut ds = vec![0.0; all.len()];
    let mut dv = vec![0.0; s.v_len()];
    let dot = |a: &[f64], c: &[f64]| -> f64 { a.iter().zip(c).map(|(x, y)| x * y).sum() };
    // Gradient reaching b, summed over the call: b is one number for all rows.
    let mut g_b = 0.0;
    let w_forgotten = if cfg.drop_forgotten { 0.0 } else { 1.0 };

    for bh in 0..s.batch * s.heads {
        let valid = valid_row(x, bh / s.heads);
        let v_of = |j: usize| &x.v[(bh * s.n_k + j) * s.d_v..][..s.d_v];
        for i in 0..s.n_q {
            let r = bh * s.n_q + i;
            let sc = &all[r * s.n_k..][..s.n_k];
            let w = row(sc, &valid, thr, cfg.drop_forgotten);
            if w.lse == f64::NEG_INFINITY {
                continue;
            }
            let d_oi = &d_o[r * s.d_v..][..s.d_v];
            let rs: Vec<f64> = (0..s.n_k).map(|j| dropout_scale(cfg, r * s.n_k + j)).collect();

            // Delta_i = dO_i . O_i with O_i recomputed here.
            let mut o_i = vec![0.0; s.d_v];
            for (j, (wj, rj)) in w.weight.iter().zip(&rs).enumerate() {
                for (a, &v) in o_i.iter_mut().zip(v_of(j)) {
                    *a += wj * rj * v;
                }
            }
            let delta = dot(d_oi, &o_i);

            let p_b = (thr.b - w.lse).exp();
            for j in (0..s.n_k).filter(|&j| valid[j]) {
                let dov = dot(d_oi, v_of(j));
                let wj = w.weight[j] * rs[j];
                for (a, &g) in dv[(bh * s.n_k + j) * s.d_v..][..s.d_v].iter_mut().zip(d_oi) {
                    *a += wj * g;
                }
                if w.forgotten[j] {
                    // No gradient through the mask; b collects the entry's share.
                    g_b += p_b * (w_forgotten * rs[j] * dov - delta);
                } else {
                    ds[r * s.n_k + j] = (sc[j] - w.lse).exp() * (rs[j] * dov - delta);
                }
            }
        }
    }

    // The median's backward splits the gradient evenly over its ties.
    if let (true, Some(m)) = (thr.center_gradient, thr.m) {
        let ties = all.iter().filter(|&&x| x == m).count();
        if ties > 0 {
            let share = g_b / ties as f64;
            for (g, _) in ds.iter_mut().zip(&all).filter(|(_, x)| **x == m) {
                *g += share;
            }
        }
    }

    let mut dq = vec![0.0; s.q_len()];
    let mut dk = vec![0.0; s.k_len()];
    for bh in 0..s.batch * s.heads {
        for i in 0..s.n_q {
            let r = bh * s.n_q + i;
            for j in 0..s.n_k {
                let g = beta * ds[r * s.n_k + j];
                for d in 0..s.d {
                    dq[r * s.d + d] += g * x.k[(bh * s.n_k + j) * s.d + d];
                    dk[(bh * s.n_k + j) * s.d + d] += g * x.q[r * s.d + d];
                }
            }
        }
    }
    Grads64 { dq, dk, dv }
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn narrow(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// The f32 threshold of the call as every backend resolves it, with the
/// median taken from f64 scores; ties are then detected against the f64 median.
fn call_threshold(x: &Input64, cfg: &AttentionConfig) -> Threshold64 {
    let m = call_median(x, cfg);
    let t32 = Threshold::resolve(cfg, m.map(|m| m as f32));
    Threshold64 { m, ..Threshold64::from_f32(&t32) }
}

/// Forward pass with f32 tensors (the public op's reference backend).
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Forward {
    let (q, k, v) = (widen(input.q), widen(input.k), widen(input.v));
    let x = Input64 { q: &q, k: &k, v: &v, valid: input.valid, shape: input.shape };
    let thr = call_threshold(&x, cfg);
    to_forward(forward64(&x, cfg, Some(thr)))
}

/// Forward pass at a given f32 threshold: evaluates the oracle at the `z` that
/// another backend reports (SPEC section 7).
pub fn forward_at(input: &AttentionInput, cfg: &AttentionConfig, thr: Threshold) -> Forward {
    let (q, k, v) = (widen(input.q), widen(input.k), widen(input.v));
    let x = Input64 { q: &q, k: &k, v: &v, valid: input.valid, shape: input.shape };
    to_forward(forward64(&x, cfg, Some(Threshold64::from_f32(&thr))))
}

fn to_forward(f: Forward64) -> Forward {
    let t = f.threshold;
    Forward {
        o: narrow(&f.o),
        lse: narrow(&f.lse),
        stats: CallStats {
            threshold: Threshold {
                z: t.z as f32,
                b: t.b as f32,
                m: t.m.map(|m| m as f32),
                center_gradient: t.center_gradient,
            },
            forgotten: f.forgotten,
            entries: f.entries,
            at_median: f.at_median,
        },
    }
}

/// Backward pass with f32 tensors at the threshold recorded in `fwd`; `lse`
/// and `O` are recomputed in f64 rather than read from `fwd`.
pub fn backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> Grads {
    let (q, k, v) = (widen(input.q), widen(input.k), widen(input.v));
    let x = Input64 { q: &q, k: &k, v: &v, valid: input.valid, shape: input.shape };
    let mut thr = Threshold64::from_f32(&fwd.stats.threshold);
    if let Some(m32) = fwd.stats.threshold.m {
        // Ties are found against the f64 median, as in the forward pass, as
        // long as it is the median the forward pass reported.
        if let Some(m64) = call_median(&x, cfg).filter(|&m| m as f32 == m32) {
            thr.m = Some(m64);
        }
    }
    let g = backward64(&x, cfg, &thr, &widen(d_o));
    Grads { dq: narrow(&g.dq), dk: narrow(&g.dk), dv: narrow(&g.dv) }
}
