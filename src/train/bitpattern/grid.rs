//! The whole experiment: every network, setting and forgetting variant over
//! several seeds, run side by side, then `results.csv`, `table.md` and the
//! figure.
//!
//! The tensors of one run are tiny (32 bags of 16 eight-bit instances), so
//! parallelism goes over runs, never inside an op: each worker thread owns a
//! one-thread rayon pool, and every op of its run stays on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use log::{info, warn};

use super::figure;
use super::run::{ForgetKind, RunConfig, RunSummary, read_summary, train_run};
use crate::error::{Error, Result};
use crate::models::bitpattern::{NetKind, Setting};
use crate::train::atomic_write;
use crate::train::binary::mean_std;

/// What the grid runs and where it writes.
#[derive(Clone, Debug)]
pub struct GridConfig {
    pub nets: Vec<NetKind>,
    pub settings: Vec<Setting>,
    pub forgets: Vec<ForgetKind>,
    pub seeds: u64,
    pub first_seed: u64,
    pub steps: u64,
    /// Runs trained at once.
    pub jobs: usize,
    pub out: PathBuf,
    /// Retrain runs whose summary is already there.
    pub force: bool,
    pub progress: bool,
}

impl GridConfig {
    /// The paper's grid: 3 networks x 2 settings x 3 variants, 5 seeds,
    /// 1,500 steps.
    pub fn paper(out: PathBuf, jobs: usize) -> GridConfig {
        GridConfig {
            nets: NetKind::ALL.to_vec(),
            settings: Setting::ALL.to_vec(),
            forgets: ForgetKind::ALL.to_vec(),
            seeds: 5,
            first_seed: 0,
            steps: 1500,
            jobs,
            out,
            force: false,
            progress: true,
        }
    }

    /// Every run, the slowest first (so that the last ones to finish are short).
    pub fn runs(&self) -> Vec<RunConfig> {
        let mut runs = Vec::new();
        for &net in &self.nets {
            for &setting in &self.settings {
                for &forget in &self.forgets {
                    for seed in self.first_seed..self.first_seed + self.seeds {
                        let mut c = RunConfig::new(net, setting, forget, seed);
                        c.steps = self.steps;
                        runs.push(c);
                    }
                }
            }
        }
        runs.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
        runs
    }
}

/// Rough relative cost of a run (measured on two cores), for the order.
fn cost(c: &RunConfig) -> f64 {
    let base = match (c.net, c.setting) {
        (NetKind::Hopfield, Setting::Adapted) => 6.0,
        (NetKind::Pooling, Setting::Adapted) => 3.0,
        (NetKind::Lookup, _) => 4.0,
        _ => 1.0,
    };
    base * if c.forget == ForgetKind::Pfu { 1.3 } else { 1.0 }
}

/// The outcome of [`run_grid`].
#[derive(Clone, Debug)]
pub struct GridReport {
    pub summaries: Vec<RunSummary>,
    pub wall_time_s: f64,
    /// Runs trained now (the others were found finished).
    pub trained: usize,
    pub table: String,
    pub files: Vec<PathBuf>,
}

/// Runs the grid, then writes `results.csv`, `table.md`, `fig3.png` and
/// `fig3.svg` under `cfg.out`. Each run writes under `cfg.out/runs/NAME/`.
pub fn run_grid(cfg: &GridConfig) -> Result<GridReport> {
    let start = Instant::now();
    if cfg.jobs == 0 || cfg.seeds == 0 {
        return Err(Error::InvalidConfig { what: "--jobs and --seeds must be positive".into() });
    }
    let runs = cfg.runs();
    if runs.is_empty() {
        return Err(Error::InvalidConfig { what: "the grid has no run".into() });
    }
    for r in &runs {
        r.validate()?;
    }
    let runs_dir = cfg.out.join("runs");
    std::fs::create_dir_all(&runs_dir).map_err(|e| Error::io(&runs_dir, e))?;

    // Runs already finished with the same configuration are kept.
    let mut done: Vec<Option<RunSummary>> = runs
        .iter()
        .map(|r| {
            let path = runs_dir.join(r.name()).join("summary.json");
            match read_summary(&path) {
                Ok(s) if !cfg.force && s.config == *r => Some(s),
                _ => None,
            }
        })
        .collect();
    let todo: Vec<usize> = (0..runs.len()).filter(|&i| done[i].is_none()).collect();
    info!(
        "bit-pattern grid: {} runs ({} already finished), {} steps each, {} jobs, into {}",
        runs.len(),
        runs.len() - todo.len(),
        cfg.steps,
        cfg.jobs,
        cfg.out.display()
    );

    let pb = if cfg.progress {
        let pb = ProgressBar::new(todo.len() as u64 * cfg.steps);
        let style = ProgressStyle::with_template(
            "grid [{bar:30}] {percent}% {msg} ({elapsed} / eta {eta})",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        pb.set_style(style);
        pb
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<RunSummary>)>> = Mutex::new(Vec::new());
    let jobs = cfg.jobs.min(todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let pool = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(p) => p,
                    Err(e) => {
                        let err =
                            Error::InvalidConfig { what: format!("cannot start a worker: {e}") };
                        if let Ok(mut r) = results.lock() {
                            r.push((usize::MAX, Err(err)));
                        }
                        return;
                    }
                };
                pool.install(|| {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else { break };
                        let r = &runs[i];
                        let quiet = ProgressBar::hidden();
                        let res = train_run(r, Some(&runs_dir.join(r.name())), &quiet);
                        pb.inc(r.steps);
                        let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
                        pb.set_message(format!("{n}/{} runs", todo.len()));
                        if let Err(e) = &res {
                            warn!("{}: {e}", r.name());
                        }
                        if let Ok(mut out) = results.lock() {
                            out.push((i, res));
                        }
                    }
                });
            });
        }
    });
    pb.finish_and_clear();

    let mut failed = Vec::new();
    let results = results
        .into_inner()
        .map_err(|_| Error::InvalidConfig { what: "a worker panicked".into() })?;
    for (i, res) in results {
        match res {
            Ok(s) => done[i] = Some(s),
            Err(e) => {
                failed.push(format!("{}: {e}", runs.get(i).map(|r| r.name()).unwrap_or_default()))
            }
        }
    }
    let summaries: Vec<RunSummary> = done.into_iter().flatten().collect();
    let wall = start.elapsed().as_secs_f64();

    let mut files = Vec::new();
    let csv = results_csv(&summaries);
    let csv_path = cfg.out.join("results.csv");
    atomic_write(&csv_path, csv.as_bytes())?;
    files.push(csv_path);
    let table = results_table(&summaries, wall, jobs, todo.len());
    let table_path = cfg.out.join("table.md");
    atomic_write(&table_path, table.as_bytes())?;
    files.push(table_path);
    let curves: Vec<_> = summaries.iter().map(|s| (s.config.clone(), s.curve.clone())).collect();
    files.extend(figure::save_fig3(&curves, &cfg.out, "fig3")?);

    if !failed.is_empty() {
        return Err(Error::Training {
            step: 0,
            what: format!("{} of {} runs failed: {}", failed.len(), runs.len(), failed.join("; ")),
        });
    }
    Ok(GridReport { summaries, wall_time_s: wall, trained: todo.len(), table, files })
}

/// One row per run.
pub fn results_csv(summaries: &[RunSummary]) -> String {
    let mut s = String::from(
        "net,setting,forget,seed,steps,final_train_loss,final_train_accuracy,final_eval_accuracy,\
         best_eval_accuracy,best_eval_step,final_eval_loss,forgotten_fraction,\
         eval_forgotten_fraction,mean_update_steps,wall_time_s\n",
    );
    let mut rows: Vec<&RunSummary> = summaries.iter().collect();
    rows.sort_by_key(|r| (r.config.net, r.config.setting, r.config.forget, r.config.seed));
    for r in rows {
        let c = &r.config;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{},{:.6},{:.6},{:.6},{:.3},{:.3}",
            c.net.name(),
            c.setting.name(),
            c.forget.name(),
            c.seed,
            c.steps,
            r.final_train_loss,
            r.final_train_accuracy,
            r.final_eval_accuracy,
            r.best_eval_accuracy,
            r.best_eval_step,
            r.final_eval_loss,
            r.forgotten_fraction_per_layer.first().copied().unwrap_or(0.0),
            r.eval_forgotten_fraction_per_layer.first().copied().unwrap_or(0.0),
            r.mean_update_steps,
            r.wall_time_s,
        );
    }
    s
}

type Cell = (NetKind, Setting, ForgetKind);

/// The markdown report: per cell (network, setting, variant) the mean and
/// std over seeds of the final training loss and the evaluation accuracy,
/// whether each LwPF variant beats the baseline's training loss, and the
/// verdict on the paper's claim.
pub fn results_table(summaries: &[RunSummary], wall_s: f64, jobs: usize, trained: usize) -> String {
    let mut cells: BTreeMap<Cell, Vec<&RunSummary>> = BTreeMap::new();
    for s in summaries {
        cells.entry((s.config.net, s.config.setting, s.config.forget)).or_default().push(s);
    }
    for v in cells.values_mut() {
        v.sort_by_key(|s| s.config.seed);
    }
    let mut pairs: Vec<(NetKind, Setting)> = cells.keys().map(|k| (k.0, k.1)).collect();
    pairs.dedup();
    pairs.sort_by_key(|p| (p.1, p.0));
    let forgets: Vec<ForgetKind> = {
        let mut f: Vec<_> = cells.keys().map(|k| k.2).collect();
        f.sort();
        f.dedup();
        f
    };
    let metric = |cell: &Cell, f: &dyn Fn(&RunSummary) -> f64| -> Option<(f64, f64, usize)> {
        cells.get(cell).map(|v| {
            let xs: Vec<f64> = v.iter().map(|s| f(s)).collect();
            let (m, sd) = mean_std(&xs);
            (m, sd, xs.len())
        })
    };
    let steps = summaries.first().map(|s| s.config.steps).unwrap_or(0);
    let seeds: Vec<u64> = {
        let mut s: Vec<u64> = summaries.iter().map(|s| s.config.seed).collect();
        s.sort();
        s.dedup();
        s
    };
    let run_time: f64 = summaries.iter().map(|s| s.wall_time_s).sum();

    let mut t = String::new();
    let _ = writeln!(t, "# Bit-pattern classification (paper section 4.1)\n");
    let _ = writeln!(
        t,
        "{} runs: {} steps each, seeds {:?}, batch 32, AdamW (lr 1e-3, weight decay 0.01), \
         gradient clipping 1.0, BCE with logits. Grid wall time {:.1} s with {} jobs ({} runs \
         trained now); the runs' own times add up to {:.1} s.\n",
        summaries.len(),
        steps,
        seeds,
        wall_s,
        jobs,
        trained,
        run_time
    );
    let fmt = |v: Option<(f64, f64, usize)>, digits: usize| match v {
        Some((m, sd, _)) => format!("{m:.digits$} ± {sd:.digits$}"),
        None => "-".into(),
    };
    let header = |t: &mut String, extra: &[&str]| {
        let mut cols: Vec<String> = forgets.iter().map(|f| f.name().to_string()).collect();
        cols.extend(extra.iter().map(|s| s.to_string()));
        let _ = writeln!(t, "| network | setting | {} |", cols.join(" | "));
        let _ = writeln!(t, "| --- | --- |{}", " --- |".repeat(cols.len()));
    };

    // Training loss, with the comparison against the baseline.
    let lwpf: Vec<ForgetKind> =
        forgets.iter().copied().filter(|f| *f != ForgetKind::None).collect();
    let _ = writeln!(t, "## Final training loss (mean ± std over seeds; lower is better)\n");
    let _ = writeln!(
        t,
        "Mean batch loss over the last 48 steps. \"beats none\": the variant's mean is below the \
         baseline's; in brackets, the seeds where it is below the baseline of the same seed.\n"
    );
    let extra: Vec<String> = lwpf.iter().map(|f| format!("{} beats none", f.name())).collect();
    header(&mut t, &extra.iter().map(String::as_str).collect::<Vec<_>>());
    let mut wins: BTreeMap<ForgetKind, usize> = BTreeMap::new();
    let loss = |s: &RunSummary| s.final_train_loss;
    for &(net, setting) in &pairs {
        let mut row: Vec<String> =
            forgets.iter().map(|&f| fmt(metric(&(net, setting, f), &loss), 4)).collect();
        let base = cells.get(&(net, setting, ForgetKind::None));
        for &f in &lwpf {
            let verdict = match (base, cells.get(&(net, setting, f))) {
                (Some(b), Some(v)) => {
                    let (mb, _) =
                        mean_std(&b.iter().map(|s| s.final_train_loss).collect::<Vec<_>>());
                    let (mv, _) =
                        mean_std(&v.iter().map(|s| s.final_train_loss).collect::<Vec<_>>());
                    let paired = v
                        .iter()
                        .filter(|s| {
                            b.iter().any(|bs| {
                                bs.config.seed == s.config.seed
                                    && s.final_train_loss < bs.final_train_loss
                            })
                        })
                        .count();
                    let common = v
                        .iter()
                        .filter(|s| b.iter().any(|bs| bs.config.seed == s.config.seed))
                        .count();
                    if mv < mb {
                        *wins.entry(f).or_default() += 1;
                    }
                    format!("{} ({paired}/{common})", if mv < mb { "yes" } else { "no" })
                }
                _ => "-".into(),
            };
            row.push(verdict);
        }
        let _ = writeln!(t, "| {} | {} | {} |", net.title(), setting.name(), row.join(" | "));
    }

    for (title, f, digits) in [
        (
            "Final evaluation accuracy",
            &(|s: &RunSummary| s.final_eval_accuracy) as &dyn Fn(&RunSummary) -> f64,
            3,
        ),
        ("Best evaluation accuracy", &|s: &RunSummary| s.best_eval_accuracy, 3),
        ("Final training accuracy", &|s: &RunSummary| s.final_train_accuracy, 3),
        (
            "Fraction of score entries forgotten (training, all calls of the layer)",
            &|s: &RunSummary| s.forgotten_fraction_per_layer.first().copied().unwrap_or(0.0),
            3,
        ),
        ("Run wall time, s", &|s: &RunSummary| s.wall_time_s, 2),
    ] {
        let _ = writeln!(t, "\n## {title} (mean ± std over seeds)\n");
        header(&mut t, &[]);
        for &(net, setting) in &pairs {
            let row: Vec<String> =
                forgets.iter().map(|&fk| fmt(metric(&(net, setting, fk), f), digits)).collect();
            let _ = writeln!(t, "| {} | {} | {} |", net.title(), setting.name(), row.join(" | "));
        }
    }

    // The paper's claim (its Fig. 3).
    let _ = writeln!(t, "\n## The paper's claim\n");
    let full = pairs.len() == 6 && forgets.len() == 3;
    let holds =
        lwpf.len() == 2 && lwpf.iter().all(|f| wins.get(f).copied().unwrap_or(0) == pairs.len());
    let counts: Vec<String> = lwpf
        .iter()
        .map(|f| format!("{} in {}/{}", f.name(), wins.get(f).copied().unwrap_or(0), pairs.len()))
        .collect();
    let _ = writeln!(
        t,
        "\"Both LwPF variants reach a lower training loss than the baseline in all six settings\": \
         **{}** here ({}){}.\n",
        if holds { "holds" } else { "does not hold" },
        counts.join(", "),
        if full { "" } else { "; this grid is not the full six settings x three variants" }
    );
    let _ = writeln!(t, "Lowest mean training loss per setting:\n");
    for &(net, setting) in &pairs {
        let best = forgets
            .iter()
            .filter_map(|&f| metric(&(net, setting, f), &loss).map(|m| (f, m.0)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((f, m)) = best {
            let _ = writeln!(t, "- {} {}: {} ({m:.4})", net.title(), setting.name(), f.name());
        }
    }
    t
}

/// Every run under `dirs` (searched a few levels deep for `metrics.jsonl`):
/// its configuration and its evaluation points, finished or not.
pub fn load_curves(dirs: &[PathBuf]) -> Result<Vec<(RunConfig, Vec<super::run::CurvePoint>)>> {
    let mut files = Vec::new();
    for d in dirs {
        find_metrics(d, 4, &mut files)?;
    }
    files.sort();
    files.dedup();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let mut config = None;
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                // A run killed mid-line leaves a partial last line.
                Err(_) if i + 1 == text.lines().count() => continue,
                Err(e) => {
                    return Err(Error::DataRecord {
                        path: f.clone(),
                        record: i + 1,
                        what: e.to_string(),
                    });
                }
            };
            let bad = |e: serde_json::Error| Error::DataRecord {
                path: f.clone(),
                record: i + 1,
                what: e.to_string(),
            };
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("config") => {
                    config = Some(
                        serde_json::from_value::<super::run::ConfigRecord>(v).map_err(bad)?.config,
                    )
                }
                Some("eval") => points.push(serde_json::from_value(v).map_err(bad)?),
                _ => {}
            }
        }
        match config {
            Some(c) => out.push((c, points)),
            None => warn!("{}: no config line, skipped", f.display()),
        }
    }
    Ok(out)
}

fn find_metrics(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let direct = dir.join("metrics.jsonl");
    if direct.is_file() {
        out.push(direct);
        return Ok(());
    }
    if depth == 0 || !dir.is_dir() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries.flatten() {
        if e.path().is_dir() {
            find_metrics(&e.path(), depth - 1, out)?;
        }
    }
    Ok(())
}
