//! Helpers shared by the op tests: seeded inputs, the option matrix, errors.
#![allow(dead_code)]

use lwpf::op::{AttentionConfig, AttentionInput, Bias, Center, Forgetting, Pfu, Shape};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A fresh seed per run (printed, so a failure can be replayed with
/// `LWPF_TEST_SEED`), unless one is given.
pub fn run_seed(test: &str) -> u64 {
    let seed =
        std::env::var("LWPF_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: LWPF_TEST_SEED={seed}");
    seed
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Small dyadic rationals (multiples of 1/8 in [-1, 1]): with a power-of-two
/// beta every score is exact in f32 and f64, so all backends see identical
/// scores, medians and kept/forgotten decisions (SPEC section 7).
pub fn dyadic(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-8i32..=8) as f32 / 8.0).collect()
}

/// Continuous values in [-1, 1).
pub fn uniform(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A padding mask with at least one valid key per batch item when `n_k > 0`,
/// and one batch item fully padded when `b > 1` and `all_padded_item`.
pub fn mask(rng: &mut StdRng, b: usize, n_k: usize, all_padded_item: bool) -> Vec<bool> {
    let mut m: Vec<bool> = (0..b * n_k).map(|_| rng.random_range(0..4) != 0).collect();
    for bi in 0..b {
        m[bi * n_k] = true;
    }
    if all_padded_item && b > 1 {
        m[(b - 1) * n_k..].fill(false);
    }
    m
}

/// `||x - ref|| / ||ref||` in f64 (the absolute error when `ref` is zero);
/// NaN never passes.
pub fn rel_l2(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len());
    assert!(x.iter().all(|v| v.is_finite()), "non-finite output");
    let num: f64 = x.iter().zip(reference).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// Relative L2 error of a score gradient (dQ or dK) whose denominator is
/// floored at the size of f32 round-off in the terms it sums.
///
/// `dQ_i = beta * sum_j P_ij (r_ij dP_ij - Delta_i) K_j` subtracts terms of
/// size up to `term = beta * |K|max * r_max * |dP|max` (and likewise for dK
/// with Q). When a row keeps a single key those terms cancel exactly, and the
/// reference is zero up to f64 round-off while an f32 backend keeps residues of
/// `eps_f32 * term`. A residue of that size must pass at relative tolerance
/// `tol`, so the reference norm is floored at `sqrt(n) * eps_f32 * term / tol`.
pub fn rel_l2_grad(x: &[f32], reference: &[f32], term: f64, tol: f64) -> f64 {
    let num: f64 = x.iter().zip(reference).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    assert!(x.iter().all(|v| v.is_finite()), "non-finite output");
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    let floor = (x.len() as f64).sqrt() * f32::EPSILON as f64 * term / tol;
    (num.sqrt()) / den.sqrt().max(floor).max(f64::MIN_POSITIVE)
}

/// Largest L2 norm of the rows of width `width`.
pub fn max_row_norm(x: &[f32], width: usize) -> f64 {
    x.chunks(width.max(1))
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .fold(0.0, f64::max)
}

/// The `term` of [`rel_l2_grad`] for dQ (`other` = K) or dK (`other` = Q):
/// `beta * |other row|max * r_max * |dP|max`, with `|dP_ij| <= |dO_i| |V_j|`.
pub fn score_grad_term(
    beta: f64,
    other: &[f32],
    d: usize,
    d_o: &[f32],
    v: &[f32],
    d_v: usize,
    dropout: f32,
) -> f64 {
    let r_max = 1.0 / (1.0 - dropout as f64);
    beta * max_row_norm(other, d) * r_max * max_row_norm(d_o, d_v) * max_row_norm(v, d_v)
}

/// One named case of the option matrix.
pub struct Case {
    pub name: String,
    pub cfg: AttentionConfig,
}

/// Every forgetting variant x bias kind x center_gradient x drop_forgotten,
/// with and without dropout, training and evaluation.
pub fn option_matrix(beta: f32, seed: u64) -> Vec<Case> {
    let mut out = Vec::new();
    let mut variants: Vec<(String, Forgetting)> =
        vec![("none".into(), Forgetting::None), ("relu".into(), Forgetting::Relu)];
    for (cn, center) in [("median", Center::Median), ("fixed", Center::Fixed(0.125))] {
        for (bn, bias) in
            [("b=z", Bias::Threshold), ("b=fixed", Bias::Fixed(-0.25)), ("b=-inf", Bias::NegInf)]
        {
            for cg in [true, false] {
                if cg && !(matches!(center, Center::Median) && matches!(bias, Bias::Threshold)) {
                    continue;
                }
                variants.push((
                    format!("pfu {cn} {bn} cg={cg}"),
                    Forgetting::Pfu(Pfu { center, noise_std: 0.5, bias, center_gradient: cg }),
                ));
            }
        }
    }
    for (vn, f) in variants {
        for drop in [true, false] {
            for (dn, training, dropout) in
                [("eval", false, 0.0), ("train", true, 0.0), ("train+dropout", true, 0.3)]
            {
                out.push(Case {
                    name: format!("{vn} drop_forgotten={drop} {dn}"),
                    cfg: AttentionConfig {
                        beta: Some(beta),
                        forgetting: f,
                        drop_forgotten: drop,
                        dropout,
                        seed,
                        training,
                        ..Default::default()
                    },
                });
            }
        }
    }
    out
}

/// The cases of `option_matrix(beta, seed)` named in `names`, all of them.
pub fn cases_named(beta: f32, seed: u64, names: &[&str]) -> Vec<Case> {
    let cases: Vec<Case> =
        option_matrix(beta, seed).into_iter().filter(|c| names.contains(&&*c.name)).collect();
    assert_eq!(cases.len(), names.len(), "every named case is in the option matrix");
    cases
}

/// The options the bf16 and fp16 kernels are checked on: no forgetting,
/// relu with dropout, pfu with the median and its center gradient (forgotten
/// entries dropped, in training and in evaluation, and kept with dropout),
/// and a fixed centre with b = -inf. In evaluation z is the median itself,
/// so about half the scores are forgotten and g_b is at work whatever the
/// training draw; in training, on small D, z may fall past every score.
pub const PRECISION_CASES: [&str; 6] = [
    "none drop_forgotten=true eval",
    "relu drop_forgotten=true train+dropout",
    "pfu median b=z cg=true drop_forgotten=true eval",
    "pfu median b=z cg=true drop_forgotten=true train",
    "pfu median b=z cg=true drop_forgotten=false train+dropout",
    "pfu fixed b=-inf cg=false drop_forgotten=false eval",
];

/// Shapes of the bf16 and fp16 checks, ragged against the 32 x 32 tiles and
/// the tensor cores' 8 columns of d: D = 4 (half a step), D = 36 (past one
/// staged chunk of 32, half a step past it), Dv != D.
pub fn precision_shapes() -> Vec<Shape> {
    vec![
        Shape::new(2, 3, 5, 7, 4),
        Shape { d_v: 3, ..Shape::new(2, 1, 35, 67, 4) },
        Shape { d_v: 9, ..Shape::new(1, 1, 40, 20, 36) },
    ]
}

/// Shapes that are ragged against every tile (TQ = 64, TK = 128).
pub fn ragged_shapes() -> Vec<Shape> {
    vec![
        Shape::new(1, 1, 1, 1, 4),
        Shape::new(2, 3, 5, 7, 4),
        Shape::new(1, 2, 3, 9, 16),
        Shape { d_v: 3, ..Shape::new(2, 1, 70, 131, 4) },
        Shape::new(1, 1, 130, 20, 16),
    ]
}

/// Whether the CUDA backend can run the kernels here (a build with the
/// `cuda` feature, a driver and a device); prints why not, so that a
/// skipped GPU test says so.
pub fn gpu(test: &str) -> bool {
    #[cfg(feature = "cuda")]
    let why = match lwpf::op::kernels::cuda::available() {
        Ok(()) => return true,
        Err(e) => e.to_string(),
    };
    #[cfg(not(feature = "cuda"))]
    let why = "built without the `cuda` feature".to_string();
    eprintln!("{test}: skipped, no GPU backend ({why})");
    false
}

/// One call's inputs drawn for the backend checks: dyadic Q and K (their
/// scores are exact in every backend, so statistics compare exactly),
/// uniform V and dO, and a key padding mask with one batch item wholly
/// padded.
pub struct Drawn {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub d_o: Vec<f32>,
    pub mask: Vec<bool>,
    pub shape: Shape,
}

impl Drawn {
    pub fn new(r: &mut StdRng, shape: Shape) -> Self {
        Drawn {
            q: dyadic(r, shape.q_len()),
            k: dyadic(r, shape.k_len()),
            v: uniform(r, shape.v_len()),
            d_o: uniform(r, shape.o_len()),
            mask: mask(r, shape.batch, shape.n_k, true),
            shape,
        }
    }

    /// The call, with the mask or without.
    pub fn input(&self, use_mask: bool) -> AttentionInput<'_> {
        AttentionInput {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            valid: use_mask.then_some(&self.mask[..]),
            shape: self.shape,
        }
    }
}

/// lse against the reference's: equal where a row is empty (-inf), else
/// within `tol` relative to 1 + |lse|.
pub fn compare_lse(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: lse length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if *w == f32::NEG_INFINITY {
            assert_eq!(*g, f32::NEG_INFINITY, "{name}: lse[{i}]");
        } else {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{name}: lse[{i}] {g} vs {w}");
        }
    }
}

/// The real repertoires in `../shared/data/repertoires`, when that folder is
/// there; prints why not, so that a skipped real-data test says so.
pub fn repertoires_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/repertoires");
    if dir.is_dir() {
        return Some(dir);
    }
    eprintln!("skipped: {} is missing, no real repertoires", dir.display());
    None
}

/// `got` and `want` equal bit for bit, of the same length, and neither
/// holding a NaN (the kernels' outputs start as NaN, so an element that two
/// runs both left unwritten would otherwise agree).
pub fn assert_same_bits(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = got.iter().chain(want).position(|x| x.is_nan()) {
        panic!(
            "{name}: NaN at {} of {}",
            i % got.len().max(1),
            if i < got.len() { "got" } else { "want" }
        );
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!("{name}: element {i} differs, {} vs {}", got[i], want[i]);
    }
}
