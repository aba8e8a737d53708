//! SVG plots of a study, per task: near-zero weights over training, accuracy
//! after pruning, and the distribution of weight magnitudes.
//!
//! Each figure is a set of small multiples: one panel per optimizer family
//! (see [`family`]), at most [`MAX_LINES`] optimizers a panel, all panels on
//! the same axes. The task's baseline (its first optimizer in study order,
//! unless one is named) is drawn in every panel, black and dashed. A line is
//! the mean over an optimizer's finished seeds and its shaded band the 95 %
//! confidence interval of that mean ([`ci95`]; none for one seed). Colours
//! are Okabe and Ito's colour-blind-safe palette, and every line also has its
//! own dash pattern and marker, so that the lines stay apart in grey.
//!
//! [`pareto`] draws accuracy against a sparsity measure, one line per label.
//!
//! The output is a function of the input alone: the same runs give
//! byte-identical SVG.

use std::ops::Range;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::record::{Group, StudyRecord};
use super::stats::mean_std;
use super::study::slug;
use crate::io::write_atomic;
use crate::optim::OptimizerKind;
use crate::optim::config::Value;

// ---------------------------------------------------------------------------
// Statistics

/// Two-sided 95 % quantiles of Student's t, t_{0.975, df}, for df = 1..=30.
const T975: [f64; 30] = [
    12.706_204_7,
    4.302_652_7,
    3.182_446_3,
    2.776_445_1,
    2.570_581_8,
    2.446_911_9,
    2.364_624_3,
    2.306_004_1,
    2.262_157_2,
    2.228_138_9,
    2.200_985_2,
    2.178_812_8,
    2.160_368_7,
    2.144_786_7,
    2.131_449_5,
    2.119_905_3,
    2.109_815_6,
    2.100_922_0,
    2.093_024_1,
    2.085_963_4,
    2.079_613_8,
    2.073_873_1,
    2.068_657_6,
    2.063_898_6,
    2.059_538_6,
    2.055_529_4,
    2.051_830_5,
    2.048_407_1,
    2.045_229_6,
    2.042_272_5,
];

/// t_{0.975, df}: the table up to 30 degrees of freedom, beyond it the
/// Cornish-Fisher expansion around the normal quantile 1.959964 (within 1e-6
/// of the exact value there).
pub fn t975(df: usize) -> f64 {
    assert!(df > 0, "t quantile: no degrees of freedom");
    if df <= T975.len() {
        return T975[df - 1];
    }
    let z = 1.959_963_984_540_054_f64;
    let v = df as f64;
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    z + g1 / v + g2 / (v * v) + g3 / (v * v * v)
}

/// The mean of `xs` and the half-width of its 95 % confidence interval,
/// t_{0.975, n-1} · sd / √n with the sample standard deviation. None for
/// fewer than two values or a non-finite result.
pub fn ci95(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    let (m, sd) = mean_std(xs)?;
    let half = t975(xs.len() - 1) * sd / (xs.len() as f64).sqrt();
    (m.is_finite() && half.is_finite()).then_some((m, half))
}

// ---------------------------------------------------------------------------
// Lines

/// A line's value at one x: the mean over seeds and the 95 % CI half-width.
#[derive(Clone, Copy, Debug)]
struct Pt {
    x: f64,
    y: f64,
    half: Option<f64>,
}

/// One line of a plot.
#[derive(Clone, Debug)]
struct Line {
    label: String,
    points: Vec<Pt>,
}

/// The mean (and CI) over runs of per-run series that share their x values.
fn aggregate(series: &[Vec<(f64, f64)>]) -> Vec<Pt> {
    let n = series.iter().map(|s| s.len()).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            let ys: Vec<f64> = series.iter().map(|s| s[i].1).collect();
            Pt {
                x: series[0][i].0,
                y: mean_std(&ys).map(|m| m.0).unwrap_or(f64::NAN),
                half: ci95(&ys).map(|c| c.1),
            }
        })
        .collect()
}

fn line_of(g: &Group, series: impl Fn(&StudyRecord) -> Vec<(f64, f64)>) -> Line {
    let runs: Vec<Vec<(f64, f64)>> = g.done().map(series).collect();
    Line {
        label: g.label.clone(),
        points: aggregate(&runs),
    }
}

fn near_zero_line(g: &Group) -> Line {
    line_of(g, |r| {
        r.history
            .iter()
            .map(|h| (h.epoch, 100.0 * h.weights_near_zero_frac["1e-3"]))
            .collect()
    })
}

/// Test accuracy against the fraction of weights kept (1 = unpruned).
fn pruning_line(g: &Group) -> Line {
    line_of(g, |r| {
        let f = r.r#final.as_ref().expect("done runs have final measures");
        let mut pts = vec![(1.0, 100.0 * f.test_acc)];
        pts.extend(f.pruning.iter().map(|p| (1.0 - p.frac, 100.0 * p.test_acc)));
        pts
    })
}

fn magnitude_line(g: &Group) -> Line {
    let mut zero_fracs = vec![];
    let series: Vec<Vec<(f64, f64)>> = g
        .done()
        .map(|r| {
            let h = &r.r#final.as_ref().unwrap().weight_histogram;
            let total = (h.counts.iter().sum::<u64>() + h.zeros + h.below + h.above).max(1) as f64;
            zero_fracs.push(h.zeros as f64 / total);
            h.counts
                .iter()
                .enumerate()
                .map(|(i, c)| (h.lo + h.width * (i as f64 + 0.5), 100.0 * *c as f64 / total))
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
        points: aggregate(&series),
    }
}

/// Drops the leading and trailing x values where every line is below `min`.
fn trim_tails(lines: &mut [&mut Line], min: f64) {
    let n = lines.iter().map(|l| l.points.len()).min().unwrap_or(0);
    let nonzero = |i: usize| lines.iter().any(|l| l.points[i].y >= min);
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

// ---------------------------------------------------------------------------
// Optimizer families and panels

/// The magnitude histogram's y axis starts here (% of weights a bin); bins
/// below it are drawn at it, and x values where every line is below it are
/// left out.
const MAG_FLOOR: f64 = 0.01;

/// At most this many optimizers share a panel, the baseline not counted.
pub const MAX_LINES: usize = 4;

fn setting(g: &Group, key: &str) -> f64 {
    g.runs
        .first()
        .and_then(|r| {
            r.config
                .optimizer
                .values()
                .into_iter()
                .find(|(k, _)| *k == key)
        })
        .map_or(0.0, |(_, v)| match v {
            Value::F(x) => x,
            Value::B(_) => 0.0,
        })
}

/// The panel an optimizer configuration goes to: regularised ones (an L1
/// penalty, then weight decay) by their regulariser, the rest by algorithm:
/// SGD; AdaGrad, RMSprop and Adadelta; the Adam family (Adam, AMSGrad,
/// AdamW, NAdam, RAdam, Adamax).
pub fn family(g: &Group) -> &'static str {
    if setting(g, "l1") > 0.0 || setting(g, "l1_prox") > 0.0 {
        return "L1 penalty";
    }
    if setting(g, "weight_decay") > 0.0 {
        return "weight decay (L2 or decoupled)";
    }
    match g.runs.first().map(|r| r.config.optimizer.kind) {
        Some(OptimizerKind::Sgd) => "SGD",
        Some(OptimizerKind::Adagrad | OptimizerKind::Rmsprop | OptimizerKind::Adadelta) => {
            "AdaGrad, RMSprop, Adadelta"
        }
        Some(_) => "Adam family",
        None => "other",
    }
}

/// A panel's title and its groups (indices), the baseline not among them.
struct PanelSpec {
    title: String,
    members: Vec<usize>,
}

/// Families in order of first appearance; a family of more than
/// [`MAX_LINES`] optimizers is split evenly over several panels.
fn panel_specs(gs: &[&Group], baseline: Option<usize>) -> Vec<PanelSpec> {
    let mut fams: Vec<(&'static str, Vec<usize>)> = vec![];
    for (i, g) in gs.iter().enumerate() {
        if Some(i) == baseline {
            continue;
        }
        let f = family(g);
        match fams.iter_mut().find(|(n, _)| *n == f) {
            Some((_, v)) => v.push(i),
            None => fams.push((f, vec![i])),
        }
    }
    let mut out = vec![];
    for (name, members) in fams {
        let k = members.len().div_ceil(MAX_LINES);
        let (base, extra) = (members.len() / k, members.len() % k);
        let mut it = members.into_iter();
        for j in 0..k {
            let take = base + usize::from(j < extra);
            out.push(PanelSpec {
                title: if k > 1 {
                    format!("{name} ({}/{k})", j + 1)
                } else {
                    name.to_string()
                },
                members: it.by_ref().take(take).collect(),
            });
        }
    }
    if out.is_empty() {
        out.push(PanelSpec {
            title: gs.first().map_or("other".into(), |g| family(g).to_string()),
            members: vec![],
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Axes

/// A linear or logarithmic axis, possibly reversed, with explicit ticks.
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    reversed: bool,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    fmt: fn(f64) -> String,
}

impl Axis {
    fn t(&self, v: f64) -> f64 {
        if self.log { v.max(1e-300).log10() } else { v }
    }

    fn clamp(&self, v: f64) -> f64 {
        v.clamp(self.lo, self.hi)
    }

    /// A linear axis over [lo, hi] with about six round ticks and a margin
    /// of 4 % (none below a `floor` that the data touches).
    fn linear(lo: f64, hi: f64, floor: Option<f64>, fmt: fn(f64) -> String) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        };
        let pad = 0.04 * (hi - lo);
        let mut a = lo - pad;
        if let Some(f) = floor
            && lo >= f
        {
            a = a.max(f);
        }
        let b = hi + pad;
        let step = nice_step((b - a) / 6.0);
        let first = (a / step).ceil() as i64;
        let last = (b / step).floor() as i64;
        let ticks = (first..=last).map(|k| k as f64 * step).collect();
        Axis {
            lo: a,
            hi: b,
            log: false,
            reversed: false,
            ticks,
            minor: vec![],
            fmt,
        }
    }

    /// A log axis over [lo, hi] (both > 0) widened by `pad` (a factor), with
    /// ticks at 1-2-5 (at powers of ten alone beyond three decades) and light
    /// lines at every integer multiple of a power of ten.
    fn log(lo: f64, hi: f64, pad: f64, reversed: bool, fmt: fn(f64) -> String) -> Axis {
        let (a, b) = (lo / pad, hi * pad);
        let (d0, d1) = (a.log10().floor() as i32, b.log10().ceil() as i32);
        let mults: &[f64] = if (b / a).log10() > 3.5 {
            &[1.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        let mut ticks = vec![];
        let mut minor = vec![];
        for d in d0..=d1 {
            let p = 10f64.powi(d);
            for m in mults {
                let v = m * p;
                if v >= a && v <= b {
                    ticks.push(v);
                }
            }
            for m in 1..10 {
                let v = m as f64 * p;
                if v >= a && v <= b {
                    minor.push(v);
                }
            }
        }
        Axis {
            lo: a,
            hi: b,
            log: true,
            reversed,
            ticks,
            minor,
            fmt,
        }
    }
}

/// 1, 2 or 5 times a power of ten, the smallest at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1e-12).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// A tick label: the shortest decimal (up to six places) that reads back as
/// the value.
fn fmt_num(v: f64) -> String {
    for d in 0..=6 {
        let s = format!("{v:.d$}");
        let back: f64 = s.parse().unwrap_or(f64::NAN);
        if (back - v).abs() <= 1e-9 * v.abs().max(1.0) {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:e}")
}

fn fmt_pct(v: f64) -> String {
    format!("{}%", fmt_num(100.0 * v))
}

/// A label for log10 |w|: `1e-3` at integers.
fn fmt_pow10(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("1e{}", v.round() as i64)
    } else {
        fmt_num(v)
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.t(self.lo), self.t(self.hi));
        let mut f = (self.t(*value) - a) / (b - a);
        if self.reversed {
            f = 1.0 - f;
        }
        let len = limit.1 - limit.0;
        limit.0 + (len as f64 * f + 1e-3).floor() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        (self.fmt)(*value)
    }
}

/// The smallest and largest finite y (band included) over the lines,
/// positive values only with `positive`.
fn y_extent<'a>(lines: impl Iterator<Item = &'a Line>, positive: bool) -> Option<(f64, f64)> {
    let mut ext: Option<(f64, f64)> = None;
    for p in lines.flat_map(|l| l.points.iter()) {
        let h = p.half.unwrap_or(0.0);
        for v in [p.y - h, p.y, p.y + h] {
            if v.is_finite() && (!positive || v > 0.0) {
                ext = Some(ext.map_or((v, v), |(a, b)| (a.min(v), b.max(v))));
            }
        }
    }
    ext
}

fn x_extent<'a>(lines: impl Iterator<Item = &'a Line>) -> Option<(f64, f64)> {
    let mut ext: Option<(f64, f64)> = None;
    for p in lines.flat_map(|l| l.points.iter()) {
        if p.x.is_finite() && p.y.is_finite() {
            ext = Some(ext.map_or((p.x, p.x), |(a, b)| (a.min(p.x), b.max(p.x))));
        }
    }
    ext
}

// ---------------------------------------------------------------------------
// Line styles

/// Okabe and Ito's colour-blind-safe palette, black (the baseline's) left
/// out, in an order that keeps the first colours apart in grey too.
const OKABE_ITO: [(u8, u8, u8); 7] = [
    (0, 114, 178),   // blue
    (213, 94, 0),    // vermillion
    (0, 158, 115),   // bluish green
    (204, 121, 167), // reddish purple
    (230, 159, 0),   // orange
    (86, 180, 233),  // sky blue
    (240, 228, 66),  // yellow
];

#[derive(Clone, Copy, PartialEq)]
enum Marker {
    None,
    Circle,
    Triangle,
    Square,
    Diamond,
    Cross,
}

#[derive(Clone, Copy)]
struct Style {
    color: RGBColor,
    /// Dash and gap lengths in pixels; None for a solid line.
    dash: Option<(i32, i32)>,
    marker: Marker,
    width: u32,
}

fn style(i: usize) -> Style {
    let (r, g, b) = OKABE_ITO[i % OKABE_ITO.len()];
    let dashes = [None, Some((10, 4)), Some((2, 3)), Some((16, 4))];
    let markers = [
        Marker::Circle,
        Marker::Triangle,
        Marker::Square,
        Marker::Diamond,
        Marker::Cross,
    ];
    Style {
        color: RGBColor(r, g, b),
        dash: dashes[i % dashes.len()],
        marker: markers[i % markers.len()],
        width: 2,
    }
}

fn baseline_style() -> Style {
    Style {
        color: BLACK,
        dash: Some((6, 5)),
        marker: Marker::None,
        width: 2,
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn plot_err(title: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot `{title}`: {e}")
}

/// Draws `m` centred on the pixel `(x, y)` of `area`.
fn draw_marker(area: &Area, m: Marker, (x, y): (i32, i32), c: RGBColor) -> Result<()> {
    let e = |e| plot_err("marker", e);
    match m {
        Marker::None => {}
        Marker::Circle => area.draw(&Circle::new((x, y), 4, c.filled())).map_err(e)?,
        Marker::Triangle => area
            .draw(&Polygon::new(
                vec![(x, y - 6), (x + 5, y + 4), (x - 5, y + 4)],
                c.filled(),
            ))
            .map_err(e)?,
        Marker::Square => area
            .draw(&Rectangle::new(
                [(x - 4, y - 4), (x + 4, y + 4)],
                c.stroke_width(2),
            ))
            .map_err(e)?,
        Marker::Diamond => area
            .draw(&Polygon::new(
                vec![(x, y - 6), (x + 5, y), (x, y + 6), (x - 5, y)],
                c.filled(),
            ))
            .map_err(e)?,
        Marker::Cross => {
            for (a, b) in [
                ((x - 4, y - 4), (x + 4, y + 4)),
                ((x - 4, y + 4), (x + 4, y - 4)),
            ] {
                area.draw(&PathElement::new(vec![a, b], c.stroke_width(2)))
                    .map_err(e)?;
            }
        }
    }
    Ok(())
}

/// Draws a polyline of pixels in `s`'s colour and dash pattern.
fn draw_path(area: &Area, pts: Vec<(i32, i32)>, s: &Style) -> Result<()> {
    let st = s.color.stroke_width(s.width);
    match s.dash {
        None => area.draw(&PathElement::new(pts, st)),
        Some((d, g)) => area.draw(&DashedPathElement::new(pts, d, g, st)),
    }
    .map_err(|e| plot_err("line", e))
}

/// A legend entry: a line sample with its marker, then the label.
fn draw_key(area: &Area, (x, y): (i32, i32), s: &Style, label: &str, size: u32) -> Result<()> {
    draw_path(area, vec![(x, y), (x + 36, y)], s)?;
    draw_marker(area, s.marker, (x + 18, y), s.color)?;
    area.draw(&Text::new(
        label.to_string(),
        (x + 44, y),
        ("sans-serif", size)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))
    .map_err(|e| plot_err(label, e))
}

// ---------------------------------------------------------------------------
// Small multiples

struct Panel {
    title: String,
    lines: Vec<Line>,
}

struct Figure<'a> {
    title: String,
    note: String,
    x_desc: &'a str,
    y_desc: &'a str,
    x: Axis,
    y: Axis,
    /// A thin grey vertical line at this x, if in range.
    vline: Option<f64>,
    baseline: Option<Line>,
    panels: Vec<Panel>,
}

const FONT: &str = "sans-serif";

fn render_figure(fig: &Figure) -> Result<String> {
    let err = |e: &dyn std::fmt::Display| plot_err(&fig.title, e);
    let np = fig.panels.len().max(1);
    let cols = np.min(3);
    let rows = np.div_ceil(cols);
    let keys = fig
        .panels
        .iter()
        .map(|p| p.lines.len() + usize::from(fig.baseline.is_some()))
        .max()
        .unwrap_or(1);
    let legend_h = 16 + 22 * keys as u32;
    let (pw, chart_h) = (if cols == 1 { 760 } else { 540 }, 380);
    let ph = chart_h + legend_h;
    let head = 74;
    let (w, h) = (pw * cols as u32, head + ph * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let centred = |size: u32, color: &RGBColor| {
            (FONT, size)
                .into_font()
                .color(color)
                .pos(Pos::new(HPos::Center, VPos::Top))
        };
        root.draw(&Text::new(
            fig.title.clone(),
            (w as i32 / 2, 12),
            centred(22, &BLACK),
        ))
        .map_err(|e| err(&e))?;
        root.draw(&Text::new(
            fig.note.clone(),
            (w as i32 / 2, 44),
            centred(15, &RGBColor(60, 60, 60)),
        ))
        .map_err(|e| err(&e))?;
        let (_, body) = root.split_vertically(head);
        let cells = body.split_evenly((rows, cols));
        for (cell, panel) in cells.iter().zip(&fig.panels) {
            let (plot, legend) = cell.split_vertically(chart_h);
            let mut chart = ChartBuilder::on(&plot)
                .caption(&panel.title, (FONT, 18))
                .margin(8)
                .margin_right(20)
                .x_label_area_size(46)
                .y_label_area_size(62)
                .build_cartesian_2d(fig.x.clone(), fig.y.clone())
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(fig.x_desc)
                .y_desc(fig.y_desc)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .bold_line_style(BLACK.mix(0.14))
                .light_line_style(BLACK.mix(0.05))
                .draw()
                .map_err(|e| err(&e))?;
            let to_px = |x: f64, y: f64| chart.backend_coord(&(fig.x.clamp(x), fig.y.clamp(y)));
            if let Some(v) = fig.vline.filter(|v| (fig.x.lo..=fig.x.hi).contains(v)) {
                let grey = RGBColor(120, 120, 120);
                draw_path(
                    &root,
                    vec![to_px(v, fig.y.lo), to_px(v, fig.y.hi)],
                    &Style {
                        color: grey,
                        dash: None,
                        marker: Marker::None,
                        width: 1,
                    },
                )?;
            }
            let drawn: Vec<(&Line, Style)> = fig
                .baseline
                .iter()
                .map(|b| (b, baseline_style()))
                .chain(panel.lines.iter().enumerate().map(|(i, l)| (l, style(i))))
                .collect();
            // Bands under every line.
            for (l, s) in &drawn {
                let band: Vec<&Pt> = l
                    .points
                    .iter()
                    .filter(|p| p.y.is_finite() && p.half.is_some())
                    .collect();
                if band.len() < 2 {
                    continue;
                }
                let mut poly: Vec<(i32, i32)> = band
                    .iter()
                    .map(|p| to_px(p.x, p.y + p.half.unwrap()))
                    .collect();
                poly.extend(band.iter().rev().map(|p| to_px(p.x, p.y - p.half.unwrap())));
                let alpha = if s.color == BLACK { 0.10 } else { 0.18 };
                root.draw(&Polygon::new(poly, s.color.mix(alpha).filled()))
                    .map_err(|e| err(&e))?;
            }
            // Lines, the baseline first, then markers (at most about a dozen
            // a line, staggered between lines).
            for (k, (l, s)) in drawn.iter().enumerate() {
                let finite: Vec<&Pt> = l.points.iter().filter(|p| p.y.is_finite()).collect();
                let pts: Vec<(i32, i32)> = finite.iter().map(|p| to_px(p.x, p.y)).collect();
                let stride = pts.len().div_ceil(12).max(1);
                draw_path(&root, pts.clone(), s)?;
                // No markers on points drawn at the bottom of a log axis.
                for (j, (p, px)) in finite.iter().zip(&pts).enumerate() {
                    if j % stride == k % stride && p.y >= fig.y.lo {
                        draw_marker(&root, s.marker, *px, s.color)?;
                    }
                }
            }
            for (k, (l, s)) in drawn.iter().enumerate() {
                let label = if s.color == BLACK {
                    format!("{} (baseline)", l.label)
                } else {
                    l.label.clone()
                };
                draw_key(&legend, (74, 12 + 22 * k as i32), s, &label, 15)?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// The figure's second line: what the panels, the baseline and the bands are.
fn note(gs: &[&Group], baseline: Option<&Group>) -> String {
    let seeds: Vec<usize> = gs.iter().map(|g| g.done().count()).collect();
    let (lo, hi) = (
        seeds.iter().copied().min().unwrap_or(0),
        seeds.iter().copied().max().unwrap_or(0),
    );
    let bands = if hi <= 1 {
        "one seed per optimizer, so no confidence bands".to_string()
    } else if lo == hi {
        format!("lines: mean of {hi} seeds; bands: its 95% CI")
    } else {
        format!("lines: mean of {lo}-{hi} seeds; bands: its 95% CI (none for one seed)")
    };
    match baseline {
        Some(b) => format!(
            "One panel per optimizer family; black dashed: {} (baseline, in every panel); {bands}",
            b.label
        ),
        None => format!("One panel per optimizer family; {bands}"),
    }
}

/// Writes `plots/<task>-{near-zero,pruning,magnitudes}.svg`, each a small
/// multiple with the task's first optimizer (in study order) as the baseline.
pub fn write_all(dir: &Path, groups: &[Group]) -> Result<()> {
    write_all_with_baseline(dir, groups, None)
}

/// As [`write_all`], with the baseline named by its label (a task without
/// that label falls back to its first optimizer).
pub fn write_all_with_baseline(dir: &Path, groups: &[Group], baseline: Option<&str>) -> Result<()> {
    let mut tasks: Vec<&str> = vec![];
    for g in groups {
        if !tasks.contains(&g.task.as_str()) {
            tasks.push(&g.task);
        }
    }
    for task in tasks {
        let gs: Vec<&Group> = groups.iter().filter(|g| g.task == task).collect();
        let base = baseline
            .and_then(|b| gs.iter().position(|g| g.label == b))
            .or((!gs.is_empty()).then_some(0));
        let specs = panel_specs(&gs, base);
        let s = slug(task);
        let note = note(&gs, base.map(|i| gs[i]));
        let build = |line: &dyn Fn(&Group) -> Line| -> (Option<Line>, Vec<Panel>) {
            (
                base.map(|i| line(gs[i])),
                specs
                    .iter()
                    .map(|p| Panel {
                        title: p.title.clone(),
                        lines: p.members.iter().map(|&i| line(gs[i])).collect(),
                    })
                    .collect(),
            )
        };
        let all = |b: &Option<Line>, ps: &[Panel]| -> Vec<Line> {
            b.iter()
                .cloned()
                .chain(ps.iter().flat_map(|p| p.lines.iter().cloned()))
                .collect()
        };

        let mut out: Vec<(String, String)> = vec![];

        // Near-zero weights over training: log y when the lines span a decade.
        let (bl, panels) = build(&near_zero_line);
        let lines = all(&bl, &panels);
        if let (Some((x0, x1)), Some((y0, y1))) =
            (x_extent(lines.iter()), y_extent(lines.iter(), false))
        {
            let pos = y_extent(lines.iter(), true);
            let (y, y_desc) = match pos {
                Some((p0, p1)) if p1 / p0 >= 10.0 => (
                    Axis::log(p0, p1, 1.25, false, fmt_num),
                    "% of weights (log scale)",
                ),
                _ => (Axis::linear(y0, y1, Some(0.0), fmt_num), "% of weights"),
            };
            let fig = Figure {
                title: format!("{task}: weights with |w| < 1e-3 during training"),
                note: note.clone(),
                x_desc: "epoch",
                y_desc,
                x: Axis::linear(x0, x1, None, fmt_num),
                y,
                vline: None,
                baseline: bl,
                panels,
            };
            out.push((format!("{s}-near-zero.svg"), render_figure(&fig)?));
        }

        // Accuracy after pruning, against the fraction of weights kept.
        let (bl, panels) = build(&pruning_line);
        let lines = all(&bl, &panels);
        if let (Some((x0, x1)), Some((y0, y1))) =
            (x_extent(lines.iter()), y_extent(lines.iter(), false))
        {
            let x0 = x0.max(1e-6);
            let fig = Figure {
                title: format!(
                    "{task}: test accuracy after {} (no retraining)",
                    crate::prune::curve_name(gs[0].runs[0].config.pruning.as_ref())
                ),
                note: note.clone(),
                x_desc: "weights kept (log scale)",
                y_desc: "test accuracy %",
                x: Axis::log(x0, x1.max(x0), 1.12, true, fmt_pct),
                y: Axis::linear(y0, y1.min(100.0), Some(0.0), fmt_num),
                vline: None,
                baseline: bl,
                panels,
            };
            out.push((format!("{s}-pruning.svg"), render_figure(&fig)?));
        }

        // The distribution of weight magnitudes.
        let (mut bl, mut panels) = build(&magnitude_line);
        {
            let mut refs: Vec<&mut Line> = bl
                .iter_mut()
                .chain(panels.iter_mut().flat_map(|p| p.lines.iter_mut()))
                .collect();
            trim_tails(&mut refs, MAG_FLOOR);
        }
        let lines = all(&bl, &panels);
        if let (Some((x0, x1)), Some((_, y1))) =
            (x_extent(lines.iter()), y_extent(lines.iter(), true))
        {
            let fig = Figure {
                title: format!("{task}: distribution of weight magnitudes after training"),
                note,
                x_desc: "|w| (log scale; grey line: the near-zero threshold 1e-3)",
                y_desc: "% of weights per 0.25 decade (log scale)",
                x: Axis::linear(x0, x1, None, fmt_pow10),
                y: Axis::log(MAG_FLOOR, y1.max(MAG_FLOOR), 1.25, false, fmt_num),
                vline: Some(-3.0),
                baseline: bl,
                panels,
            };
            out.push((format!("{s}-magnitudes.svg"), render_figure(&fig)?));
        }

        for (name, svg) in out {
            write_atomic(&dir.join("plots").join(name), svg.as_bytes())?;
        }
    }
    Ok(())
}

/// With pruning tasks (`pruning` set on some): `plots/pruning-methods.svg`,
/// test accuracy against the weights kept, one panel per optimizer and
/// criterion, one line per method (task; the `zero` and `reset` state
/// policies left out), each the one-shot curve of the run's final network
/// (a pruned run's is flat down to its own sparsity).
pub fn pruning_methods(dir: &Path, groups: &[Group]) -> Result<()> {
    use crate::optim::StatePolicy;
    use crate::prune::Criterion;
    let setting = |g: &Group| g.runs.first().and_then(|r| r.config.pruning.clone());
    if !groups.iter().any(|g| setting(g).is_some()) {
        return Ok(());
    }
    let mut labels: Vec<&str> = vec![];
    for g in groups {
        if !labels.contains(&g.label.as_str()) {
            labels.push(&g.label);
        }
    }
    let mut panels = vec![];
    for label in labels {
        for (criterion, name) in [(Criterion::Magnitude, "magnitude"), (Criterion::Wv, "w²·v̂")]
        {
            let lines: Vec<Line> = groups
                .iter()
                .filter(|g| g.label == label && g.done().next().is_some())
                .filter(|g| {
                    let p = setting(g);
                    p.as_ref().map_or(Criterion::Magnitude, |p| p.criterion) == criterion
                        && p.and_then(|p| p.state)
                            .is_none_or(|s| s == StatePolicy::Keep)
                })
                .map(|g| Line {
                    label: g.task.clone(),
                    ..pruning_line(g)
                })
                .collect();
            if !lines.is_empty() {
                panels.push(Panel {
                    title: format!("{label}, {name}"),
                    lines,
                });
            }
        }
    }
    let lines: Vec<Line> = panels.iter().flat_map(|p| p.lines.clone()).collect();
    let (Some((x0, x1)), Some((y0, y1))) = (x_extent(lines.iter()), y_extent(lines.iter(), false))
    else {
        return Ok(());
    };
    let x0 = x0.max(1e-6);
    let gs: Vec<&Group> = groups.iter().collect();
    let fig = Figure {
        title: "Test accuracy against weights kept, per optimizer and pruning method".into(),
        note: note(&gs, None).replace(
            "One panel per optimizer family",
            "One panel per optimizer and criterion, one line per method",
        ),
        x_desc: "weights kept (log scale)",
        y_desc: "test accuracy %",
        x: Axis::log(x0, x1.max(x0), 1.12, true, fmt_pct),
        y: Axis::linear(y0, y1.min(100.0), Some(0.0), fmt_num),
        vline: None,
        baseline: None,
        panels,
    };
    write_atomic(
        &dir.join("plots").join("pruning-methods.svg"),
        render_figure(&fig)?.as_bytes(),
    )
}

// ---------------------------------------------------------------------------
// Pareto plot

/// A scatter of `(label, x, y)` points, here test accuracy against a
/// sparsity measure over a learning-rate grid, joined by one line per label
/// in the order the points are given (the grid's order: the line walks from
/// the smallest lr to the largest); labels keep their order of first
/// appearance.
/// Non-finite points are left out.
pub fn pareto(
    path: &Path,
    title: &str,
    points: &[(String, f64, f64)],
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| plot_err(title, e);
    let mut labels: Vec<(&str, Vec<(f64, f64)>)> = vec![];
    for (l, x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        match labels.iter_mut().find(|(n, _)| *n == l.as_str()) {
            Some((_, v)) => v.push((*x, *y)),
            None => labels.push((l.as_str(), vec![(*x, *y)])),
        }
    }
    let all = labels.iter().flat_map(|(_, v)| v.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return Err(anyhow!("plot `{title}`: no finite points"));
    }
    let (xa, ya) = (
        Axis::linear(x0, x1, None, fmt_num),
        Axis::linear(y0, y1, None, fmt_num),
    );
    let legend_h = 16 + 22 * labels.len() as u32;
    let (w, chart_h) = (820u32, 560u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, chart_h + legend_h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (plot, legend) = root.split_vertically(chart_h);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, 20))
            .margin(10)
            .margin_right(24)
            .x_label_area_size(46)
            .y_label_area_size(66)
            .build_cartesian_2d(xa.clone(), ya.clone())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .bold_line_style(BLACK.mix(0.14))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (label, pts)) in labels.iter().enumerate() {
            let s = style(i);
            let px: Vec<(i32, i32)> = pts
                .iter()
                .map(|&(x, y)| chart.backend_coord(&(x, y)))
                .collect();
            draw_path(&root, px.clone(), &s)?;
            for p in px {
                draw_marker(&root, s.marker, p, s.color)?;
            }
            draw_key(&legend, (74, 12 + 22 * i as i32), &s, label, 15)?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    write_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci95_matches_t_tables() {
        // n = 3, sd = 1: t_{0.975,2} / sqrt(3).
        let (m, h) = ci95(&[-1.0, 0.0, 1.0]).unwrap();
        assert_eq!(m, 0.0);
        assert!((h - 4.302_652_7 / 3f64.sqrt()).abs() < 1e-9, "{h}");
        // n = 2: sd = sqrt(2), so the half-width is t_{0.975,1} = 12.706.
        let (m, h) = ci95(&[1.0, 3.0]).unwrap();
        assert_eq!(m, 2.0);
        assert!((h - 12.706_204_7).abs() < 1e-6, "{h}");
        assert_eq!(ci95(&[5.0]), None);
        assert_eq!(ci95(&[]), None);
        assert_eq!(ci95(&[1.0, f64::NAN]), None);
        // Beyond the table: t_{0.975,40} = 2.021075, t_{0.975,100} = 1.983972,
        // and the expansion joins the table at 30 (2.042272).
        assert!((t975(40) - 2.021_075).abs() < 2e-6, "{}", t975(40));
        assert!((t975(100) - 1.983_972).abs() < 2e-6, "{}", t975(100));
        assert!((t975(31) - 2.039_513).abs() < 2e-6, "{}", t975(31));
        assert!((1..200).all(|d| t975(d) > t975(d + 1)));
    }

    #[test]
    fn log_axis_ticks_and_reversed_mapping() {
        let a = Axis::log(0.01, 1.0, 1.0, true, fmt_pct);
        assert_eq!(a.ticks, vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]);
        // Reversed: 1 on the left, 0.01 on the right, 0.1 in the middle.
        assert_eq!(a.map(&1.0, (0, 100)), 0);
        assert_eq!(a.map(&0.01, (0, 100)), 100);
        assert_eq!(a.map(&0.1, (0, 100)), 50);
        let labels: Vec<String> = a.ticks.iter().map(|&t| fmt_pct(t)).collect();
        assert_eq!(labels, ["1%", "2%", "5%", "10%", "20%", "50%", "100%"]);
        let l = Axis::linear(0.0, 5.0, Some(0.0), fmt_num);
        assert_eq!(l.lo, 0.0);
        assert_eq!(l.ticks, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(fmt_num(0.30000000000000004), "0.3");
        assert_eq!(fmt_pow10(-3.0), "1e-3");
    }

    #[test]
    fn pareto_renders_every_label_and_is_deterministic() {
        let dir = std::env::temp_dir().join(format!("sparsity-lab-pareto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pts: Vec<(String, f64, f64)> = [
            ("SGD", 97.5, 2.1),
            ("SGD", 96.0, 2.5),
            ("Adam", 97.2, 1.1),
            ("Adam", 95.0, 0.9),
            ("Adam+L1 prox", 97.1, 45.0),
            ("Adam+L1 prox", f64::NAN, 50.0),
        ]
        .iter()
        .map(|&(l, x, y)| (l.to_string(), x, y))
        .collect();
        let (a, b) = (dir.join("a.svg"), dir.join("b.svg"));
        pareto(
            &a,
            "sparsity against accuracy",
            &pts,
            "test accuracy %",
            "% near zero",
        )
        .unwrap();
        pareto(
            &b,
            "sparsity against accuracy",
            &pts,
            "test accuracy %",
            "% near zero",
        )
        .unwrap();
        let svg = std::fs::read_to_string(&a).unwrap();
        for l in [
            "SGD",
            "Adam",
            "Adam+L1 prox",
            "sparsity against accuracy",
            "% near zero",
        ] {
            assert!(svg.contains(l), "{l} missing");
        }
        assert_eq!(svg.as_bytes(), std::fs::read(&b).unwrap().as_slice());
        assert!(pareto(&a, "empty", &[], "x", "y").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.1), 2.0);
        assert_eq!(nice_step(0.021), 0.05);
        assert_eq!(nice_step(3.0), 5.0);
    }
}
