//! The figures of a report: per task, near-zero weights over training,
//! accuracy after pruning and weight magnitudes; the pruning methods; and
//! the Pareto plots of sparsity against accuracy.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::axis::{Axis, fmt_num, fmt_pct, fmt_pow10, x_extent, y_extent};
use super::lines::{Line, history_line, magnitude_line, near_zero_line, pruning_line, trim_tails};
use super::panels::{PanelSpec, panel_specs};
use super::render::{Figure, Panel, render_figure};
use super::style::{FONT, draw_key, draw_marker, draw_path, plot_err, style};
use crate::experiment::record::Group;
use crate::experiment::study::slug;
use crate::io::{remove_stale, write_atomic};

/// The magnitude histogram's y axis starts here (% of weights a bin); bins
/// below it are drawn at it, and x values where every line is below it are
/// left out.
const MAG_FLOOR: f64 = 0.01;

/// The figure's second line: what the panels, the baseline and the bands are.
pub(super) fn note(gs: &[&Group], baseline: Option<&Group>) -> String {
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
    write_all_with_baseline(dir, groups, None, true)
}

/// As [`write_all`], with the baseline named by its label (a task without
/// that label falls back to its first optimizer); without the magnitude
/// figure unless `magnitudes`, removing a stale one.
pub fn write_all_with_baseline(
    dir: &Path,
    groups: &[Group],
    baseline: Option<&str>,
    magnitudes: bool,
) -> Result<()> {
    let mut tasks: Vec<&str> = vec![];
    for g in groups {
        if !tasks.contains(&g.task.as_str()) {
            tasks.push(&g.task);
        }
    }
    for task in tasks {
        let t = TaskPlots::new(groups, task, baseline);
        let s = slug(task);
        let figures: [(&str, FigureFn); 6] = [
            ("near-zero", near_zero_figure),
            ("pruning", pruning_figure),
            ("magnitudes", magnitude_figure),
            ("dead-filters", dead_filters_figure),
            ("dense-dead", dense_dead_figure),
            ("train-loss", train_loss_figure),
        ];
        let mut out: Vec<(String, String)> = vec![];
        for (name, figure) in figures {
            if name == "magnitudes" && !magnitudes {
                remove_stale(&dir.join("plots").join(format!("{s}-{name}.svg")))?;
                continue;
            }
            if let Some(svg) = figure(&t)? {
                out.push((format!("{s}-{name}.svg"), svg));
            }
        }
        for (name, svg) in out {
            write_atomic(&dir.join("plots").join(name), svg.as_bytes())?;
        }
    }
    Ok(())
}

/// Draws one figure of a task, None when its lines have no extent.
type FigureFn = fn(&TaskPlots) -> Result<Option<String>>;

/// One task's groups, its baseline and panels: what its figures share.
struct TaskPlots<'a> {
    task: &'a str,
    gs: Vec<&'a Group>,
    base: Option<usize>,
    specs: Vec<PanelSpec>,
    note: String,
}

impl<'a> TaskPlots<'a> {
    fn new(groups: &'a [Group], task: &'a str, baseline: Option<&str>) -> Self {
        let gs: Vec<&Group> = groups.iter().filter(|g| g.task == task).collect();
        let base = baseline
            .and_then(|b| gs.iter().position(|g| g.label == b))
            .or((!gs.is_empty()).then_some(0));
        let specs = panel_specs(&gs, base);
        let note = note(&gs, base.map(|i| gs[i]));
        Self {
            task,
            gs,
            base,
            specs,
            note,
        }
    }

    /// The baseline's line and the panels' lines, each drawn by `line`.
    fn build(&self, line: &dyn Fn(&Group) -> Line) -> (Option<Line>, Vec<Panel>) {
        (
            self.base.map(|i| line(self.gs[i])),
            self.specs
                .iter()
                .map(|p| Panel {
                    title: p.title.clone(),
                    lines: p.members.iter().map(|&i| line(self.gs[i])).collect(),
                })
                .collect(),
        )
    }
}

/// Every line of a figure, the baseline's first.
fn all_lines(b: &Option<Line>, ps: &[Panel]) -> Vec<Line> {
    b.iter()
        .cloned()
        .chain(ps.iter().flat_map(|p| p.lines.iter().cloned()))
        .collect()
}

/// Near-zero weights over training: log y when the lines span a decade.
fn near_zero_figure(t: &TaskPlots) -> Result<Option<String>> {
    let task = t.task;
    let (bl, panels) = t.build(&near_zero_line);
    let lines = all_lines(&bl, &panels);
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
            note: t.note.clone(),
            x_desc: "epoch",
            y_desc,
            x: Axis::linear(x0, x1, None, fmt_num),
            y,
            vline: None,
            baseline: bl,
            panels,
        };
        return render_figure(&fig).map(Some);
    }
    Ok(None)
}

/// Whether the task's runs record filter measures at every evaluation (the
/// CNN since issue 21): the condition for the three figures over training
/// that follow.
pub fn has_filter_history(gs: &[&Group]) -> bool {
    gs.iter()
        .flat_map(|g| g.done())
        .any(|r| r.history.iter().any(|h| h.filters.is_some()))
}

/// A figure of one per-evaluation value against the epoch, for tasks with
/// [`has_filter_history`]; linear y from 0.
fn history_figure(
    t: &TaskPlots,
    title: &str,
    y_desc: &'static str,
    value: fn(&crate::train::EvalPoint) -> Option<f64>,
) -> Result<Option<String>> {
    if !has_filter_history(&t.gs) {
        return Ok(None);
    }
    let (bl, panels) = t.build(&|g| history_line(g, value));
    let lines = all_lines(&bl, &panels);
    let (Some((x0, x1)), Some((y0, y1))) = (x_extent(lines.iter()), y_extent(lines.iter(), false))
    else {
        return Ok(None);
    };
    let fig = Figure {
        title: format!("{}: {title}", t.task),
        note: t.note.clone(),
        x_desc: "epoch",
        y_desc,
        x: Axis::linear(x0, x1, None, fmt_num),
        y: Axis::linear(y0.min(0.0), y1, Some(0.0), fmt_num),
        vline: None,
        baseline: bl,
        panels,
    };
    render_figure(&fig).map(Some)
}

/// Dead filters over all conv layers, per evaluation.
fn dead_filters_figure(t: &TaskPlots) -> Result<Option<String>> {
    history_figure(
        t,
        "dead filters (all conv layers) during training",
        "% of filters",
        |h| Some(100.0 * h.filters.as_ref()?.total.dead_frac()),
    )
}

/// The dense hidden layer's dead units, per evaluation.
fn dense_dead_figure(t: &TaskPlots) -> Result<Option<String>> {
    history_figure(t, "dense dead units during training", "% of units", |h| {
        Some(100.0 * h.dense_dead.as_ref()?.frac)
    })
}

/// The training loss since the previous evaluation: flat at the end when
/// training has converged.
fn train_loss_figure(t: &TaskPlots) -> Result<Option<String>> {
    history_figure(t, "training loss during training", "training loss", |h| {
        h.train_loss
    })
}

/// Accuracy after pruning, against the fraction of weights kept.
fn pruning_figure(t: &TaskPlots) -> Result<Option<String>> {
    let task = t.task;
    let (bl, panels) = t.build(&pruning_line);
    let lines = all_lines(&bl, &panels);
    if let (Some((x0, x1)), Some((y0, y1))) =
        (x_extent(lines.iter()), y_extent(lines.iter(), false))
    {
        let x0 = x0.max(1e-6);
        let fig = Figure {
            title: format!(
                "{task}: test accuracy after {} (no retraining)",
                crate::prune::curve_name(t.gs[0].runs[0].config.pruning.as_ref())
            ),
            note: t.note.clone(),
            x_desc: "weights kept (log scale)",
            y_desc: "test accuracy %",
            x: Axis::log(x0, x1.max(x0), 1.12, true, fmt_pct),
            y: Axis::linear(y0, y1.min(100.0), Some(0.0), fmt_num),
            vline: None,
            baseline: bl,
            panels,
        };
        return render_figure(&fig).map(Some);
    }
    Ok(None)
}

/// The distribution of weight magnitudes.
fn magnitude_figure(t: &TaskPlots) -> Result<Option<String>> {
    let task = t.task;
    let (mut bl, mut panels) = t.build(&magnitude_line);
    {
        let mut refs: Vec<&mut Line> = bl
            .iter_mut()
            .chain(panels.iter_mut().flat_map(|p| p.lines.iter_mut()))
            .collect();
        trim_tails(&mut refs, MAG_FLOOR);
    }
    let lines = all_lines(&bl, &panels);
    if let (Some((x0, x1)), Some((_, y1))) = (x_extent(lines.iter()), y_extent(lines.iter(), true))
    {
        let fig = Figure {
            title: format!("{task}: distribution of weight magnitudes after training"),
            note: t.note.clone(),
            x_desc: "|w| (log scale; grey line: the near-zero threshold 1e-3)",
            y_desc: "% of weights per 0.25 decade (log scale)",
            x: Axis::linear(x0, x1, None, fmt_pow10),
            y: Axis::log(MAG_FLOOR, y1.max(MAG_FLOOR), 1.25, false, fmt_num),
            vline: Some(-3.0),
            baseline: bl,
            panels,
        };
        return render_figure(&fig).map(Some);
    }
    Ok(None)
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
}
