//! The bit-pattern experiment of the paper's section 4.1: six Hopfield
//! networks trained with and without LwPF on multiple-instance bags of bit
//! patterns (MODELS.md 1.4, 1.5).
//!
//! - [`train_run`]: one network, one variant, one seed; writes
//!   `metrics.jsonl` and `summary.json`.
//! - [`run_grid`]: every network x setting x variant over seeds, then
//!   `results.csv`, `table.md` and the paper's Fig. 3 (`fig3.png`, `fig3.svg`).
//! - [`figure::save_fig3`]: the figure again from finished runs.
//!
//! The command line (`lwpf train bitpattern`, `lwpf grid bitpattern`,
//! `lwpf plot`) is [`TrainArgs`], [`GridArgs`] and [`PlotArgs`] with their
//! `run` functions, so `main.rs` only dispatches.

pub mod figure;
pub mod grid;
pub mod run;

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use log::info;

pub use grid::{GridConfig, GridReport, run_grid};
pub use run::{ForgetKind, RunConfig, RunSummary, train_run};

use crate::error::{Error, Result};
use crate::models::bitpattern::{NetKind, Setting};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetArg {
    /// `Hopfield`, self-association over the bag.
    Hopfield,
    /// `HopfieldPooling`, one trainable query.
    Pooling,
    /// `HopfieldLayer`, a trainable lookup table.
    Lookup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SettingArg {
    /// hopfield-layers' defaults.
    Default,
    /// The demo's adapted options (8 heads, 3 update steps, beta 0.25,
    /// dropout 0.5; for lookup: training instances as lookup patterns).
    Adapted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ForgetArg {
    /// Plain attention, the baseline.
    None,
    /// Threshold 0, bias 0.
    Relu,
    /// Partial forgetting unit, median preset (noise std 1e-4, bias = threshold).
    Pfu,
}

impl From<NetArg> for NetKind {
    fn from(a: NetArg) -> NetKind {
        match a {
            NetArg::Hopfield => NetKind::Hopfield,
            NetArg::Pooling => NetKind::Pooling,
            NetArg::Lookup => NetKind::Lookup,
        }
    }
}

impl From<SettingArg> for Setting {
    fn from(a: SettingArg) -> Setting {
        match a {
            SettingArg::Default => Setting::Default,
            SettingArg::Adapted => Setting::Adapted,
        }
    }
}

impl From<ForgetArg> for ForgetKind {
    fn from(a: ForgetArg) -> ForgetKind {
        match a {
            ForgetArg::None => ForgetKind::None,
            ForgetArg::Relu => ForgetKind::Relu,
            ForgetArg::Pfu => ForgetKind::Pfu,
        }
    }
}

/// `lwpf train bitpattern`: one network on the bit-pattern data.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    #[arg(long, value_enum)]
    pub net: NetArg,
    #[arg(long, value_enum, default_value = "default")]
    pub setting: SettingArg,
    /// Forgetting function of the Hopfield layer.
    #[arg(long, value_enum, default_value = "none")]
    pub forget: ForgetArg,
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    /// Seeds the data, the initialization and every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where metrics.jsonl and summary.json go [default: runs/bitpattern/NAME].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads; the tensors are tiny, one is fastest.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `lwpf grid bitpattern`: the whole experiment and its report.
#[derive(Args, Clone, Debug)]
pub struct GridArgs {
    /// Seeds per cell.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    /// Runs trained at once [default: one per core].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Where runs/, results.csv, table.md and fig3.{png,svg} go.
    #[arg(long, default_value = "runs/bitpattern-grid")]
    pub out: PathBuf,
    /// Only these networks [default: all three].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub nets: Vec<NetArg>,
    /// Only these settings [default: both].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub settings: Vec<SettingArg>,
    /// Only these variants [default: all three].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub forgets: Vec<ForgetArg>,
    /// Retrain runs that already have a summary with the same configuration.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub no_progress: bool,
}

/// `lwpf plot`: redraws the figure from runs on disk.
#[derive(Args, Clone, Debug)]
pub struct PlotArgs {
    /// Run directories, or directories above them (a grid's output).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where the figure goes [default: the first directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File name of the figure, without extension.
    #[arg(long, default_value = "fig3")]
    pub name: String,
}

impl TrainArgs {
    pub fn config(&self) -> RunConfig {
        let mut c =
            RunConfig::new(self.net.into(), self.setting.into(), self.forget.into(), self.seed);
        c.steps = self.steps;
        c
    }

    /// Trains and prints the outcome.
    pub fn run(&self) -> Result<RunSummary> {
        if self.threads == 0 {
            return Err(Error::InvalidConfig { what: "--threads must be positive".into() });
        }
        let cfg = self.config();
        let out =
            self.out.clone().unwrap_or_else(|| PathBuf::from("runs/bitpattern").join(cfg.name()));
        let pb = if self.no_progress {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::new(cfg.steps);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] step {pos}/{len} {msg} ({elapsed} / eta {eta})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            pb.set_style(style);
            pb.set_prefix(cfg.name());
            pb
        };
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(self.threads).build().map_err(|e| {
                Error::InvalidConfig { what: format!("cannot start {} threads: {e}", self.threads) }
            })?;
        let summary = pool.install(|| train_run(&cfg, Some(&out), &pb))?;
        pb.finish_and_clear();
        info!("summary written to {}", out.join("summary.json").display());
        println!(
            "{}: final training loss {:.4}, eval accuracy {:.3} (best {:.3} at step {}), \
             forgotten {:.3}, {:.1} s ({:.0} steps/s)",
            summary.name,
            summary.final_train_loss,
            summary.final_eval_accuracy,
            summary.best_eval_accuracy,
            summary.best_eval_step,
            summary.forgotten_fraction_per_layer.first().copied().unwrap_or(0.0),
            summary.wall_time_s,
            summary.steps_per_s
        );
        Ok(summary)
    }
}

impl GridArgs {
    pub fn config(&self) -> GridConfig {
        let jobs = self
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut c = GridConfig::paper(self.out.clone(), jobs);
        c.seeds = self.seeds;
        c.first_seed = self.first_seed;
        c.steps = self.steps;
        if !self.nets.is_empty() {
            c.nets = self.nets.iter().map(|&n| n.into()).collect();
        }
        if !self.settings.is_empty() {
            c.settings = self.settings.iter().map(|&s| s.into()).collect();
        }
        if !self.forgets.is_empty() {
            c.forgets = self.forgets.iter().map(|&f| f.into()).collect();
        }
        c.force = self.force;
        c.progress = !self.no_progress;
        c
    }

    /// Runs the grid and prints the table.
    pub fn run(&self) -> Result<GridReport> {
        let report = run_grid(&self.config())?;
        println!("{}", report.table);
        for f in &report.files {
            println!("wrote {}", f.display());
        }
        println!("grid wall time {:.1} s ({} runs trained)", report.wall_time_s, report.trained);
        Ok(report)
    }
}

impl PlotArgs {
    /// Redraws the figure; returns the files written.
    pub fn run(&self) -> Result<Vec<PathBuf>> {
        use crate::train::deeprc::grid as deeprc_grid;
        let is_deeprc_grid = |d: &PathBuf| deeprc_grid::load_grid(d).is_ok_and(|s| !s.is_empty());
        if self.dirs.iter().all(is_deeprc_grid) {
            let mut files = vec![];
            for d in &self.dirs {
                deeprc_grid::write_report(d, &deeprc_grid::load_grid(d)?)?;
                files
                    .extend(["table.md", "results.csv", "grid.png", "grid.svg"].map(|f| d.join(f)));
            }
            for f in &files {
                println!("wrote {}", f.display());
            }
            return Ok(files);
        }
        if self.dirs.iter().all(|d| crate::train::deeprc::read_summary(d).is_ok()) {
            let mut files = vec![];
            for d in &self.dirs {
                files.extend(crate::train::deeprc::plot::save_curves(d)?);
            }
            for f in &files {
                println!("wrote {}", f.display());
            }
            return Ok(files);
        }
        if self.dirs.iter().all(|d| crate::train::vit_plot::is_vit_run(d)) {
            let out = self.out.clone().unwrap_or_else(|| self.dirs[0].clone());
            let name = if self.name == "fig3" { "curves" } else { self.name.as_str() };
            let files = crate::train::vit_plot::plot_runs(&self.dirs, &out, name)?;
            for f in &files {
                println!("wrote {}", f.display());
            }
            return Ok(files);
        }
        let runs = grid::load_curves(&self.dirs)?;
        if runs.is_empty() {
            return Err(Error::InvalidConfig {
                what: format!("no metrics.jsonl under {:?}", self.dirs),
            });
        }
        let out = self.out.clone().unwrap_or_else(|| self.dirs[0].clone());
        let files = figure::save_fig3(&runs, &out, &self.name)?;
        for f in &files {
            println!("wrote {}", f.display());
        }
        Ok(files)
    }
}
