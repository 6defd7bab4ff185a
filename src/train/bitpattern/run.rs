//! One training run of one bit-pattern network.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::autograd::{ParamStore, Tape};
use crate::data::bitpattern::{BitPatternConfig, BitPatternSet};
use crate::error::{Error, Result};
use crate::models::bitpattern::{BagShape, BitPatternNet, NetKind, Setting};
use crate::nn::InitRng;
use crate::op::{Forgetting, Pfu};
use crate::optim::{AdamW, Optimizer};
use crate::train::atomic_write;
use crate::train::metrics::MetricsWriter;

/// The forgetting variants compared in the experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgetKind {
    /// Plain attention, the baseline.
    None,
    /// Threshold 0, bias 0.
    Relu,
    /// The partial forgetting unit, median preset (noise std 1e-4, `b = z`).
    Pfu,
}

impl ForgetKind {
    pub const ALL: [ForgetKind; 3] = [ForgetKind::None, ForgetKind::Relu, ForgetKind::Pfu];

    pub fn forgetting(&self) -> Forgetting {
        match self {
            ForgetKind::None => Forgetting::None,
            ForgetKind::Relu => Forgetting::Relu,
            ForgetKind::Pfu => Forgetting::Pfu(Pfu::median_preset()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.forgetting().name()
    }
}

/// Everything one run depends on; the defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub net: NetKind,
    pub setting: Setting,
    pub forget: ForgetKind,
    /// Optimizer steps (the paper reports 1,500).
    pub steps: u64,
    /// Seeds the data set, the initialization, the batch order and the
    /// forgetting and dropout draws.
    pub seed: u64,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clipping.
    pub clip: f64,
    /// Evaluate (and log an epoch line) every this many steps; 48 steps are
    /// one epoch of 1,536 training bags.
    pub eval_every: u64,
    /// Sizes of the data set (its seed is the run's).
    pub data: BitPatternConfig,
}

impl RunConfig {
    pub fn new(net: NetKind, setting: Setting, forget: ForgetKind, seed: u64) -> RunConfig {
        RunConfig {
            net,
            setting,
            forget,
            steps: 1500,
            seed,
            batch: 32,
            lr: 1e-3,
            weight_decay: 0.01,
            clip: 1.0,
            eval_every: 48,
            data: BitPatternConfig::default(),
        }
    }

    /// `hopfield-adapted-pfu-s3`.
    pub fn name(&self) -> String {
        format!("{}-{}-{}-s{}", self.net.name(), self.setting.name(), self.forget.name(), self.seed)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        if self.steps == 0 || self.batch == 0 || self.eval_every == 0 {
            return bad("steps, batch and evaluation interval must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr {} must be finite and > 0", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {}", self.weight_decay));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!("gradient clip {} must be finite and > 0", self.clip));
        }
        BitPatternConfig { seed: self.seed, ..self.data }.validate()
    }
}

/// One evaluation point of the learning curves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub epoch: f64,
    /// Mean of the batch losses of the last epoch's worth of steps (48, or
    /// all steps so far when fewer), so that a final point off the epoch grid
    /// averages as many batches as the others.
    pub train_loss: f64,
    /// Training accuracy over the same batches.
    pub train_accuracy: f64,
    pub eval_loss: f64,
    pub eval_accuracy: f64,
    /// Fraction of score entries forgotten since the previous point, per
    /// layer (the network has one Hopfield layer), pooled over its op calls.
    pub forgotten_fraction: Vec<f64>,
    pub eval_forgotten_fraction: Vec<f64>,
}

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub name: String,
    pub config: RunConfig,
    pub parameters: usize,
    /// Mean batch loss over the last epoch's worth of steps.
    pub final_train_loss: f64,
    pub final_train_accuracy: f64,
    pub final_eval_accuracy: f64,
    pub final_eval_loss: f64,
    pub best_eval_accuracy: f64,
    pub best_eval_step: u64,
    /// Mean over all training steps of the fraction forgotten, per layer.
    pub forgotten_fraction_per_layer: Vec<f64>,
    /// The same per op call of the layer (update steps, then the retrieval).
    pub forgotten_fraction_per_call: Vec<f64>,
    /// Fraction forgotten in the final evaluation, per layer.
    pub eval_forgotten_fraction_per_layer: Vec<f64>,
    /// Mean update steps taken per forward pass.
    pub mean_update_steps: f64,
    pub wall_time_s: f64,
    pub steps_per_s: f64,
    pub curve: Vec<CurvePoint>,
}

#[derive(Serialize)]
struct StepRecord<'a> {
    kind: &'static str,
    step: u64,
    loss: f64,
    accuracy: f64,
    grad_norm: f64,
    forgotten_fraction: &'a [f64],
}

#[derive(Serialize)]
struct EvalRecord<'a> {
    kind: &'static str,
    #[serde(flatten)]
    point: &'a CurvePoint,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ConfigRecord {
    pub kind: String,
    pub name: String,
    pub config: RunConfig,
}

/// A 64-bit mix (splitmix64's finalizer) to derive independent seeds.
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed streams of one run.
const INIT_STREAM: u64 = 1;
const ORDER_STREAM: u64 = 2;
const STEP_STREAM: u64 = 3;

/// Count of correct threshold-0.5 predictions: `sigmoid(z) > 0.5` iff `z > 0`.
fn hits(logits: &[f32], targets: &[f32]) -> usize {
    logits.iter().zip(targets).filter(|(z, y)| (**z > 0.0) == (**y > 0.5)).count()
}

/// Loss, accuracy and forgotten fraction on the bags `indices`, in batches
/// of `batch` on inference tapes (evaluation mode: deterministic thresholds,
/// no dropout).
pub fn evaluate(
    net: &BitPatternNet,
    store: &ParamStore,
    set: &BitPatternSet,
    indices: &[usize],
    batch: usize,
) -> Result<(f64, f64, f64)> {
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let (mut forgotten, mut entries) = (0u64, 0u64);
    for chunk in indices.chunks(batch) {
        let mut tape = Tape::inference(store);
        let x = tape.input(set.bags_tensor(chunk));
        let (logits, out) = net.forward(&mut tape, x, false, 0)?;
        let targets = set.targets(chunk);
        let l = tape.bce_with_logits(logits, &targets)?;
        loss += tape.value(l).item().unwrap_or(f32::NAN) as f64 * chunk.len() as f64;
        correct += hits(tape.value(logits).data(), &targets);
        for c in &out.calls {
            forgotten += c.forgotten;
            entries += c.entries;
        }
    }
    let n = indices.len().max(1) as f64;
    let frac = if entries == 0 { 0.0 } else { forgotten as f64 / entries as f64 };
    Ok((loss / n, correct as f64 / n, frac))
}

/// Forgetting counts between two evaluation points.
#[derive(Default)]
struct Window {
    forgotten: u64,
    entries: u64,
}

/// Trains one network. With `out`, writes `metrics.jsonl` (a config line,
/// one line per step, one per evaluation) and `summary.json` there. `progress`
/// advances by one per step.
pub fn train_run(
    cfg: &RunConfig,
    out: Option<&Path>,
    progress: &ProgressBar,
) -> Result<RunSummary> {
    let start = Instant::now();
    cfg.validate()?;
    let set = BitPatternSet::generate(BitPatternConfig { seed: cfg.seed, ..cfg.data })?;
    let (train_idx, eval_idx) = (set.train_indices(), set.eval_indices());
    let bag = BagShape { instances: set.config.instances_per_bag, bits: set.config.bits };

    let mut store = ParamStore::new();
    let lookup_init = match (cfg.net, cfg.setting) {
        (NetKind::Lookup, Setting::Adapted) => {
            Some(set.patterns_tensor(&set.unique_instances(&train_idx)))
        }
        _ => None,
    };
    let mut rng = InitRng::new(mix(cfg.seed ^ mix(INIT_STREAM)));
    let forgetting = cfg.forget.forgetting();
    let net = BitPatternNet::new(
        &mut store,
        cfg.net,
        cfg.setting,
        forgetting,
        bag,
        lookup_init,
        &mut rng,
    )?;
    let mut optimizer = AdamW::new(&store, cfg.weight_decay);

    let mut metrics = match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let mut m = MetricsWriter::create(&dir.join("metrics.jsonl"))?;
            m.write(&ConfigRecord {
                kind: "config".into(),
                name: cfg.name(),
                config: cfg.clone(),
            })?;
            Some(m)
        }
        None => None,
    };

    let mut order = train_idx.clone();
    let mut order_rng = SmallRng::seed_from_u64(mix(cfg.seed ^ mix(ORDER_STREAM)));
    let steps_per_epoch = train_idx.len().div_ceil(cfg.batch) as u64;
    let mut window = Window::default();
    let mut recent: std::collections::VecDeque<(f64, usize, usize)> = Default::default();
    let (mut run_forgotten, mut run_entries) = (0u64, 0u64);
    let mut per_call: Vec<(u64, u64)> = Vec::new();
    let mut update_steps = 0u64;
    let mut curve = Vec::new();
    let mut pos = 0usize;

    for step in 0..cfg.steps {
        if pos == 0 {
            order.shuffle(&mut order_rng);
        }
        let chunk = &order[pos..(pos + cfg.batch).min(order.len())];
        pos = if pos + cfg.batch >= order.len() { 0 } else { pos + cfg.batch };

        let targets = set.targets(chunk);
        let mut tape = Tape::new(&store);
        let x = tape.input(set.bags_tensor(chunk));
        let step_seed = mix(mix(cfg.seed ^ mix(STEP_STREAM)) ^ step);
        let (logits, layer) = net.forward(&mut tape, x, true, step_seed)?;
        let loss_var = tape.bce_with_logits(logits, &targets)?;
        let loss = tape.value(loss_var).item().unwrap_or(f32::NAN) as f64;
        if !loss.is_finite() {
            return Err(Error::Training { step, what: format!("the loss is {loss}") });
        }
        let correct = hits(tape.value(logits).data(), &targets);
        let mut grads = tape.backward(loss_var)?;
        let grad_norm = grads.clip_global_norm(cfg.clip);
        optimizer.step(&mut store, &grads, cfg.lr)?;

        // Bookkeeping.
        let (f, e) = layer.calls.iter().fold((0, 0), |(f, e), c| (f + c.forgotten, e + c.entries));
        (run_forgotten, run_entries) = (run_forgotten + f, run_entries + e);
        if per_call.len() < layer.calls.len() {
            per_call.resize(layer.calls.len(), (0, 0));
        }
        for (acc, c) in per_call.iter_mut().zip(&layer.calls) {
            *acc = (acc.0 + c.forgotten, acc.1 + c.entries);
        }
        update_steps += layer.update_steps as u64;
        window.forgotten += f;
        window.entries += e;
        recent.push_back((loss, correct, chunk.len()));
        if recent.len() as u64 > steps_per_epoch {
            recent.pop_front();
        }
        if let Some(m) = metrics.as_mut() {
            let frac = [if e == 0 { 0.0 } else { f as f64 / e as f64 }];
            m.write(&StepRecord {
                kind: "step",
                step: step + 1,
                loss,
                accuracy: correct as f64 / chunk.len() as f64,
                grad_norm,
                forgotten_fraction: &frac,
            })?;
        }
        progress.inc(1);

        if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
            let (eval_loss, eval_accuracy, eval_frac) =
                evaluate(&net, &store, &set, &eval_idx, cfg.batch)?;
            let w = std::mem::take(&mut window);
            let (loss_sum, hits_sum, bags_sum) =
                recent.iter().fold((0.0, 0, 0), |(l, h, b), r| (l + r.0, h + r.1, b + r.2));
            let point = CurvePoint {
                step: step + 1,
                epoch: (step + 1) as f64 / steps_per_epoch as f64,
                train_loss: loss_sum / recent.len().max(1) as f64,
                train_accuracy: hits_sum as f64 / bags_sum.max(1) as f64,
                eval_loss,
                eval_accuracy,
                forgotten_fraction: vec![if w.entries == 0 {
                    0.0
                } else {
                    w.forgotten as f64 / w.entries as f64
                }],
                eval_forgotten_fraction: vec![eval_frac],
            };
            if let Some(m) = metrics.as_mut() {
                m.write(&EvalRecord { kind: "eval", point: &point })?;
            }
            progress.set_message(format!(
                "loss {:.4}, eval accuracy {:.3}",
                point.train_loss, eval_accuracy
            ));
            curve.push(point);
        }
    }

    let last =
        curve.last().cloned().ok_or_else(|| Error::InvalidConfig { what: "no step ran".into() })?;
    let best =
        curve.iter().fold(&curve[0], |b, p| if p.eval_accuracy > b.eval_accuracy { p } else { b });
    let n_recent = recent.len().max(1) as f64;
    let bags_recent: usize = recent.iter().map(|r| r.2).sum();
    let wall = start.elapsed().as_secs_f64();
    let frac = |f: u64, e: u64| if e == 0 { 0.0 } else { f as f64 / e as f64 };
    let summary = RunSummary {
        name: cfg.name(),
        config: cfg.clone(),
        parameters: store
            .iter()
            .filter(|(_, p)| p.weight_decay)
            .map(|(_, p)| p.value.numel())
            .sum(),
        final_train_loss: recent.iter().map(|r| r.0).sum::<f64>() / n_recent,
        final_train_accuracy: recent.iter().map(|r| r.1).sum::<usize>() as f64
            / bags_recent.max(1) as f64,
        final_eval_accuracy: last.eval_accuracy,
        final_eval_loss: last.eval_loss,
        best_eval_accuracy: best.eval_accuracy,
        best_eval_step: best.step,
        forgotten_fraction_per_layer: vec![frac(run_forgotten, run_entries)],
        forgotten_fraction_per_call: per_call.iter().map(|&(f, e)| frac(f, e)).collect(),
        eval_forgotten_fraction_per_layer: last.eval_forgotten_fraction.clone(),
        mean_update_steps: update_steps as f64 / cfg.steps as f64,
        wall_time_s: wall,
        steps_per_s: cfg.steps as f64 / wall.max(1e-9),
        curve,
    };
    if let Some(dir) = out {
        write_summary(&dir.join("summary.json"), &summary)?;
    }
    Ok(summary)
}

pub(super) fn write_summary(path: &Path, summary: &RunSummary) -> Result<()> {
    let json = serde_json::to_vec_pretty(summary)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    atomic_write(path, &json)
}

/// Reads a run's `summary.json`.
pub fn read_summary(path: &Path) -> Result<RunSummary> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Data { path: PathBuf::from(path), what: e.to_string() })
}
