//! DeepRC on immune repertoires (MODELS.md 2.3): k-fold cross-validation,
//! each fold trained with Adam on minibatches of bags, the checkpoint with
//! the lowest validation loss kept, and the test fold scored with ROC AUC,
//! balanced accuracy and F1. On generated data (`implanted.tsv` next to the
//! metadata) the attention is also checked against the truth: how many of
//! the implanted sequences the model ranks highest.
//!
//! Per step and per bag, as DeepRC does:
//! 1. sample `sample` rows with replacement, duplicates dropped (training
//!    only; evaluation sees the whole bag);
//! 2. rank them by attention logit without gradient, in chunks, so a bag of
//!    any size costs memory proportional to one chunk;
//! 3. keep the `top_fraction` with the highest logits for the differentiable
//!    pass, which is one attention call over the whole minibatch (so one
//!    median for `pfu`).
//!
//! What it does not do: no learning-rate schedule, no weight decay (the
//! paper's Adam), and the per-fold models are trained one after another.

pub mod cli;
pub mod grid;
pub mod plot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use log::info;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::autograd::{ParamStore, Tape, Tensor, softplus};
use crate::data::repertoire::{self, Dataset, Repertoire};
use crate::error::{Error, Result};
use crate::models::deeprc::{BagBatch, CHANNELS, DeepRc, DeepRcConfig};
use crate::models::vit::mix;
use crate::op::{AttentionConfig, CallStats};
use crate::optim::{AdamW, Optimizer};
use crate::train::atomic_write;
use crate::train::binary::{Confusion, mean_std, roc_auc};
use crate::train::bitpattern::ForgetKind;
use crate::train::metrics::MetricsWriter;
use crate::train::{checkpoint, peak_rss_mib};

/// Defaults of a run: the paper's Adam eps, batch, sample and top fraction;
/// lr and steps scaled to a CPU (the paper: lr 1e-4 for 1e5 steps,
/// validated every 5,000).
pub const DEFAULT_STEPS: u64 = 1500;
pub const DEFAULT_EVAL_EVERY: u64 = 250;
pub const DEFAULT_BATCH: usize = 4;
pub const DEFAULT_LR: f32 = 1e-3;
pub const DEFAULT_SAMPLE: usize = 10_000;
pub const DEFAULT_TOP_FRACTION: f64 = 0.1;
pub const DEFAULT_FOLDS: usize = 5;

/// Everything one cross-validated run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeepRcTrainConfig {
    /// Folder with `metadata.tsv` and the repertoire files (in it or in its
    /// `repertoires/`), and optionally `implanted.tsv`.
    pub data: PathBuf,
    /// Metadata column naming each repertoire.
    pub id_column: String,
    /// Metadata column holding the label, and its positive value.
    pub label_column: String,
    pub positive: String,
    /// Scale the amino-acid channels by `ln(max(count, 1))`.
    pub log_counts: bool,
    pub kernels: usize,
    pub width: usize,
    pub forget: ForgetKind,
    /// Optimizer steps per fold.
    pub steps: u64,
    /// Validate (and maybe keep a checkpoint) every this many steps.
    pub eval_every: u64,
    /// Bags per step.
    pub batch: usize,
    pub lr: f32,
    pub adam_eps: f32,
    /// Rows drawn per training bag and step (with replacement, unique kept).
    pub sample: usize,
    /// Share of a bag's sequences, by attention logit, in the differentiable pass.
    pub top_fraction: f64,
    pub folds: usize,
    /// Train only these folds (all when empty).
    pub only_folds: Vec<usize>,
    /// Seeds the folds, the initialization, the sampling and the threshold draws.
    pub seed: u64,
    /// Sequences per chunk of the gradient-free ranking pass.
    pub chunk: usize,
}

impl DeepRcTrainConfig {
    /// The defaults above, Adam eps 1e-4, n_k = 32, n_c = 9, seed 0.
    pub fn new(data: PathBuf, forget: ForgetKind) -> DeepRcTrainConfig {
        DeepRcTrainConfig {
            data,
            id_column: "ID".into(),
            label_column: "label".into(),
            positive: "1".into(),
            log_counts: false,
            kernels: 32,
            width: 9,
            forget,
            steps: DEFAULT_STEPS,
            eval_every: DEFAULT_EVAL_EVERY,
            batch: DEFAULT_BATCH,
            lr: DEFAULT_LR,
            adam_eps: 1e-4,
            sample: DEFAULT_SAMPLE,
            top_fraction: DEFAULT_TOP_FRACTION,
            folds: DEFAULT_FOLDS,
            only_folds: vec![],
            seed: 0,
            chunk: 8192,
        }
    }

    pub fn model(&self) -> DeepRcConfig {
        DeepRcConfig {
            kernels: self.kernels,
            width: self.width,
            forgetting: self.forget.forgetting(),
        }
    }

    /// `nc9-nk32-pfu`.
    pub fn name(&self) -> String {
        format!("nc{}-nk{}-{}", self.width, self.kernels, self.forget.name())
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        self.model().validate()?;
        if self.steps == 0 || self.eval_every == 0 || self.batch == 0 || self.chunk == 0 {
            return bad("steps, evaluation interval, batch and chunk must be positive".into());
        }
        if self.sample == 0 {
            return bad("--sample must be positive".into());
        }
        if !(self.lr.is_finite()
            && self.lr > 0.0
            && self.adam_eps.is_finite()
            && self.adam_eps > 0.0)
        {
            return bad(format!(
                "lr {} and Adam eps {} must be finite and > 0",
                self.lr, self.adam_eps
            ));
        }
        if !(self.top_fraction > 0.0 && self.top_fraction <= 1.0) {
            return bad(format!("top fraction {} must lie in (0, 1]", self.top_fraction));
        }
        if self.folds < 3 {
            return bad(format!("{} folds: cross-validation needs at least 3", self.folds));
        }
        if let Some(f) = self.only_folds.iter().find(|&&f| f >= self.folds) {
            return bad(format!("fold {f} does not exist with {} folds", self.folds));
        }
        let mut seen = self.only_folds.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return bad(format!("folds {:?} name a fold twice", self.only_folds));
        }
        Ok(())
    }
}

/// A data set ready for training: the bags, each bag's encoding scale, and
/// the implanted rows when the data were generated.
pub struct RepertoireData {
    pub dataset: Dataset,
    /// `1 / std` of each bag's encoding (MODELS.md 2.1), over the real
    /// positions of all the bag's sequences: MODELS.md divides the bag's
    /// whole tensor, whose padding depends on the longest sequence drawn;
    /// leaving padding out, and computing it once per bag, keeps a bag's scale
    /// the same whatever rows a step samples or keeps.
    pub scales: Vec<f32>,
    /// Per bag, the rows that carry the implanted signal.
    pub implanted: Option<Vec<Vec<usize>>>,
}

impl RepertoireData {
    /// A data set held in memory, with each bag's scale computed here.
    pub fn new(
        dataset: Dataset,
        log_counts: bool,
        implanted: Option<Vec<Vec<usize>>>,
    ) -> Result<RepertoireData> {
        if let Some(truth) = &implanted {
            if truth.len() != dataset.repertoires.len() {
                return Err(Error::InvalidConfig {
                    what: format!(
                        "implanted rows for {} bags, the data set has {}",
                        truth.len(),
                        dataset.repertoires.len()
                    ),
                });
            }
            for (rows, rep) in truth.iter().zip(&dataset.repertoires) {
                if let Some(&r) = rows.iter().find(|&&r| r >= rep.len()) {
                    return Err(Error::InvalidConfig {
                        what: format!(
                            "implanted row {r} of {}, which has {} rows",
                            rep.id,
                            rep.len()
                        ),
                    });
                }
            }
        }
        let scales = dataset
            .repertoires
            .iter()
            .map(|r| repertoire::bag_scale(r, log_counts))
            .collect::<Result<_>>()?;
        Ok(RepertoireData { dataset, scales, implanted })
    }
}

/// Reads the data set `cfg.data` names: `metadata.tsv` there, repertoire
/// files in `repertoires/` when that folder exists, else next to it.
pub fn load_data(cfg: &DeepRcTrainConfig) -> Result<RepertoireData> {
    let meta = cfg.data.join("metadata.tsv");
    if !meta.is_file() {
        return Err(Error::Data {
            path: cfg.data.clone(),
            what: "no metadata.tsv here (make one with `lwpf data implant`)".into(),
        });
    }
    let nested = cfg.data.join("repertoires");
    let dir = if nested.is_dir() { nested } else { cfg.data.clone() };
    let (dataset, reports) =
        repertoire::read_dataset(&dir, &meta, &cfg.id_column, &cfg.label_column, &cfg.positive)?;
    for r in reports.iter().filter(|r| r.kept < r.rows) {
        info!("{r}");
    }
    let positives = dataset.positives();
    if positives == 0 || positives == dataset.labels.len() {
        return Err(Error::Data {
            path: meta,
            what: format!(
                "{} of {} bags have `{}` in column `{}`: training needs both classes \
                 (see --label-column and --positive)",
                positives,
                dataset.labels.len(),
                cfg.positive,
                cfg.label_column
            ),
        });
    }
    let truth = cfg.data.join("implanted.tsv");
    let implanted = if truth.is_file() {
        let rows = repertoire::read_implanted(&truth, &dataset).map_err(|e| Error::Data {
            path: truth.clone(),
            what: format!(
                "{e} (implanted.tsv holds the ground truth of the bags in metadata.tsv as \
                 generated; regenerate the data, or remove it to train without recovery)"
            ),
        })?;
        Some(rows)
    } else {
        None
    };
    RepertoireData::new(dataset, cfg.log_counts, implanted)
}

/// A 64-bit FNV-1a hash, in hex, of everything training reads from the data:
/// each bag's id, label, sequences and counts, and the implanted rows. Two
/// runs with one fingerprint saw the same data.
pub fn data_fingerprint(data: &RepertoireData) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (i, rep) in data.dataset.repertoires.iter().enumerate() {
        eat(rep.id.as_bytes());
        eat(&[data.dataset.labels[i] as u8, 0xff]);
        for (seq, count) in rep.iter() {
            eat(seq);
            eat(&count.to_le_bytes());
        }
        if let Some(truth) = &data.implanted {
            for &r in &truth[i] {
                eat(&(r as u64).to_le_bytes());
            }
        }
        eat(&[0xfe]);
    }
    format!("{h:016x}")
}

/// Fold of every bag: positives and negatives each shuffled and dealt round
/// robin, so every fold holds both classes in their overall proportion and
/// fold sizes differ by at most one.
pub fn stratified_folds(labels: &[bool], folds: usize, seed: u64) -> Result<Vec<usize>> {
    if folds == 0 {
        return Err(Error::InvalidConfig { what: "cross-validation needs folds".into() });
    }
    let mut rng = SmallRng::seed_from_u64(mix(seed ^ 0xf01d));
    let mut fold = vec![0; labels.len()];
    // The negatives are dealt on from where the positives stopped, so that
    // no fold collects the remainder of both classes.
    let mut next = 0;
    for class in [true, false] {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if members.len() < folds {
            return Err(Error::InvalidConfig {
                what: format!(
                    "{} {} bags cannot fill {folds} folds",
                    members.len(),
                    if class { "positive" } else { "negative" }
                ),
            });
        }
        members.shuffle(&mut rng);
        for &i in &members {
            fold[i] = next % folds;
            next += 1;
        }
    }
    Ok(fold)
}

/// The bags of one fold's run, as (train, validation, test): fold `fold`
/// tests, the fold before it (cyclically) validates, the rest train.
pub fn splits(
    fold_of: &[usize],
    fold: usize,
    folds: usize,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let val_fold = (fold + folds - 1) % folds.max(1);
    let pick = |keep: &dyn Fn(usize) -> bool| -> Vec<usize> {
        (0..fold_of.len()).filter(|&i| keep(fold_of[i])).collect()
    };
    (pick(&|f| f != fold && f != val_fold), pick(&|f| f == val_fold), pick(&|f| f == fold))
}

/// The channels-last encoding `[S, L, 23]` of rows `rows` of every bag in
/// `bags`, one tensor for the lot, each bag at its own scale.
fn encode_bags(
    data: &RepertoireData,
    log_counts: bool,
    parts: &[(usize, &[usize])],
) -> Result<(Tensor, Vec<usize>)> {
    let mut encoded = Vec::with_capacity(parts.len());
    for &(bag, rows) in parts {
        let rep = &data.dataset.repertoires[bag];
        let seqs: Vec<&[u8]> = rows.iter().map(|&r| rep.seq(r)).collect();
        let counts: Option<Vec<f32>> =
            log_counts.then(|| rows.iter().map(|&r| rep.count(r) as f32).collect());
        encoded.push(repertoire::encode(&seqs, counts.as_deref(), data.scales[bag])?);
    }
    // One bag (every chunk of the ranking pass) is already laid out at its
    // own longest length: no second copy.
    if let [(values, lengths, l)] = &mut encoded[..] {
        let (values, lengths) = (std::mem::take(values), std::mem::take(lengths));
        return Ok((
            Tensor::from_parts(vec![lengths.len(), (*l).max(1), CHANNELS], values),
            lengths,
        ));
    }
    let l_max = encoded.iter().map(|e| e.2).max().unwrap_or(1).max(1);
    let total: usize = encoded.iter().map(|e| e.1.len()).sum();
    let mut x = vec![0.0; total * l_max * CHANNELS];
    let mut lengths = Vec::with_capacity(total);
    let mut s = 0;
    for (values, lens, l) in encoded {
        for (i, &len) in lens.iter().enumerate() {
            let src = &values[i * l * CHANNELS..][..len * CHANNELS];
            x[s * l_max * CHANNELS..][..len * CHANNELS].copy_from_slice(src);
            lengths.push(len);
            s += 1;
        }
    }
    Ok((Tensor::from_parts(vec![total, l_max, CHANNELS], x), lengths))
}

/// The attention logit of each of `rows` of `bag`, chunk by chunk.
fn rank_logits(
    model: &DeepRc,
    store: &ParamStore,
    data: &RepertoireData,
    cfg: &DeepRcTrainConfig,
    bag: usize,
    rows: &[usize],
) -> Result<Vec<f32>> {
    let mut logits = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(cfg.chunk) {
        let (x, lengths) = encode_bags(data, cfg.log_counts, &[(bag, chunk)])?;
        logits.extend(model.attention_logits(store, x, &lengths)?);
    }
    Ok(logits)
}

/// Indices into `logits` of the `ceil(fraction * n)` largest (at least one),
/// highest first; ties keep the lower index first.
fn top_indices(logits: &[f32], fraction: f64) -> Vec<usize> {
    let keep = ((logits.len() as f64 * fraction).ceil() as usize).clamp(1, logits.len().max(1));
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(keep);
    order
}

/// One minibatch's bags after sampling and the top-fraction reduction.
struct Selection {
    /// Per bag, the rows of the differentiable pass.
    rows: Vec<Vec<usize>>,
    /// Per bag, the gradient-free logit of every row drawn, in draw order
    /// (in evaluation every row, so the index is the row).
    ranked: Vec<Vec<f32>>,
}

fn select(
    model: &DeepRc,
    store: &ParamStore,
    data: &RepertoireData,
    cfg: &DeepRcTrainConfig,
    bags: &[usize],
    rng: Option<&mut SmallRng>,
) -> Result<Selection> {
    let mut sel = Selection { rows: vec![], ranked: vec![] };
    let mut rng = rng;
    for &bag in bags {
        let n = data.dataset.repertoires[bag].len();
        let candidates = match rng.as_deref_mut() {
            Some(rng) => repertoire::sample_rows(n, cfg.sample, rng),
            None => (0..n).collect(),
        };
        let logits = rank_logits(model, store, data, cfg, bag, &candidates)?;
        let top = top_indices(&logits, cfg.top_fraction);
        sel.rows.push(top.iter().map(|&i| candidates[i]).collect());
        sel.ranked.push(logits);
    }
    Ok(sel)
}

fn batch_of(
    data: &RepertoireData,
    cfg: &DeepRcTrainConfig,
    bags: &[usize],
    sel: &Selection,
) -> Result<BagBatch> {
    let parts: Vec<(usize, &[usize])> =
        bags.iter().zip(&sel.rows).map(|(&b, r)| (b, r.as_slice())).collect();
    let (x, lengths) = encode_bags(data, cfg.log_counts, &parts)?;
    Ok(BagBatch { x, lengths, bag_sizes: sel.rows.iter().map(Vec::len).collect() })
}

/// The mode and threshold seed of an attention call; the forgetting
/// function and beta are the model's, which [`DeepRc::forward`] sets.
fn attention_config(training: bool, seed: u64) -> AttentionConfig {
    AttentionConfig { training, seed, ..Default::default() }
}

/// How well the attention finds the implanted sequences of one positive bag:
/// ranks from the gradient-free logits over the whole bag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Positive bags with implanted rows that were scored.
    pub bags: usize,
    /// Mean over bags of the share of implanted rows among the k rows with
    /// the highest attention, k = the bag's number of implanted rows.
    pub precision_at_k: f64,
    /// Mean over bags of the share of implanted rows that reach the
    /// differentiable pass (the top fraction).
    pub recall_in_top: f64,
    /// Every implanted row's rank in its bag as a fraction of the bag size
    /// (0 = highest attention), for the recovery curve.
    pub rank_fractions: Vec<f64>,
}

/// The metrics of one evaluation over a set of bags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub bags: usize,
    pub loss: f64,
    /// `None` when the bags hold one class only.
    pub auc: Option<f64>,
    pub balanced_accuracy: f64,
    pub f1: f64,
    /// Share of attention entries forgotten.
    pub forgotten: f64,
    pub probabilities: Vec<f64>,
    pub recovery: Option<Recovery>,
}

/// Scores `bags` in minibatches of `cfg.batch`, in the order given: the
/// threshold's median is over each minibatch, as in training.
pub fn evaluate(
    model: &DeepRc,
    store: &ParamStore,
    data: &RepertoireData,
    cfg: &DeepRcTrainConfig,
    bags: &[usize],
) -> Result<EvalResult> {
    let (mut probs, mut logits) = (Vec::with_capacity(bags.len()), Vec::with_capacity(bags.len()));
    let (mut loss, mut forgotten, mut entries) = (0.0, 0u64, 0u64);
    let mut recovery = Recovery::default();
    for chunk in bags.chunks(cfg.batch) {
        let sel = select(model, store, data, cfg, chunk, None)?;
        let batch = batch_of(data, cfg, chunk, &sel)?;
        let mut tape = Tape::inference(store);
        let out = model.forward(&mut tape, &batch, &attention_config(false, 0))?;
        for s in tape.attention_stats() {
            forgotten += s.forgotten;
            entries += s.entries;
        }
        for (i, &z) in tape.value(out.logits).data().iter().enumerate() {
            let y = data.dataset.labels[chunk[i]];
            let z = z as f64;
            // Binary cross-entropy softplus(z) - y z; sigmoid(z) = exp(z - softplus(z)).
            let sp = softplus(z);
            loss += sp - if y { z } else { 0.0 };
            probs.push((z - sp).exp());
            logits.push(z);
        }
        if let Some(truth) = &data.implanted {
            for (j, &bag) in chunk.iter().enumerate() {
                score_recovery(&mut recovery, &truth[bag], &sel.ranked[j], sel.rows[j].len());
            }
        }
    }
    let labels: Vec<bool> = bags.iter().map(|&b| data.dataset.labels[b]).collect();
    let conf = Confusion::at(&probs, &labels, 0.5);
    if recovery.bags > 0 {
        recovery.precision_at_k /= recovery.bags as f64;
        recovery.recall_in_top /= recovery.bags as f64;
    }
    Ok(EvalResult {
        bags: bags.len(),
        loss: loss / bags.len().max(1) as f64,
        // The logits, not the probabilities: those round to 1 in f64 for
        // logits above about 37, and the ranking would tie.
        auc: roc_auc(&logits, &labels),
        balanced_accuracy: conf.balanced_accuracy(),
        f1: conf.f1(),
        forgotten: if entries == 0 { 0.0 } else { forgotten as f64 / entries as f64 },
        probabilities: probs,
        recovery: data.implanted.as_ref().map(|_| recovery),
    })
}

/// Adds one bag to `acc`; `logits` are over every row of the bag (row i at
/// index i, as evaluation ranks the whole bag); the differentiable pass
/// took the `kept` highest of them.
fn score_recovery(acc: &mut Recovery, implanted: &[usize], logits: &[f32], kept: usize) {
    if implanted.is_empty() || logits.is_empty() {
        return;
    }
    let order = top_indices(logits, 1.0);
    let mut rank = vec![0; logits.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let k = implanted.len();
    let hits = implanted.iter().filter(|&&i| rank[i] < k).count();
    let kept_hits = implanted.iter().filter(|&&i| rank[i] < kept).count();
    acc.bags += 1;
    acc.precision_at_k += hits as f64 / k as f64;
    acc.recall_in_top += kept_hits as f64 / k as f64;
    let n = logits.len() as f64;
    acc.rank_fractions.extend(implanted.iter().map(|&i| rank[i] as f64 / n));
}

/// The outcome of one fold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoldSummary {
    pub fold: usize,
    pub train_bags: usize,
    /// Step of the kept checkpoint (lowest validation loss).
    pub best_step: u64,
    pub best_val_loss: f64,
    pub val_auc: Option<f64>,
    pub test: EvalResult,
    pub wall_time_s: f64,
}

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeepRcSummary {
    pub name: String,
    pub config: DeepRcTrainConfig,
    pub parameters: usize,
    pub bags: usize,
    pub positives: usize,
    pub sequences: usize,
    pub folds: Vec<FoldSummary>,
    pub auc_mean: f64,
    pub auc_std: f64,
    pub balanced_accuracy_mean: f64,
    pub f1_mean: f64,
    /// Mean over folds of the recovery precision at k (generated data only).
    pub recovery_precision_at_k: Option<f64>,
    pub recovery_recall_in_top: Option<f64>,
    /// Training steps per second, ranking pass included, evaluation not.
    pub steps_per_s: f64,
    /// [`data_fingerprint`] of the data trained on.
    #[serde(default)]
    pub data_fingerprint: String,
    /// Peak resident memory of the process: the high-water mark, so in a
    /// grid it covers every run before this one too.
    pub peak_rss_mib: f64,
    /// Seconds of the run: from [`train`], loading the data included; from
    /// [`train_on`] (each cell a grid trains), the data came loaded and
    /// their reading is not counted.
    pub wall_time_s: f64,
}

#[derive(Serialize)]
struct StepRecord {
    kind: &'static str,
    fold: usize,
    step: u64,
    loss: f64,
    /// Mean over the logged steps.
    forgotten: f64,
    threshold: Option<f32>,
    /// Sequences in the differentiable pass of the last step.
    sequences: usize,
}

#[derive(Serialize)]
struct EvalRecord<'a> {
    kind: &'static str,
    fold: usize,
    step: u64,
    loss: f64,
    auc: Option<f64>,
    balanced_accuracy: f64,
    f1: f64,
    forgotten: f64,
    recovery_precision_at_k: Option<f64>,
    split: &'a str,
}

impl<'a> EvalRecord<'a> {
    fn new(split: &'a str, fold: usize, step: u64, e: &EvalResult) -> Self {
        EvalRecord {
            kind: "eval",
            fold,
            step,
            loss: e.loss,
            auc: e.auc,
            balanced_accuracy: e.balanced_accuracy,
            f1: e.f1,
            forgotten: e.forgotten,
            recovery_precision_at_k: e.recovery.as_ref().map(|r| r.precision_at_k),
            split,
        }
    }
}

fn progress_bar(total: u64, show: bool, name: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed} / eta {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(name.to_string());
    pb
}

/// Trains every fold (or `cfg.only_folds`) and writes `metrics.jsonl`,
/// `summary.json`, `fold<k>/best.safetensors` and the curves into `out`.
pub fn train(cfg: &DeepRcTrainConfig, out: &Path, progress: bool) -> Result<DeepRcSummary> {
    // Checked before loading, so a bad value costs no read of the data.
    cfg.validate()?;
    let start = Instant::now();
    let data = load_data(cfg)?;
    train_since(cfg, &data, out, progress, start)
}

/// [`train`] on data already loaded, so that runs over one data set (a
/// grid) read it once. `data` must be what [`load_data`] gives for `cfg`'s
/// data, columns and `log_counts` (the bag scales depend on it). The
/// summary's `wall_time_s` starts here, so it leaves the loading out.
pub fn train_on(
    cfg: &DeepRcTrainConfig,
    data: &RepertoireData,
    out: &Path,
    progress: bool,
) -> Result<DeepRcSummary> {
    cfg.validate()?;
    train_since(cfg, data, out, progress, Instant::now())
}

/// The training of [`train`] and [`train_on`]; `start` is where the
/// summary's wall time counts from.
fn train_since(
    cfg: &DeepRcTrainConfig,
    data: &RepertoireData,
    out: &Path,
    progress: bool,
    start: Instant,
) -> Result<DeepRcSummary> {
    let labels = &data.dataset.labels;
    let fold_of = stratified_folds(labels, cfg.folds, cfg.seed)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut metrics = MetricsWriter::create(&out.join("metrics.jsonl"))?;
    let folds: Vec<usize> =
        if cfg.only_folds.is_empty() { (0..cfg.folds).collect() } else { cfg.only_folds.clone() };
    let sequences: usize = data.dataset.repertoires.iter().map(Repertoire::len).sum();
    info!(
        "{}: {} bags ({} positive), {sequences} sequences, folds {folds:?}",
        cfg.name(),
        labels.len(),
        data.dataset.positives()
    );

    let pb = progress_bar(cfg.steps * folds.len() as u64, progress, &cfg.name());
    let mut summaries = Vec::new();
    let mut train_time = 0.0;
    let mut parameters = 0;
    for &fold in &folds {
        let t = Instant::now();
        let (s, n_params, secs) = train_fold(cfg, data, &fold_of, fold, out, &mut metrics, &pb)?;
        train_time += secs;
        parameters = n_params;
        info!(
            "fold {fold}: test AUC {} (best step {}, val loss {:.4}), {:.0} s",
            s.test.auc.map_or("n/a".into(), |a| format!("{a:.3}")),
            s.best_step,
            s.best_val_loss,
            t.elapsed().as_secs_f64()
        );
        summaries.push(s);
    }
    pb.finish_and_clear();

    let aucs: Vec<f64> = summaries.iter().filter_map(|s| s.test.auc).collect();
    let (auc_mean, auc_std) = mean_std(&aucs);
    let mean_of = |f: &dyn Fn(&FoldSummary) -> Option<f64>| {
        let v: Vec<f64> = summaries.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| mean_std(&v).0)
    };
    let summary = DeepRcSummary {
        name: cfg.name(),
        config: cfg.clone(),
        parameters,
        bags: labels.len(),
        positives: data.dataset.positives(),
        sequences,
        auc_mean,
        auc_std,
        balanced_accuracy_mean: mean_of(&|s| Some(s.test.balanced_accuracy)).unwrap_or(f64::NAN),
        f1_mean: mean_of(&|s| Some(s.test.f1)).unwrap_or(f64::NAN),
        recovery_precision_at_k: mean_of(&|s| s.test.recovery.as_ref().map(|r| r.precision_at_k)),
        recovery_recall_in_top: mean_of(&|s| s.test.recovery.as_ref().map(|r| r.recall_in_top)),
        steps_per_s: (cfg.steps * folds.len() as u64) as f64 / train_time.max(1e-9),
        data_fingerprint: data_fingerprint(data),
        peak_rss_mib: peak_rss_mib(),
        wall_time_s: start.elapsed().as_secs_f64(),
        folds: summaries,
    };
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|e| Error::Data { path: out.join("summary.json"), what: e.to_string() })?;
    atomic_write(&out.join("summary.json"), &json)?;
    plot::save_curves(out)?;
    Ok(summary)
}

/// What one optimizer step reports.
pub struct StepOutcome {
    /// The minibatch's binary cross-entropy before the step.
    pub loss: f64,
    /// Statistics of the step's attention call (threshold, entries forgotten).
    pub stats: Vec<CallStats>,
    /// Sequences in the differentiable pass.
    pub sequences: usize,
}

/// Step `step` of Adam on the bags `bags`: sample, rank without gradient,
/// keep the top fraction, then forward, backward and update. `seed` drives
/// the threshold draw.
#[allow(clippy::too_many_arguments)]
pub fn training_step(
    model: &DeepRc,
    store: &mut ParamStore,
    adam: &mut AdamW,
    data: &RepertoireData,
    cfg: &DeepRcTrainConfig,
    bags: &[usize],
    rng: &mut SmallRng,
    (step, seed): (u64, u64),
) -> Result<StepOutcome> {
    let sel = select(model, store, data, cfg, bags, Some(rng))?;
    let batch = batch_of(data, cfg, bags, &sel)?;
    let targets: Vec<f32> =
        bags.iter().map(|&b| if data.dataset.labels[b] { 1.0 } else { 0.0 }).collect();
    let mut tape = Tape::new(store);
    let logits = model.forward(&mut tape, &batch, &attention_config(true, seed))?.logits;
    let loss = tape.bce_with_logits(logits, &targets)?;
    let loss_value = tape.value(loss).item().unwrap_or(f32::NAN) as f64;
    if !loss_value.is_finite() {
        return Err(Error::Training { step, what: format!("loss is {loss_value}") });
    }
    let stats = tape.attention_stats().to_vec();
    let grads = tape.backward(loss)?;
    adam.step(store, &grads, cfg.lr)?;
    Ok(StepOutcome { loss: loss_value, stats, sequences: batch.lengths.len() })
}

/// Trains one fold; returns its summary, the parameter count and the
/// seconds spent in training steps.
fn train_fold(
    cfg: &DeepRcTrainConfig,
    data: &RepertoireData,
    fold_of: &[usize],
    fold: usize,
    out: &Path,
    metrics: &mut MetricsWriter,
    pb: &ProgressBar,
) -> Result<(FoldSummary, usize, f64)> {
    let start = Instant::now();
    let (train_bags, val, test) = splits(fold_of, fold, cfg.folds);

    let fold_seed = mix(cfg.seed.wrapping_mul(31).wrapping_add(fold as u64 + 1));
    let mut store = ParamStore::new();
    let model = DeepRc::new(&mut store, cfg.model(), fold_seed)?;
    let mut adam = AdamW::new(&store, 0.0);
    adam.eps = cfg.adam_eps;
    let mut rng = SmallRng::seed_from_u64(fold_seed ^ 0x5eed);
    let mut order: Vec<usize> = Vec::new();

    let dir = out.join(format!("fold{fold}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let ckpt = dir.join("best.safetensors");
    let mut best: Option<(f64, u64, Vec<Tensor>, Option<f64>)> = None;
    let (mut loss_acc, mut forgot_acc, mut logged) = (0.0, 0.0, 0u64);
    let mut train_secs = 0.0;
    // About four step records per validation, and a few even in a run
    // shorter than one validation interval.
    let log_every = (cfg.eval_every.min(cfg.steps) / 4).max(1);

    for step in 1..=cfg.steps {
        let t = Instant::now();
        let mut bags = Vec::with_capacity(cfg.batch);
        while bags.len() < cfg.batch {
            if order.is_empty() {
                order = train_bags.clone();
                order.shuffle(&mut rng);
            }
            bags.extend(order.pop());
        }
        let seed = mix(fold_seed ^ step.wrapping_mul(0x9e37_79b9));
        let done =
            training_step(&model, &mut store, &mut adam, data, cfg, &bags, &mut rng, (step, seed))?;
        let (loss_value, stats) = (done.loss, done.stats);
        train_secs += t.elapsed().as_secs_f64();

        loss_acc += loss_value;
        forgot_acc += stats.iter().map(CallStats::forgotten_fraction).sum::<f64>();
        logged += 1;
        if step % log_every == 0 || step == cfg.steps {
            metrics.write(&StepRecord {
                kind: "step",
                fold,
                step,
                loss: loss_acc / logged as f64,
                forgotten: forgot_acc / logged as f64,
                threshold: stats
                    .first()
                    .and_then(|s| cfg.forget.ne(&ForgetKind::None).then_some(s.threshold.z)),
                sequences: done.sequences,
            })?;
            pb.set_message(format!("fold {fold} loss {:.4}", loss_acc / logged as f64));
            (loss_acc, forgot_acc, logged) = (0.0, 0.0, 0);
        }
        pb.inc(1);

        if step % cfg.eval_every == 0 || step == cfg.steps {
            let e = evaluate(&model, &store, data, cfg, &val)?;
            metrics.write(&EvalRecord::new("val", fold, step, &e))?;
            if best.as_ref().is_none_or(|b| b.0.is_nan() || e.loss < b.0) {
                let values = store.iter().map(|(_, p)| p.value.clone()).collect();
                let mut meta = HashMap::new();
                meta.insert("step".to_string(), step.to_string());
                meta.insert("fold".to_string(), fold.to_string());
                meta.insert("config".to_string(), serde_json::to_string(cfg).unwrap_or_default());
                checkpoint::save(&ckpt, &store, meta)?;
                best = Some((e.loss, step, values, e.auc));
            }
        }
    }

    let Some((best_val_loss, best_step, values, val_auc)) = best else {
        return Err(Error::Training { step: cfg.steps, what: "no validation ran".into() });
    };
    for (p, v) in store.params_mut().iter_mut().zip(values) {
        p.value = v;
    }
    let test_result = evaluate(&model, &store, data, cfg, &test)?;
    metrics.write(&EvalRecord::new("test", fold, best_step, &test_result))?;
    let summary = FoldSummary {
        fold,
        train_bags: train_bags.len(),
        best_step,
        best_val_loss,
        val_auc,
        test: test_result,
        wall_time_s: start.elapsed().as_secs_f64(),
    };
    Ok((summary, store.num_elements(), train_secs))
}

/// Reads a finished run's `summary.json`.
pub fn read_summary(dir: &Path) -> Result<DeepRcSummary> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Data { path, what: e.to_string() })
}

/// Default output folder of a run.
pub fn default_out(cfg: &DeepRcTrainConfig) -> PathBuf {
    PathBuf::from("runs/deeprc").join(cfg.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_indices_keep_the_ceiling_share_highest_first() {
        let logits = [0.5, 2.0, -1.0, 2.0, 0.0, 3.0, 1.0, -2.0, 0.1, 0.2, 0.3];
        // ceil(0.1 * 11) = 2; the tie at 2.0 keeps the lower index first.
        assert_eq!(top_indices(&logits, 0.1), [5, 1]);
        assert_eq!(top_indices(&logits, 0.3), [5, 1, 3, 6]);
        assert_eq!(top_indices(&[1.0], 0.1), [0]);
        assert_eq!(top_indices(&logits, 1.0).len(), 11);
    }

    #[test]
    fn recovery_scores_ranks_against_the_implanted_rows() {
        // Rows by logit: 3, 0, 4, 1, 2. Implanted rows 3 and 1: k = 2, one
        // of them (row 3) is in the top 2; rows 0 and 3 reached the
        // differentiable pass.
        let logits = [0.9, 0.1, -0.5, 1.5, 0.3];
        let mut acc = Recovery::default();
        score_recovery(&mut acc, &[3, 1], &logits, 2);
        assert_eq!(acc.bags, 1);
        assert_eq!(acc.precision_at_k, 0.5);
        assert_eq!(acc.recall_in_top, 0.5);
        assert_eq!(acc.rank_fractions, [0.0, 0.6]);
        // A negative bag (nothing implanted) is not scored.
        score_recovery(&mut acc, &[], &logits, 1);
        assert_eq!(acc.bags, 1);
    }
}
