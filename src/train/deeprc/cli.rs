//! The command line of the DeepRC experiment: `lwpf train deeprc`,
//! `lwpf grid deeprc` and `lwpf data implant`, each an [`Args`] struct with a
//! `run` function, so `main.rs` only dispatches.

use std::path::PathBuf;

use clap::Args;
use log::{info, warn};

use super::grid::{DeepRcGrid, run_grid};
use super::{
    DEFAULT_BATCH, DEFAULT_EVAL_EVERY, DEFAULT_FOLDS, DEFAULT_LR, DEFAULT_SAMPLE, DEFAULT_STEPS,
    DEFAULT_TOP_FRACTION, DeepRcSummary, DeepRcTrainConfig, default_out, train,
};
use crate::data::repertoire::{self, ImplantConfig};
use crate::error::Result;
use crate::train::bitpattern::{ForgetArg, ForgetKind};
use crate::train::set_threads;

/// Options shared by a single run and the grid.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Folder with metadata.tsv and the repertoires (e.g. from `lwpf data implant`).
    #[arg(long)]
    pub data: PathBuf,
    /// Metadata column naming each repertoire file.
    #[arg(long, default_value = "ID")]
    pub id_column: String,
    /// Metadata column holding the label.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Value of the label column that marks a positive bag.
    #[arg(long, default_value = "1")]
    pub positive: String,
    /// Scale the amino-acid channels by ln(max(count, 1)) (the paper's CMV
    /// cohort); a sequence seen once then has all-zero amino-acid channels.
    #[arg(long)]
    pub log_counts: bool,
    /// Optimizer steps per fold.
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    pub steps: u64,
    /// Validate every this many steps.
    #[arg(long, default_value_t = DEFAULT_EVAL_EVERY)]
    pub eval_every: u64,
    /// Bags per step.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = DEFAULT_LR)]
    pub lr: f32,
    /// Rows sampled per training bag and step (with replacement, unique kept).
    #[arg(long, default_value_t = DEFAULT_SAMPLE)]
    pub sample: usize,
    /// Share of each bag, by attention logit, in the differentiable pass.
    #[arg(long, default_value_t = DEFAULT_TOP_FRACTION)]
    pub top_fraction: f64,
    /// Cross-validation folds (each tests once; the one before it validates).
    #[arg(long, default_value_t = DEFAULT_FOLDS)]
    pub folds: usize,
    /// Seeds the folds, the initialization, the sampling and the threshold draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl DataArgs {
    fn config(&self, forget: ForgetKind) -> DeepRcTrainConfig {
        let mut c = DeepRcTrainConfig::new(self.data.clone(), forget);
        c.id_column = self.id_column.clone();
        c.label_column = self.label_column.clone();
        c.positive = self.positive.clone();
        c.log_counts = self.log_counts;
        c.steps = self.steps;
        c.eval_every = self.eval_every;
        c.batch = self.batch;
        c.lr = self.lr;
        c.sample = self.sample;
        c.top_fraction = self.top_fraction;
        c.folds = self.folds;
        c.seed = self.seed;
        c
    }
}

/// `lwpf train deeprc`: one cross-validated DeepRC run.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Forgetting function on the attention logits (pfu: median preset).
    #[arg(long, value_enum, default_value = "none")]
    pub forget: ForgetArg,
    /// Convolution kernels n_k.
    #[arg(long, default_value_t = 32)]
    pub kernels: usize,
    /// Kernel width n_c.
    #[arg(long, default_value_t = 9)]
    pub width: usize,
    /// Train only these folds, 0-based, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    pub fold: Vec<usize>,
    /// Where metrics.jsonl, summary.json, checkpoints and curves go
    /// [default: runs/deeprc/NAME, NAME like nc9-nk32-none].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl TrainArgs {
    pub fn run(&self) -> Result<DeepRcSummary> {
        set_threads(self.data.threads)?;
        let mut cfg = self.data.config(self.forget.into());
        cfg.kernels = self.kernels;
        cfg.width = self.width;
        cfg.only_folds = self.fold.clone();
        let out = self.out.clone().unwrap_or_else(|| default_out(&cfg));
        let s = train(&cfg, &out, !self.data.no_progress)?;
        info!("summary written to {}", out.join("summary.json").display());
        for f in &s.folds {
            println!(
                "fold {}: test AUC {}, balanced accuracy {:.3}, F1 {:.3}{}",
                f.fold,
                f.test.auc.map_or("n/a".into(), |a| format!("{a:.3}")),
                f.test.balanced_accuracy,
                f.test.f1,
                f.test.recovery.as_ref().map_or(String::new(), |r| format!(
                    ", recovery precision@k {:.3}",
                    r.precision_at_k
                ))
            );
        }
        println!(
            "{}: test AUC {:.3} +- {:.3} over {} folds, {:.1} steps/s, peak memory {:.0} MiB, \
             {:.0} s",
            s.name,
            s.auc_mean,
            s.auc_std,
            s.folds.len(),
            s.steps_per_s,
            s.peak_rss_mib,
            s.wall_time_s
        );
        Ok(s)
    }
}

/// `lwpf grid deeprc`: the paper's kernel grid x {none, relu, pfu}.
#[derive(Args, Clone, Debug)]
pub struct GridArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Kernel widths n_c.
    #[arg(long, value_delimiter = ',', default_value = "7,9")]
    pub widths: Vec<usize>,
    /// Kernel counts n_k.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub kernels: Vec<usize>,
    /// Variants [default: all three].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub forgets: Vec<ForgetArg>,
    /// Where runs/, results.csv, table.md and grid.{png,svg} go.
    #[arg(long, default_value = "runs/deeprc-grid")]
    pub out: PathBuf,
    /// Retrain runs that already have a summary with the same configuration
    /// (needed after regenerating the data into the same folder).
    #[arg(long)]
    pub force: bool,
}

impl GridArgs {
    pub fn run(&self) -> Result<Vec<DeepRcSummary>> {
        set_threads(self.data.threads)?;
        let mut grid = DeepRcGrid::paper(self.data.config(ForgetKind::None), self.out.clone());
        grid.widths = self.widths.clone();
        grid.kernels = self.kernels.clone();
        if !self.forgets.is_empty() {
            grid.forgets = self.forgets.iter().map(|&f| f.into()).collect();
        }
        grid.force = self.force;
        grid.progress = !self.data.no_progress;
        let summaries = run_grid(&grid)?;
        println!("table written to {}", self.out.join("table.md").display());
        Ok(summaries)
    }
}

/// `lwpf data implant`: real background repertoires with real epitope-specific
/// sequences implanted into the positive bags.
#[derive(Args, Clone, Debug)]
pub struct ImplantArgs {
    /// Folder of background repertoire files (read recursively).
    #[arg(long)]
    pub background: PathBuf,
    /// Folder (or epitope subfolder) of signal sequences, e.g. deeptcr-antigens/Human_Antigens/A2-GILGFVFTL.
    #[arg(long)]
    pub signals: PathBuf,
    /// Share of each positive bag replaced by signal sequences (at least one).
    #[arg(long, allow_negative_numbers = true)]
    pub witness_rate: f64,
    /// Bags in all, positive and negative.
    #[arg(long, default_value_t = ImplantConfig::default().bags)]
    pub bags: usize,
    /// Sequences per bag.
    #[arg(long, default_value_t = ImplantConfig::default().bag_size)]
    pub bag_size: usize,
    /// Share of bags that are positive.
    #[arg(long, default_value_t = ImplantConfig::default().positive_fraction)]
    pub positive_fraction: f64,
    /// Seeds every draw; one seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for repertoires/, metadata.tsv, implanted.tsv and generator.json.
    #[arg(long)]
    pub out: PathBuf,
}

impl ImplantArgs {
    pub fn run(&self) -> Result<()> {
        let (background, reports) = repertoire::read_dir_pool(&self.background)?;
        let dropped: usize = reports.iter().map(|r| r.rows - r.kept).sum();
        info!(
            "background: {} files, {} sequences kept over the files (before removing \
             repeats and signal), {dropped} rows dropped or merged",
            background.len(),
            background.iter().map(|r| r.len()).sum::<usize>()
        );
        let (signals, _) = repertoire::read_dir_pool(&self.signals)?;
        let cfg = ImplantConfig {
            bags: self.bags,
            bag_size: self.bag_size,
            witness_rate: self.witness_rate,
            positive_fraction: self.positive_fraction,
            seed: self.seed,
        };
        let generated = repertoire::implant(&background, &signals, &cfg)?;
        let rate = cfg.witnesses() as f64 / cfg.bag_size as f64;
        if (rate - cfg.witness_rate).abs() > 0.1 * cfg.witness_rate {
            warn!(
                "{} witnesses per positive bag of {}: a witness rate of {rate}, not the {} asked",
                cfg.witnesses(),
                cfg.bag_size,
                cfg.witness_rate
            );
        }
        repertoire::write_generated(&generated, &self.out)?;
        println!(
            "{} bags ({} positive) of {} sequences written to {}",
            self.bags,
            generated.dataset.positives(),
            self.bag_size,
            self.out.display()
        );
        Ok(())
    }
}
