//! Training a vision transformer on CIFAR-10 (paper section 4.3, at CPU scale).
//!
//! Every model runs on 32 x 32 images with patch 4 (64 patches and the class
//! token): the paper resizes CIFAR to 224 px, which is out of reach on a CPU,
//! and this crate has no resize. Each epoch ends with an evaluation on the
//! test set and an atomic checkpoint; `metrics.jsonl` gets a line per logged
//! step and per evaluation, `summary.json` the outcome.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use log::{info, warn};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::metrics::MetricsWriter;
use crate::autograd::{ParamStore, Tape, Tensor};
use crate::data::cifar::{self, CifarSet};
use crate::data::{self, Augment, Transform};
use crate::error::{Error, Result};
use crate::models::vit::{Vit, VitConfig, mix, step_seed};
use crate::op::{CallStats, Forgetting};
use crate::optim::{AdamW, CosineSchedule, Optimizer, Sgd};

/// The test accuracy the small configuration must reach.
pub const ACCURACY_GOAL: f64 = 0.45;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    AdamW,
    Sgd,
}

/// Everything a training run depends on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VitTrainConfig {
    /// `cpu-small`, `deit-tiny`, `deit-small` or `deit-base`.
    pub model: String,
    pub forgetting: Forgetting,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerKind,
    /// Peak learning rate, reached at the end of the warmup.
    pub lr: f32,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f32,
    pub warmup_epochs: f32,
    pub weight_decay: f32,
    /// SGD momentum (unused by AdamW).
    pub momentum: f32,
    /// Clip the global gradient norm to this value.
    pub clip_grad: Option<f32>,
    pub label_smoothing: f32,
    /// Dropout (timm's `drop_rate`) and attention dropout.
    pub drop: f32,
    pub attn_drop: f32,
    pub seed: u64,
    pub data_dir: PathBuf,
    pub out: PathBuf,
    pub eval_batch: usize,
    /// Write a `step` metrics line every this many steps.
    pub log_every: usize,
    /// Use only the first this many training / test images (smoke runs).
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// Draw a progress bar (only shown on a terminal).
    pub progress: bool,
}

impl VitTrainConfig {
    /// Defaults for `model` and `optimizer`. AdamW: the small configuration's
    /// tuned recipe; SGD: the paper's (lr 0.01, weight decay 1e-4, momentum 0.9).
    pub fn new(model: &str, forgetting: Forgetting, optimizer: OptimizerKind) -> VitTrainConfig {
        let (lr, weight_decay) = match optimizer {
            OptimizerKind::AdamW => (2e-3, 0.05),
            OptimizerKind::Sgd => (0.01, 1e-4),
        };
        VitTrainConfig {
            model: model.to_string(),
            forgetting,
            epochs: 10,
            batch: 64,
            optimizer,
            lr,
            min_lr: 1e-5,
            warmup_epochs: 1.0,
            weight_decay,
            momentum: 0.9,
            clip_grad: None,
            label_smoothing: 0.0,
            drop: 0.0,
            attn_drop: 0.0,
            seed: 0,
            data_dir: cifar::default_cifar10_dir(),
            out: PathBuf::from("runs/vit"),
            eval_batch: 250,
            log_every: 10,
            train_limit: None,
            test_limit: None,
            progress: true,
        }
    }

    /// The model this run trains: the named configuration at 32 px, patch 4,
    /// 10 classes, with the run's forgetting function and dropouts.
    pub fn model_config(&self) -> Result<VitConfig> {
        let mut m = VitConfig::by_name(&self.model)?;
        m.img_size = cifar::SIDE;
        m.patch = 4;
        m.num_classes = 10;
        m.forgetting = self.forgetting;
        m.drop = self.drop;
        m.attn_drop = self.attn_drop;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        if self.epochs == 0 || self.batch == 0 || self.eval_batch == 0 || self.log_every == 0 {
            return bad("epochs, batch, eval batch and log interval must be positive".into());
        }
        for (name, v) in [("lr", self.lr), ("min lr", self.min_lr)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} {v} must be finite and >= 0"));
            }
        }
        if self.lr == 0.0 {
            return bad("lr must be positive".into());
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(format!("warmup {} epochs", self.warmup_epochs));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {}", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {} outside [0, 1)", self.momentum));
        }
        if let Some(c) = self.clip_grad
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("gradient clip {c} must be finite and > 0"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("label smoothing {} outside [0, 1)", self.label_smoothing));
        }
        if self.train_limit == Some(0) || self.test_limit == Some(0) {
            return bad("image limits must be positive".into());
        }
        self.model_config().map(|_| ())
    }
}

/// Loss, accuracy and forgetting of one evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub images: usize,
    /// Fraction of attention entries forgotten, per layer.
    pub forgotten_fraction: Vec<f64>,
    pub seconds: f64,
}

/// One epoch's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub train_images_per_s: f64,
    pub eval: EvalResult,
}

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub config: VitTrainConfig,
    pub model: VitConfig,
    pub parameters: usize,
    pub threads: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub eval_accuracy: f64,
    pub eval_loss: f64,
    pub train_loss: f64,
    /// Mean over all training steps of the fraction of attention entries
    /// forgotten, per layer.
    pub forgotten_fraction_per_layer: Vec<f64>,
    /// The same in the last evaluation (deterministic threshold).
    pub eval_forgotten_fraction_per_layer: Vec<f64>,
    pub wall_time_s: f64,
    /// Training throughput (evaluation excluded).
    pub train_images_per_s: f64,
    pub accuracy_goal: f64,
    pub goal_reached: bool,
    pub epochs: Vec<EpochSummary>,
    pub checkpoint: PathBuf,
}

#[derive(Serialize)]
struct TrainRecord<'a> {
    kind: &'static str,
    epoch: usize,
    step: u64,
    lr: f32,
    loss: f64,
    accuracy: f64,
    grad_norm: f64,
    images_per_s: f64,
    forgotten_fraction: &'a [f64],
}

#[derive(Serialize)]
struct EvalRecord<'a> {
    kind: &'static str,
    epoch: usize,
    step: u64,
    #[serde(flatten)]
    eval: &'a EvalResult,
}

/// Index of the largest logit of each row.
fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
                )
                .0
        })
        .collect()
}

/// Per-layer running sums of the fraction forgotten.
#[derive(Default)]
struct ForgetTally {
    sums: Vec<f64>,
    calls: u64,
}

impl ForgetTally {
    fn add(&mut self, stats: &[CallStats]) {
        if self.sums.len() < stats.len() {
            self.sums.resize(stats.len(), 0.0);
        }
        for (s, st) in self.sums.iter_mut().zip(stats) {
            *s += st.forgotten_fraction();
        }
        self.calls += 1;
    }

    fn means(&self) -> Vec<f64> {
        let n = self.calls.max(1) as f64;
        self.sums.iter().map(|s| s / n).collect()
    }
}

/// The model's loss and accuracy on `set` (first `limit` images), on an
/// inference tape: deterministic threshold, no dropout, nothing recorded.
pub fn evaluate(vit: &Vit, store: &ParamStore, set: &CifarSet, batch: usize) -> Result<EvalResult> {
    let start = Instant::now();
    let classes = vit.config.num_classes;
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let mut tally = ForgetTally::default();
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(batch) {
        let images = data::batch(set, chunk, &vec![Transform::NONE; chunk.len()])?;
        let labels: Vec<usize> = chunk.iter().map(|&i| set.label(i)).collect();
        let mut tape = Tape::inference(store);
        let x = tape.input(images);
        let logits = vit.forward(&mut tape, x, false, 0)?;
        let loss = tape.cross_entropy(logits, &labels, 0.0)?;
        loss_sum += tape.value(loss).item().unwrap_or(f32::NAN) as f64 * chunk.len() as f64;
        let pred = argmax_rows(tape.value(logits).data(), classes);
        correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
        tally.add(tape.attention_stats());
    }
    let n = set.len().max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum / n,
        accuracy: correct as f64 / n,
        images: set.len(),
        forgotten_fraction: tally.means(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn truncate(set: &mut CifarSet, limit: Option<usize>) {
    if let Some(n) = limit
        && n < set.len()
    {
        set.images.truncate(n * cifar::IMAGE_BYTES);
        set.labels.truncate(n);
        set.coarse_labels.truncate(n.min(set.coarse_labels.len()));
    }
}

fn progress_bar(steps: u64, epoch: usize, epochs: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(steps);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] step {pos}/{len} {msg} ({elapsed} / eta {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    pb
}

/// Trains, evaluates after every epoch, checkpoints, and writes the summary.
pub fn train(cfg: &VitTrainConfig) -> Result<TrainSummary> {
    let start = Instant::now();
    cfg.validate()?;
    let model_cfg = cfg.model_config()?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;

    let mut split = cifar::load_cifar10(&cfg.data_dir)?;
    truncate(&mut split.train, cfg.train_limit);
    truncate(&mut split.test, cfg.test_limit);
    let (train_set, test_set) = (&split.train, &split.test);
    info!(
        "data: {} training images from {:?}, {} test images",
        train_set.len(),
        split.train_files,
        test_set.len()
    );

    let mut store = ParamStore::new();
    let vit = Vit::new(model_cfg.clone(), &mut store, mix(cfg.seed))?;
    let threads = rayon::current_num_threads();
    info!(
        "model {}: embed {}, depth {}, heads {}, {} tokens, {} parameters; forgetting {}; \
         {} threads",
        model_cfg.name,
        model_cfg.embed,
        model_cfg.depth,
        model_cfg.heads,
        model_cfg.tokens(),
        store.num_elements(),
        cfg.forgetting.name(),
        threads
    );

    let mut optimizer: Box<dyn Optimizer> = match cfg.optimizer {
        OptimizerKind::AdamW => Box::new(AdamW::new(&store, cfg.weight_decay)),
        OptimizerKind::Sgd => Box::new(Sgd::new(&store, cfg.momentum, cfg.weight_decay)),
    };
    let steps_per_epoch = train_set.len().div_ceil(cfg.batch) as u64;
    let schedule = CosineSchedule {
        base_lr: cfg.lr,
        min_lr: cfg.min_lr.min(cfg.lr),
        warmup_steps: (cfg.warmup_epochs as f64 * steps_per_epoch as f64).round() as u64,
        total_steps: steps_per_epoch * cfg.epochs as u64,
    };
    info!(
        "{:?}: lr {} (warmup {} steps, cosine to {} at step {}), weight decay {}, batch {}",
        cfg.optimizer,
        cfg.lr,
        schedule.warmup_steps,
        schedule.min_lr,
        schedule.total_steps,
        cfg.weight_decay,
        cfg.batch
    );

    let mut metrics = MetricsWriter::create(&cfg.out.join("metrics.jsonl"))?;
    let ckpt_path = cfg.out.join("checkpoint.safetensors");
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let mut run_tally = ForgetTally::default();
    let (mut train_seconds, mut train_images) = (0.0f64, 0usize);
    let mut step = 0u64;
    let mut order: Vec<usize> = (0..train_set.len()).collect();

    for epoch in 0..cfg.epochs {
        let epoch_start = Instant::now();
        let mut rng = SmallRng::seed_from_u64(mix(cfg.seed ^ mix(epoch as u64 + 1)));
        order.shuffle(&mut rng);
        let transforms: Vec<Transform> =
            (0..order.len()).map(|_| Transform::draw(&mut rng, Augment::CIFAR)).collect();

        let pb = progress_bar(steps_per_epoch, epoch, cfg.epochs, cfg.progress);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut window = (Instant::now(), 0usize);
        for (b, chunk) in order.chunks(cfg.batch).enumerate() {
            let lr = schedule.lr(step);
            let ts = &transforms[b * cfg.batch..b * cfg.batch + chunk.len()];
            let images = data::batch(train_set, chunk, ts)?;
            let labels: Vec<usize> = chunk.iter().map(|&i| train_set.label(i)).collect();

            let (loss, hits, stats, mut grads) =
                train_step(&vit, &store, images, &labels, cfg, step)?;
            if !loss.is_finite() {
                return Err(Error::Training {
                    step,
                    what: format!("the loss is {loss}; try a lower --lr"),
                });
            }
            let grad_norm = match cfg.clip_grad {
                Some(c) => grads.clip_global_norm(c as f64),
                None => grads.global_norm(),
            };
            optimizer.step(&mut store, &grads, lr)?;

            run_tally.add(&stats);
            loss_sum += loss * chunk.len() as f64;
            correct += hits;
            seen += chunk.len();
            window.1 += chunk.len();
            step += 1;

            let elapsed = window.0.elapsed().as_secs_f64().max(1e-9);
            let rate = window.1 as f64 / elapsed;
            pb.set_message(format!("loss {loss:.4}, {rate:.0} img/s"));
            pb.inc(1);
            if step.is_multiple_of(cfg.log_every as u64) {
                let fractions: Vec<f64> = stats.iter().map(CallStats::forgotten_fraction).collect();
                metrics.write(&TrainRecord {
                    kind: "step",
                    epoch: epoch + 1,
                    step,
                    lr,
                    loss,
                    accuracy: hits as f64 / chunk.len() as f64,
                    grad_norm,
                    images_per_s: rate,
                    forgotten_fraction: &fractions,
                })?;
                window = (Instant::now(), 0);
            }
        }
        pb.finish_and_clear();
        let epoch_train_s = epoch_start.elapsed().as_secs_f64();
        train_seconds += epoch_train_s;
        train_images += seen;

        let eval = evaluate(&vit, &store, test_set, cfg.eval_batch)?;
        metrics.write(&EvalRecord { kind: "eval", epoch: epoch + 1, step, eval: &eval })?;
        let summary = EpochSummary {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            train_images_per_s: seen as f64 / epoch_train_s.max(1e-9),
            eval,
        };
        info!(
            "epoch {}/{}: train loss {:.4}, train accuracy {:.2}%, {:.0} img/s; \
             test loss {:.4}, test accuracy {:.2}% ({:.1} s); forgotten per layer {:?}",
            epoch + 1,
            cfg.epochs,
            summary.train_loss,
            100.0 * summary.train_accuracy,
            summary.train_images_per_s,
            summary.eval.loss,
            100.0 * summary.eval.accuracy,
            summary.eval.seconds,
            run_tally.means().iter().map(|f| (f * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        );

        let mut meta = HashMap::new();
        meta.insert("epoch".to_string(), (epoch + 1).to_string());
        meta.insert("step".to_string(), step.to_string());
        meta.insert("model".to_string(), serde_json::to_string(&model_cfg).unwrap_or_default());
        meta.insert("eval_accuracy".to_string(), summary.eval.accuracy.to_string());
        checkpoint::save(&ckpt_path, &store, meta)?;
        epochs.push(summary);
    }

    let last = epochs
        .last()
        .cloned()
        .ok_or_else(|| Error::InvalidConfig { what: "no epoch ran".into() })?;
    let summary = TrainSummary {
        config: cfg.clone(),
        model: model_cfg,
        parameters: store.num_elements(),
        threads,
        train_images: train_set.len(),
        test_images: test_set.len(),
        eval_accuracy: last.eval.accuracy,
        eval_loss: last.eval.loss,
        train_loss: last.train_loss,
        forgotten_fraction_per_layer: run_tally.means(),
        eval_forgotten_fraction_per_layer: last.eval.forgotten_fraction.clone(),
        wall_time_s: start.elapsed().as_secs_f64(),
        train_images_per_s: train_images as f64 / train_seconds.max(1e-9),
        accuracy_goal: ACCURACY_GOAL,
        goal_reached: last.eval.accuracy >= ACCURACY_GOAL,
        epochs,
        checkpoint: ckpt_path,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Checkpoint {
        path: cfg.out.join("summary.json"),
        what: e.to_string(),
    })?;
    super::atomic_write(&cfg.out.join("summary.json"), &json)?;
    // The curves are a convenience: a failure to draw them loses no result.
    match super::vit_plot::plot_runs(std::slice::from_ref(&cfg.out), &cfg.out, "curves") {
        Ok(files) => info!("drew {}", files[0].display()),
        Err(e) => warn!("could not draw the curves: {e}"),
    }
    if !summary.goal_reached && cfg.model == "cpu-small" && cfg.test_limit.is_none() {
        warn!(
            "test accuracy {:.2}% is below the {:.0}% goal",
            100.0 * summary.eval_accuracy,
            100.0 * ACCURACY_GOAL
        );
    }
    Ok(summary)
}

/// One forward and backward pass: the loss, the number of correct
/// predictions, the attention statistics per layer, and the gradients.
fn train_step(
    vit: &Vit,
    store: &ParamStore,
    images: Tensor,
    labels: &[usize],
    cfg: &VitTrainConfig,
    step: u64,
) -> Result<(f64, usize, Vec<CallStats>, crate::autograd::Grads)> {
    let mut tape = Tape::new(store);
    let x = tape.input(images);
    let logits = vit.forward(&mut tape, x, true, step_seed(cfg.seed, step))?;
    let loss = tape.cross_entropy(logits, labels, cfg.label_smoothing)?;
    let loss_value = tape.value(loss).item().unwrap_or(f32::NAN) as f64;
    let pred = argmax_rows(tape.value(logits).data(), vit.config.num_classes);
    let hits = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    let stats = tape.attention_stats().to_vec();
    let grads = tape.backward(loss)?;
    Ok((loss_value, hits, stats, grads))
}
