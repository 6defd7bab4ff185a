//! The paper's Fig. 3 from finished (or running) runs: training loss and
//! evaluation accuracy against the step, one panel per network, setting and
//! metric, one curve per forgetting variant with a band of one standard
//! deviation over seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::run::{CurvePoint, ForgetKind, RunConfig};
use crate::error::{Error, Result};
use crate::models::bitpattern::{NetKind, Setting};
use crate::plot::{Figure, Panel, Series};
use crate::train::binary::mean_std;

/// The colour of each variant's curve.
pub fn color(f: ForgetKind) -> (u8, u8, u8) {
    match f {
        ForgetKind::None => (70, 70, 70),
        ForgetKind::Relu => (31, 119, 180),
        ForgetKind::Pfu => (214, 39, 40),
    }
}

/// One number of a curve point.
type Metric = fn(&CurvePoint) -> f64;

/// Mean and std over runs at every step that all of them reached.
fn aggregate(
    runs: &[&Vec<CurvePoint>],
    metric: fn(&CurvePoint) -> f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for p in r.iter() {
            by_step.entry(p.step).or_default().push(metric(p));
        }
    }
    let (mut x, mut m, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for (step, v) in by_step {
        if v.len() == runs.len() {
            let (mean, std) = mean_std(&v);
            x.push(step as f64);
            m.push(mean);
            s.push(std);
        }
    }
    (x, m, s)
}

/// The figure for `runs`: rows (setting, metric), columns networks; only the
/// networks and settings present get panels.
pub fn fig3(runs: &[(RunConfig, Vec<CurvePoint>)]) -> Option<Figure> {
    let mut groups: BTreeMap<(Setting, NetKind, ForgetKind), Vec<&Vec<CurvePoint>>> =
        BTreeMap::new();
    for (c, pts) in runs {
        if !pts.is_empty() {
            groups.entry((c.setting, c.net, c.forget)).or_default().push(pts);
        }
    }
    let mut settings: Vec<Setting> = groups.keys().map(|k| k.0).collect();
    settings.dedup();
    let mut nets: Vec<NetKind> = groups.keys().map(|k| k.1).collect();
    nets.sort();
    nets.dedup();
    let mut forgets: Vec<ForgetKind> = groups.keys().map(|k| k.2).collect();
    forgets.sort();
    forgets.dedup();
    if groups.is_empty() {
        return None;
    }

    let metrics: [(&str, Metric); 2] =
        [("training loss", |p| p.train_loss), ("eval accuracy", |p| p.eval_accuracy)];
    let mut panels = Vec::new();
    for &setting in &settings {
        for (name, metric) in metrics {
            for &net in &nets {
                let mut series = Vec::new();
                for &f in &forgets {
                    let Some(rs) = groups.get(&(setting, net, f)) else { continue };
                    let (x, y, sd) = aggregate(rs, metric);
                    let band = (rs.len() > 1).then(|| {
                        (
                            y.iter().zip(&sd).map(|(m, s)| m - s).collect(),
                            y.iter().zip(&sd).map(|(m, s)| m + s).collect(),
                        )
                    });
                    series.push(Series { label: f.name().into(), color: color(f), x, y, band });
                }
                panels.push(Panel {
                    title: format!("{} ({})", net.title(), setting.name()),
                    x_label: "step".into(),
                    y_label: name.into(),
                    series,
                    y_range: None,
                });
            }
        }
    }
    let seeds = groups.values().map(Vec::len).max().unwrap_or(0);
    Some(Figure {
        title: format!(
            "Bit-pattern classification: training loss and evaluation accuracy (mean and std over {seeds} seed{})",
            if seeds == 1 { "" } else { "s" }
        ),
        cols: nets.len(),
        panels,
        legend: forgets.iter().map(|&f| (f.name().to_string(), color(f))).collect(),
        panel_size: (420, 280),
    })
}

/// Draws the figure of `runs` as `dir/name.png` and `dir/name.svg`; returns
/// the files written.
pub fn save_fig3(
    runs: &[(RunConfig, Vec<CurvePoint>)],
    dir: &Path,
    name: &str,
) -> Result<Vec<PathBuf>> {
    let fig = fig3(runs)
        .ok_or_else(|| Error::InvalidConfig { what: "no evaluation points to plot".into() })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    fig.save_png(&png)?;
    fig.save_svg(&svg)?;
    Ok(vec![png, svg])
}
