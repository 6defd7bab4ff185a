//! Curves of finished vision-transformer runs: training loss against step
//! and test accuracy against epoch, one curve per run, from each run's
//! `metrics.jsonl` (`lwpf plot DIR...` picks this when the directories hold
//! ViT runs).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plot::{Figure, Panel, Series};
use crate::train::metrics::read_records;

/// The fields of a `metrics.jsonl` line that the curves need.
#[derive(Deserialize)]
struct Record {
    kind: String,
    epoch: usize,
    #[serde(default)]
    step: usize,
    loss: f64,
    #[serde(default)]
    accuracy: f64,
}

/// Whether `dir` holds a ViT run (its `summary.json` names an image size).
pub fn is_vit_run(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v["model"]["img_size"].is_number())
}

/// (training loss by step, test accuracy by epoch) of one run.
type Curves = ((Vec<f64>, Vec<f64>), (Vec<f64>, Vec<f64>));

fn load(dir: &Path) -> Result<Curves> {
    let (mut loss, mut acc) = ((vec![], vec![]), (vec![], vec![]));
    for r in read_records::<Record>(&dir.join("metrics.jsonl"))? {
        match r.kind.as_str() {
            "step" => {
                loss.0.push(r.step as f64);
                loss.1.push(r.loss);
            }
            "eval" => {
                acc.0.push(r.epoch as f64);
                acc.1.push(r.accuracy);
            }
            _ => {}
        }
    }
    Ok((loss, acc))
}

const COLORS: [(u8, u8, u8); 6] =
    [(214, 39, 40), (31, 119, 180), (60, 60, 60), (44, 160, 44), (148, 103, 189), (255, 127, 14)];

/// Draws `NAME.png` and `NAME.svg` in `out` from the runs in `dirs`.
pub fn plot_runs(dirs: &[PathBuf], out: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let mut loss_panel = Panel {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "cross-entropy".into(),
        series: vec![],
        y_range: None,
    };
    let mut acc_panel = Panel {
        title: "test accuracy (10,000 images)".into(),
        x_label: "epoch".into(),
        y_label: "accuracy".into(),
        series: vec![],
        y_range: None,
    };
    let mut legend = vec![];
    for (i, dir) in dirs.iter().enumerate() {
        let ((sx, sy), (ex, ey)) = load(dir)?;
        let label = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let color = COLORS[i % COLORS.len()];
        legend.push((label.clone(), color));
        loss_panel.series.push(Series { label: label.clone(), color, x: sx, y: sy, band: None });
        acc_panel.series.push(Series { label, color, x: ex, y: ey, band: None });
    }
    let fig = Figure {
        title: "Vision transformer on CIFAR-10".into(),
        cols: 2,
        panels: vec![loss_panel, acc_panel],
        legend,
        panel_size: (520, 360),
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (png, svg) = (out.join(format!("{name}.png")), out.join(format!("{name}.svg")));
    fig.save_png(&png)?;
    fig.save_svg(&svg)?;
    Ok(vec![png, svg])
}
