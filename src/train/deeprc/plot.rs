//! The figures of a DeepRC run, from its `metrics.jsonl` and `summary.json`:
//! training loss and validation AUC against step, one curve per fold, and on
//! generated data the attention-recovery curve: the share of implanted
//! sequences found within the top fraction of each test bag by attention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::read_summary;
use crate::error::Result;
use crate::plot::{Figure, Panel, Series};
use crate::train::metrics::read_records;

pub(super) const COLORS: [(u8, u8, u8); 6] =
    [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (60, 60, 60)];

#[derive(Deserialize)]
struct Record {
    kind: String,
    fold: usize,
    step: u64,
    loss: f64,
    #[serde(default)]
    auc: Option<f64>,
    #[serde(default)]
    split: Option<String>,
}

/// Points `(x, y)` of the recovery curve of sorted rank fractions: at x, the
/// share of implanted rows ranked within the top x of their bag.
pub fn recovery_curve(sorted: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = sorted.len().max(1) as f64;
    let mut x = vec![0.0];
    let mut y = vec![0.0];
    for (i, &f) in sorted.iter().enumerate() {
        x.push(f);
        y.push((i + 1) as f64 / n);
    }
    x.push(1.0);
    y.push(1.0);
    (x, y)
}

fn panel(title: &str, x_label: &str, y_label: &str, y_range: Option<(f64, f64)>) -> Panel {
    Panel {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series: vec![],
        y_range,
    }
}

/// Draws `curves.png` and `curves.svg` in the run folder `dir`.
pub fn save_curves(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut loss: BTreeMap<usize, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut auc: BTreeMap<usize, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in read_records::<Record>(&dir.join("metrics.jsonl"))? {
        match (r.kind.as_str(), r.split.as_deref()) {
            ("step", _) => {
                let c = loss.entry(r.fold).or_default();
                c.0.push(r.step as f64);
                c.1.push(r.loss);
            }
            ("eval", Some("val")) => {
                if let Some(a) = r.auc {
                    let c = auc.entry(r.fold).or_default();
                    c.0.push(r.step as f64);
                    c.1.push(a);
                }
            }
            _ => {}
        }
    }
    let summary = read_summary(dir)?;

    let mut loss_panel = panel("training loss", "step", "binary cross-entropy", None);
    let mut auc_panel = panel("validation ROC AUC", "step", "AUC", Some((0.0, 1.0)));
    let mut rec_panel = panel(
        "attention recovery (test bags)",
        "top fraction of the bag by attention",
        "implanted sequences found",
        Some((0.0, 1.0)),
    );
    let mut legend = vec![];
    for (j, (fold, (x, y))) in loss.into_iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let label = format!("fold {fold}");
        legend.push((label.clone(), color));
        loss_panel.series.push(Series { label: label.clone(), color, x, y, band: None });
        if let Some((x, y)) = auc.remove(&fold) {
            auc_panel.series.push(Series { label: label.clone(), color, x, y, band: None });
        }
        let rec =
            summary.folds.iter().find(|f| f.fold == fold).and_then(|f| f.test.recovery.as_ref());
        if let Some(r) = rec.filter(|r| !r.rank_fractions.is_empty()) {
            let mut sorted = r.rank_fractions.clone();
            sorted.sort_by(f64::total_cmp);
            let (x, y) = recovery_curve(&sorted);
            rec_panel.series.push(Series { label, color, x, y, band: None });
        }
    }
    let mut panels = vec![loss_panel, auc_panel];
    if !rec_panel.series.is_empty() {
        panels.push(rec_panel);
    }
    let fig = Figure {
        title: format!(
            "DeepRC {}: test AUC {:.3} +- {:.3} over {} folds",
            summary.name,
            summary.auc_mean,
            summary.auc_std,
            summary.folds.len()
        ),
        cols: panels.len(),
        panels,
        legend,
        panel_size: (420, 340),
    };
    let (png, svg) = (dir.join("curves.png"), dir.join("curves.svg"));
    fig.save_png(&png)?;
    fig.save_svg(&svg)?;
    Ok(vec![png, svg])
}
