//! The paper's Table 1 on our data: every kernel setting (n_c in {7, 9},
//! n_k in {8, 16, 32}) x {none, relu, pfu}, each a cross-validated run, then
//! `results.csv`, `table.md` (mean +- std test AUC x 100 over folds) and
//! `grid.png`/`grid.svg`. A run whose `summary.json` already holds the same
//! configuration and the same data (by fingerprint) is read back instead of
//! retrained, so an interrupted grid resumes where it stopped.
//!
//! The data are read once for the whole grid, so a cell's `wall_time_s` is
//! its training alone, without the loading a single `train` run counts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use log::info;

use super::{
    DeepRcSummary, DeepRcTrainConfig, data_fingerprint, load_data, read_summary, train_on,
};
use crate::error::{Error, Result};
use crate::plot::{Figure, Panel, Series};
use crate::train::atomic_write;
use crate::train::bitpattern::ForgetKind;
use crate::train::bitpattern::figure::color;

/// What the grid runs: `base` with each width, kernel count and variant.
#[derive(Clone, Debug)]
pub struct DeepRcGrid {
    pub base: DeepRcTrainConfig,
    pub widths: Vec<usize>,
    pub kernels: Vec<usize>,
    pub forgets: Vec<ForgetKind>,
    pub out: PathBuf,
    pub force: bool,
    pub progress: bool,
}

impl DeepRcGrid {
    /// The paper's grid over `base`.
    pub fn paper(base: DeepRcTrainConfig, out: PathBuf) -> DeepRcGrid {
        DeepRcGrid {
            base,
            widths: vec![7, 9],
            kernels: vec![8, 16, 32],
            forgets: ForgetKind::ALL.to_vec(),
            out,
            force: false,
            progress: true,
        }
    }

    /// Every cell once, in order (repeated values are dropped).
    pub fn runs(&self) -> Vec<DeepRcTrainConfig> {
        let mut runs: Vec<DeepRcTrainConfig> = vec![];
        for &width in &self.widths {
            for &kernels in &self.kernels {
                for &forget in &self.forgets {
                    let cfg = DeepRcTrainConfig { width, kernels, forget, ..self.base.clone() };
                    if !runs.contains(&cfg) {
                        runs.push(cfg);
                    }
                }
            }
        }
        runs
    }
}

/// Runs (or reads back) every cell and writes the report; returns the summaries.
pub fn run_grid(grid: &DeepRcGrid) -> Result<Vec<DeepRcSummary>> {
    let runs = grid.runs();
    if runs.is_empty() {
        return Err(Error::InvalidConfig { what: "the grid has no cells".into() });
    }
    // Every cell is checked before the first trains: a bad value at the end
    // of a list must not cost the cells before it.
    for cfg in &runs {
        cfg.validate()?;
    }
    // The cells differ in the model only, so they all train on the base's data.
    let data = load_data(&grid.base)?;
    let fingerprint = data_fingerprint(&data);
    let mut summaries = vec![];
    for (i, cfg) in runs.iter().enumerate() {
        let dir = grid.out.join("runs").join(cfg.name());
        let done = read_summary(&dir)
            .ok()
            .filter(|s| s.config == *cfg && s.data_fingerprint == fingerprint && !grid.force);
        let s = match done {
            Some(s) => {
                info!("[{}/{}] {}: done before, read back", i + 1, runs.len(), cfg.name());
                s
            }
            None => {
                info!("[{}/{}] {}", i + 1, runs.len(), cfg.name());
                train_on(cfg, &data, &dir, grid.progress)?
            }
        };
        summaries.push(s);
    }
    write_report(&grid.out, &summaries)?;
    Ok(summaries)
}

/// The summaries of a finished grid's runs (`DIR/runs/*/summary.json`), in
/// the grid's order, for redrawing its report.
pub fn load_grid(dir: &Path) -> Result<Vec<DeepRcSummary>> {
    let runs = dir.join("runs");
    let entries = std::fs::read_dir(&runs).map_err(|e| Error::io(&runs, e))?;
    let mut summaries = vec![];
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&runs, e))?.path();
        if path.join("summary.json").is_file() {
            summaries.push(read_summary(&path)?);
        }
    }
    summaries.sort_by_key(|s| (s.config.width, s.config.kernels, s.config.forget));
    Ok(summaries)
}

fn cell(s: Option<&DeepRcSummary>) -> String {
    match s {
        Some(s) if s.auc_mean.is_finite() => {
            let found = s.folds.iter().filter(|f| f.test.auc.is_some_and(|a| a >= 0.9)).count();
            format!(
                "{:.1} +- {:.1} ({found}/{})",
                100.0 * s.auc_mean,
                100.0 * s.auc_std,
                s.folds.len()
            )
        }
        _ => "-".into(),
    }
}

/// A markdown table with a row per setting `(n_c, n_k)` and a column per variant.
fn table(
    md: &mut String,
    settings: &[(usize, usize)],
    forgets: &[ForgetKind],
    cell: impl Fn(usize, usize, ForgetKind) -> String,
) {
    md.push_str("| n_c | n_k |");
    for f in forgets {
        let _ = write!(md, " {} |", f.name());
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(forgets.len()));
    md.push('\n');
    for &(w, k) in settings {
        let _ = write!(md, "| {w} | {k} |");
        for &f in forgets {
            let _ = write!(md, " {} |", cell(w, k, f));
        }
        md.push('\n');
    }
}

/// `results.csv`, `table.md` and the figure.
pub fn write_report(out: &Path, summaries: &[DeepRcSummary]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut csv = String::from(
        "n_c,n_k,forget,folds,auc_mean,auc_std,balanced_accuracy,f1,recovery_precision_at_k,\
         recovery_recall_in_top,steps_per_s,wall_time_s\n",
    );
    for s in summaries {
        let c = &s.config;
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{},{:.2},{:.1}",
            c.width,
            c.kernels,
            c.forget.name(),
            s.folds.len(),
            s.auc_mean,
            s.auc_std,
            s.balanced_accuracy_mean,
            s.f1_mean,
            opt(s.recovery_precision_at_k),
            opt(s.recovery_recall_in_top),
            s.steps_per_s,
            s.wall_time_s
        );
    }
    atomic_write(&out.join("results.csv"), csv.as_bytes())?;

    let mut settings: Vec<(usize, usize)> =
        summaries.iter().map(|s| (s.config.width, s.config.kernels)).collect();
    settings.sort();
    settings.dedup();
    let mut forgets: Vec<ForgetKind> = summaries.iter().map(|s| s.config.forget).collect();
    forgets.sort();
    forgets.dedup();
    let find = |w: usize, k: usize, f: ForgetKind| {
        summaries
            .iter()
            .find(|s| s.config.width == w && s.config.kernels == k && s.config.forget == f)
    };
    let folds = summaries.first().map_or(0, |s| s.folds.len());
    let mut md = format!(
        "Test ROC AUC x 100, mean +- std over {folds} folds (each fold: the checkpoint with the \
         lowest validation loss); in brackets, the folds with a test AUC of at least 0.9.\n\n"
    );
    table(&mut md, &settings, &forgets, |w, k, f| cell(find(w, k, f)));
    if summaries.iter().any(|s| s.recovery_precision_at_k.is_some()) {
        md.push_str(
            "\nAttention recovery: share of implanted sequences among the k highest attention \
             logits of each positive test bag (k = its implanted count), mean over folds.\n\n",
        );
        table(&mut md, &settings, &forgets, |w, k, f| {
            let v = find(w, k, f).and_then(|s| s.recovery_precision_at_k);
            v.map_or("-".into(), |v| format!("{v:.3}"))
        });
    }
    atomic_write(&out.join("table.md"), md.as_bytes())?;

    let mut widths: Vec<usize> = settings.iter().map(|s| s.0).collect();
    widths.dedup();
    let mut panels = vec![];
    for (row, metric) in ["test ROC AUC", "attention recovery"].iter().enumerate() {
        for &w in &widths {
            let mut p = Panel {
                title: format!("{metric}, n_c = {w}"),
                x_label: "kernels n_k".into(),
                y_label: if row == 0 { "AUC".into() } else { "precision at k".into() },
                series: vec![],
                y_range: Some((0.0, 1.0)),
            };
            for &f in &forgets {
                let (mut x, mut y, mut lo, mut hi) = (vec![], vec![], vec![], vec![]);
                for &(_, k) in settings.iter().filter(|s| s.0 == w) {
                    let Some(s) = find(w, k, f) else { continue };
                    let (m, sd) = if row == 0 {
                        (s.auc_mean, s.auc_std)
                    } else {
                        let Some(r) = s.recovery_precision_at_k else { continue };
                        (r, 0.0)
                    };
                    if m.is_finite() {
                        x.push(k as f64);
                        y.push(m);
                        lo.push(m - sd);
                        hi.push(m + sd);
                    }
                }
                if !x.is_empty() {
                    let band = (row == 0).then_some((lo, hi));
                    p.series.push(Series { label: f.name().into(), color: color(f), x, y, band });
                }
            }
            if !p.series.is_empty() {
                panels.push(p);
            }
        }
    }
    let legend = forgets.iter().map(|&f| (f.name().to_string(), color(f))).collect();
    let fig = Figure {
        title: "DeepRC grid (band: +- std over folds)".into(),
        cols: widths.len().max(1),
        panels,
        legend,
        panel_size: (440, 320),
    };
    fig.save_png(&out.join("grid.png"))?;
    fig.save_svg(&out.join("grid.svg"))?;
    Ok(())
}
