//! Line plots with bands, as PNG and SVG, through `plotters`.
//!
//! A [`Figure`] is a grid of [`Panel`]s, each with curves ([`Series`]: a
//! mean line and an optional band, e.g. mean +- std over seeds) and one
//! legend for the whole figure. Text is drawn with the built-in stroke font
//! ([`font`]), not with a font file: figures render the same on a machine
//! without fonts, and the PNG and the SVG look alike. What it does not do:
//! log axes, markers, more than one y axis per panel.

pub mod font;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::atomic_write;

/// One curve: `y` against `x`, with an optional band `[lo, hi]` per point.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub color: (u8, u8, u8),
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub band: Option<(Vec<f64>, Vec<f64>)>,
}

/// One chart of the figure.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the data (bands included).
    pub y_range: Option<(f64, f64)>,
}

/// Panels in rows of `cols`, a title and a legend.
#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    pub cols: usize,
    pub panels: Vec<Panel>,
    /// Legend entries `(label, color)`, drawn once under the title.
    pub legend: Vec<(String, (u8, u8, u8))>,
    /// Pixel size of one panel.
    pub panel_size: (u32, u32),
}

const HEADER: u32 = 64;
const MARGIN_LEFT: u32 = 64;
const MARGIN_RIGHT: u32 = 14;
const MARGIN_TOP: u32 = 26;
const MARGIN_BOTTOM: u32 = 42;
/// Cap heights in pixels.
const TITLE_PX: f64 = 13.0;
const TEXT_PX: f64 = 10.0;
const TICK_PX: f64 = 8.0;

impl Figure {
    /// Pixel size of the whole figure.
    pub fn size(&self) -> (u32, u32) {
        let cols = self.cols.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        (self.panel_size.0 * cols as u32, HEADER + self.panel_size.1 * rows as u32)
    }

    /// Draws the figure as a PNG at `path` (written atomically).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let (w, h) = self.size();
        let mut rgb = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root).map_err(|e| plot_err(path, e))?;
            root.present().map_err(|e| plot_err(path, e))?;
        }
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().map_err(|e| plot_err(path, e))?;
            writer.write_image_data(&rgb).map_err(|e| plot_err(path, e))?;
        }
        atomic_write(path, &bytes)
    }

    /// Draws the figure as an SVG at `path` (written atomically).
    pub fn save_svg(&self, path: &Path) -> Result<()> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&root).map_err(|e| plot_err(path, e))?;
            root.present().map_err(|e| plot_err(path, e))?;
        }
        atomic_write(path, svg.as_bytes())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (w, _) = self.size();
        let ink = RGBColor(20, 20, 20);
        text(root, &self.title, (w as f64 / 2.0, 22.0), TITLE_PX, Anchor::Center, ink, false)?;

        // Legend: a short line and the label per entry, centred as a row.
        let entry_w = |l: &str| 34.0 + font::width(l) * TEXT_PX / font::CAP + 24.0;
        let total: f64 = self.legend.iter().map(|(l, _)| entry_w(l)).sum();
        let mut x = (w as f64 - total) / 2.0;
        for (label, c) in &self.legend {
            let color = RGBColor(c.0, c.1, c.2);
            let y = 46.0;
            root.draw(&PathElement::new(
                vec![(x as i32, y as i32 - 4), (x as i32 + 26, y as i32 - 4)],
                color.stroke_width(3),
            ))?;
            text(root, label, (x + 34.0, y), TEXT_PX, Anchor::Left, ink, false)?;
            x += entry_w(label);
        }

        let cols = self.cols.max(1);
        for (i, panel) in self.panels.iter().enumerate() {
            let (col, row) = ((i % cols) as u32, (i / cols) as u32);
            let origin = (col * self.panel_size.0, HEADER + row * self.panel_size.1);
            self.draw_panel(root, panel, origin)?;
        }
        Ok(())
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        panel: &Panel,
        (ox, oy): (u32, u32),
    ) -> DrawResult<DB> {
        let (pw, ph) = self.panel_size;
        let plot_w = pw.saturating_sub(MARGIN_LEFT + MARGIN_RIGHT).max(10);
        let plot_h = ph.saturating_sub(MARGIN_TOP + MARGIN_BOTTOM).max(10);
        let (px, py) = (ox + MARGIN_LEFT, oy + MARGIN_TOP);
        let ink = RGBColor(20, 20, 20);
        let grey = RGBColor(225, 225, 225);

        let (x0, x1) =
            extent(panel.series.iter().flat_map(|s| s.x.iter().copied())).unwrap_or((0.0, 1.0));
        let (y0, y1) = panel.y_range.unwrap_or_else(|| {
            let ys = panel.series.iter().flat_map(|s| {
                let band = s.band.iter().flat_map(|(lo, hi)| lo.iter().chain(hi));
                s.y.iter().chain(band).copied()
            });
            let (lo, hi) = extent(ys).unwrap_or((0.0, 1.0));
            let pad = 0.04 * (hi - lo).max(1e-9);
            (lo - pad, hi + pad)
        });
        let (x1, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > y0 { y1 } else { y0 + 1.0 });
        let (xt, yt) = (ticks(x0, x1, 5), ticks(y0, y1, 5));

        let area = root.clone().shrink((px, py), (plot_w, plot_h));
        let mut chart = ChartBuilder::on(&area).build_cartesian_2d(x0..x1, y0..y1)?;
        for &t in &yt {
            chart.draw_series(LineSeries::new([(x0, t), (x1, t)], grey.stroke_width(1)))?;
        }
        for &t in &xt {
            chart.draw_series(LineSeries::new([(t, y0), (t, y1)], grey.stroke_width(1)))?;
        }
        let clamp = |y: f64| y.clamp(y0, y1);
        for s in &panel.series {
            let color = RGBColor(s.color.0, s.color.1, s.color.2);
            if let Some((lo, hi)) = &s.band {
                let mut pts: Vec<(f64, f64)> =
                    s.x.iter().zip(hi).map(|(&x, &y)| (x, clamp(y))).collect();
                pts.extend(s.x.iter().zip(lo).rev().map(|(&x, &y)| (x, clamp(y))));
                chart.draw_series(std::iter::once(Polygon::new(pts, color.mix(0.18).filled())))?;
            }
        }
        for s in &panel.series {
            let color = RGBColor(s.color.0, s.color.1, s.color.2);
            let pts: Vec<(f64, f64)> = s.x.iter().zip(&s.y).map(|(&x, &y)| (x, clamp(y))).collect();
            // A few points get markers, so that a curve of one point shows.
            if pts.len() <= 16 {
                let dots = pts.iter().map(|&p| Circle::new(p, 3, color.filled()));
                chart.draw_series(dots)?;
            }
            chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
        }
        let (w, h) = (plot_w as i32, plot_h as i32);
        area.draw(&Rectangle::new([(0, 0), (w - 1, h - 1)], ink.stroke_width(1)))?;

        // Ticks and labels, in the root's pixels.
        let step_y = yt.get(1).map(|b| b - yt[0]).unwrap_or(1.0);
        let step_x = xt.get(1).map(|b| b - xt[0]).unwrap_or(1.0);
        let to_px = |x: f64, y: f64| {
            let fx = (x - x0) / (x1 - x0);
            let fy = (y - y0) / (y1 - y0);
            (px as f64 + fx * (plot_w - 1) as f64, py as f64 + (1.0 - fy) * (plot_h - 1) as f64)
        };
        for &t in &yt {
            let (x, y) = to_px(x0, t);
            root.draw(&PathElement::new(
                vec![(x as i32 - 4, y as i32), (x as i32, y as i32)],
                ink,
            ))?;
            text(
                root,
                &tick_label(t, step_y),
                (x - 7.0, y + TICK_PX / 2.0),
                TICK_PX,
                Anchor::Right,
                ink,
                false,
            )?;
        }
        for &t in &xt {
            let (x, y) = to_px(t, y0);
            root.draw(&PathElement::new(
                vec![(x as i32, y as i32), (x as i32, y as i32 + 4)],
                ink,
            ))?;
            text(
                root,
                &tick_label(t, step_x),
                (x, y + 8.0 + TICK_PX),
                TICK_PX,
                Anchor::Center,
                ink,
                false,
            )?;
        }
        let cx = px as f64 + plot_w as f64 / 2.0;
        text(
            root,
            &panel.title,
            (cx, oy as f64 + 18.0),
            TEXT_PX + 1.0,
            Anchor::Center,
            ink,
            false,
        )?;
        let below = (py + plot_h) as f64 + 34.0;
        text(root, &panel.x_label, (cx, below), TEXT_PX, Anchor::Center, ink, false)?;
        let cy = py as f64 + plot_h as f64 / 2.0;
        text(root, &panel.y_label, (ox as f64 + 14.0, cy), TEXT_PX, Anchor::Center, ink, true)?;
        Ok(())
    }
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(format!("drawing the figure failed: {e}")))
}

/// Where a text's anchor point sits on its baseline.
#[derive(Clone, Copy)]
enum Anchor {
    Left,
    Center,
    Right,
}

/// Draws `s` with its baseline anchor at `at` (pixels), capitals `cap_px`
/// high; `vertical` turns it a quarter counter-clockwise (reading upwards),
/// anchored at its centre.
fn text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &str,
    at: (f64, f64),
    cap_px: f64,
    anchor: Anchor,
    color: RGBColor,
    vertical: bool,
) -> DrawResult<DB> {
    let scale = cap_px / font::CAP;
    let w = font::width(s) * scale;
    let shift = match anchor {
        Anchor::Left => 0.0,
        Anchor::Center => -w / 2.0,
        Anchor::Right => -w,
    };
    let stroke = if cap_px >= 12.0 { 2 } else { 1 };
    for line in font::layout(s) {
        let pts: Vec<(i32, i32)> = line
            .iter()
            .map(|&(gx, gy)| {
                let (dx, dy) = (gx * scale + shift, gy * scale);
                let (x, y) = if vertical {
                    // Baseline along -y, centred on `at` both ways.
                    (at.0 - dy + cap_px / 2.0, at.1 - dx)
                } else {
                    (at.0 + dx, at.1 - dy)
                };
                (x.round() as i32, y.round() as i32)
            })
            .collect();
        root.draw(&PathElement::new(pts, color.stroke_width(stroke)))?;
    }
    Ok(())
}

/// Smallest and largest finite value.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// About `n` round tick positions inside `[lo, hi]` (steps of 1, 2 or 5
/// times a power of ten).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step =
        [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick value with as many decimals as its step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks(0.0, 1500.0, 5), vec![0.0, 500.0, 1000.0, 1500.0]);
        let t = ticks(0.43, 0.71, 5);
        assert!(t.iter().all(|&v| (0.43..=0.71).contains(&v)) && t.len() >= 3);
        assert_eq!(tick_label(0.5, 0.05), "0.50");
        assert_eq!(tick_label(1000.0, 500.0), "1000");
    }
}
