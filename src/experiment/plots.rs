//! SVG plots of a study, per task: near-zero weights over training, accuracy
//! after pruning, and the distribution of weight magnitudes. One line per
//! optimizer, the mean over its finished seeds.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::{Group, mean_std};
use crate::io::write_atomic;
use crate::train::RunRecord;

pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Distinct colours (Tableau 10, then darker variants) for up to 20 lines.
const COLORS: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 0),
    (10, 60, 120),
    (160, 80, 0),
    (20, 100, 20),
    (130, 20, 20),
    (90, 50, 130),
    (90, 50, 40),
    (150, 60, 120),
    (110, 110, 10),
    (10, 110, 120),
];

fn color(i: usize) -> RGBColor {
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b)
}

/// One line of a plot.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// The mean over runs of per-run series that share their x values.
fn mean_series(series: Vec<Vec<(f64, f64)>>) -> Vec<(f64, f64)> {
    let n = series.iter().map(|s| s.len()).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            let ys: Vec<f64> = series.iter().map(|s| s[i].1).collect();
            (
                series[0][i].0,
                mean_std(&ys).map(|m| m.0).unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// One line per group: the mean over its finished runs of `series(run)`.
fn lines_of(groups: &[&Group], series: impl Fn(&RunRecord) -> Vec<(f64, f64)>) -> Vec<Line> {
    groups
        .iter()
        .map(|g| Line {
            label: g.label.clone(),
            points: mean_series(g.done().map(&series).collect()),
        })
        .collect()
}

fn near_zero_lines(groups: &[&Group]) -> Vec<Line> {
    lines_of(groups, |r| {
        r.history
            .iter()
            .map(|h| (h.epoch, 100.0 * h.weights_near_zero_frac["1e-3"]))
            .collect()
    })
}

fn pruning_lines(groups: &[&Group]) -> Vec<Line> {
    lines_of(groups, |r| {
        let f = r.r#final.as_ref().expect("done runs have final measures");
        let mut pts = vec![(0.0, 100.0 * f.test_acc)];
        pts.extend(
            f.pruning
                .iter()
                .map(|p| (100.0 * p.frac, 100.0 * p.test_acc)),
        );
        pts
    })
}

fn magnitude_lines(groups: &[&Group]) -> Vec<Line> {
    groups
        .iter()
        .map(|g| {
            let mut zero_fracs = vec![];
            let series = g
                .done()
                .map(|r| {
                    let h = &r.r#final.as_ref().unwrap().weight_histogram;
                    let total =
                        (h.counts.iter().sum::<u64>() + h.zeros + h.below + h.above).max(1) as f64;
                    zero_fracs.push(h.zeros as f64 / total);
                    h.counts
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            (h.lo + h.width * (i as f64 + 0.5), 100.0 * *c as f64 / total)
                        })
                        .collect()
                })
                .collect();
            let zero = mean_std(&zero_fracs).map(|m| m.0).unwrap_or(0.0);
            let label = if zero > 0.0 {
                format!("{} ({:.1}% exact zeros)", g.label, 100.0 * zero)
            } else {
                g.label.clone()
            };
            Line {
                label,
                points: mean_series(series),
            }
        })
        .collect()
}

/// Drops the leading and trailing x values where every line is zero.
fn trim_zero_tails(lines: &mut [Line]) {
    let n = lines.iter().map(|l| l.points.len()).min().unwrap_or(0);
    let nonzero = |i: usize| lines.iter().any(|l| l.points[i].1 != 0.0);
    let (Some(first), Some(last)) = (
        (0..n).find(|&i| nonzero(i)),
        (0..n).rev().find(|&i| nonzero(i)),
    ) else {
        return;
    };
    let (lo, hi) = (first.saturating_sub(1), (last + 1).min(n - 1));
    for l in lines.iter_mut() {
        l.points = l.points[lo..=hi].to_vec();
    }
}

fn bounds(lines: &[Line]) -> Option<((f64, f64), (f64, f64))> {
    let pts = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in pts {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if !x0.is_finite() {
        return None;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    Some(((x0, x1), (y0 - pad, y1 + pad)))
}

fn draw(lines: &[Line], title: &str, x_desc: &str, y_desc: &str) -> Result<Option<String>> {
    draw_scaled(lines, title, x_desc, y_desc, false)
}

/// With `log_y`, the y axis is logarithmic (values below 0.01 are drawn at 0.01).
fn draw_scaled(
    lines: &[Line],
    title: &str,
    x_desc: &str,
    y_desc: &str,
    log_y: bool,
) -> Result<Option<String>> {
    let Some(((x0, x1), (y0, y1))) = bounds(lines) else {
        return Ok(None);
    };
    if log_y {
        let floor = 0.01;
        let lines: Vec<Line> = lines
            .iter()
            .map(|l| Line {
                label: l.label.clone(),
                points: l.points.iter().map(|&(x, y)| (x, y.max(floor))).collect(),
            })
            .collect();
        let (lo, hi) = (y0.max(floor) / 1.5, y1.max(floor) * 1.5);
        return render(&lines, title, x_desc, y_desc, x0..x1, (lo..hi).log_scale());
    }
    render(lines, title, x_desc, y_desc, x0..x1, y0..y1)
}

fn render<Y>(
    lines: &[Line],
    title: &str,
    x_desc: &str,
    y_desc: &str,
    xr: std::ops::Range<f64>,
    yr: Y,
) -> Result<Option<String>>
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    <Y as plotters::coord::ranged1d::AsRangedCoord>::CoordDescType:
        plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("plot `{title}`: {e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(xr, yr)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, l) in lines.iter().enumerate() {
            let color = color(i);
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(l.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(Some(svg))
}

/// Writes `plots/<task>-{near-zero,pruning,magnitudes}.svg`.
pub fn write_all(dir: &Path, groups: &[Group]) -> Result<()> {
    let mut tasks: Vec<&str> = vec![];
    for g in groups {
        if !tasks.contains(&g.task.as_str()) {
            tasks.push(&g.task);
        }
    }
    for task in tasks {
        let gs: Vec<&Group> = groups.iter().filter(|g| g.task == task).collect();
        let s = slug(task);
        let plots = [
            (
                format!("{s}-near-zero.svg"),
                draw_scaled(
                    &near_zero_lines(&gs),
                    &format!("{task}: weights with |w| < 1e-3 during training"),
                    "epoch",
                    "% of weights (log scale)",
                    true,
                )?,
            ),
            (
                format!("{s}-pruning.svg"),
                draw(
                    &pruning_lines(&gs),
                    &format!("{task}: accuracy after magnitude pruning"),
                    "% of weights pruned",
                    "test accuracy %",
                )?,
            ),
            (
                format!("{s}-magnitudes.svg"),
                draw(
                    &{
                        let mut lines = magnitude_lines(&gs);
                        trim_zero_tails(&mut lines);
                        lines
                    },
                    &format!("{task}: distribution of weight magnitudes"),
                    "log10 |w|",
                    "% of weights per 0.25 decade",
                )?,
            ),
        ];
        for (name, svg) in plots {
            if let Some(svg) = svg {
                write_atomic(&dir.join("plots").join(name), svg.as_bytes())?;
            }
        }
    }
    Ok(())
}
