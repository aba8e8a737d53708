//! The tuning study's figure: each configuration's tuning criterion against
//! the learning rate ([`crate::experiment::tuning`] chooses; this draws).

use plotters::prelude::*;

use super::style::{FONT, OKABE_ITO};
use crate::experiment::tuning::{Choice, fmt_lr};

/// Configurations a panel of the lr-curve plot.
const PER_PANEL: usize = 4;

/// The lr curves of one task as SVG: the criterion (%) against the learning
/// rate on a log axis, one line per configuration (the mean over seeds),
/// its 95 % confidence band, and the winner ringed in black; at most
/// [`PER_PANEL`] configurations a panel, in study order.
pub fn lr_curve_svg(task: &str, choices: &[&Choice]) -> anyhow::Result<String> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("lr-curve plot of {task}: {e}");
    let pts = |c: &Choice| -> Vec<(f64, f64, f64)> {
        c.points
            .iter()
            .filter_map(|p| {
                let (m, _) = p.mean_se()?;
                (p.eligible() && m.is_finite())
                    .then(|| (p.lr, 100.0 * m, 100.0 * p.ci95_half().unwrap_or(0.0)))
            })
            .collect()
    };
    let all: Vec<(f64, f64, f64)> = choices.iter().flat_map(|c| pts(c)).collect();
    if all.is_empty() {
        return Err(err(&"no finished learning rate"));
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    // The interesting part is near the top: show 12 points below the best.
    let top = all.iter().map(|p| p.1 + p.2).fold(f64::MIN, f64::max);
    let (y0, y1) = (top - 12.0, top + 0.5);
    let panels: Vec<&[&Choice]> = choices.chunks(PER_PANEL).collect();
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let (pw, ph) = (620u32, 440u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (pw * cols as u32, 60 + ph * rows as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (head, body) = root.split_vertically(60);
        head.titled(
            &format!("{task}: tuning criterion against learning rate (mean of seeds, 95% CI band; black ring: winner)"),
            (FONT, 17),
        )
        .map_err(|e| err(&e))?;
        for (area, members) in body.split_evenly((rows, cols)).iter().zip(&panels) {
            let mut chart = ChartBuilder::on(area)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d((x0 / 1.5..x1 * 1.5).log_scale(), y0..y1)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("learning rate")
                .y_desc("criterion (% held-out accuracy)")
                .x_label_formatter(&|v| fmt_lr(*v))
                .label_style((FONT, 13))
                .light_line_style(BLACK.mix(0.05))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, c) in members.iter().enumerate() {
                let (r, g, b) = OKABE_ITO[i % OKABE_ITO.len()];
                let col = RGBColor(r, g, b);
                let ps = pts(c);
                let clamp = |y: f64| y.clamp(y0, y1);
                let mut band: Vec<(f64, f64)> =
                    ps.iter().map(|p| (p.0, clamp(p.1 + p.2))).collect();
                band.extend(ps.iter().rev().map(|p| (p.0, clamp(p.1 - p.2))));
                chart
                    .draw_series(std::iter::once(Polygon::new(band, col.mix(0.18).filled())))
                    .map_err(|e| err(&e))?;
                chart
                    .draw_series(LineSeries::new(
                        ps.iter().map(|p| (p.0, clamp(p.1))),
                        col.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(c.config.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                    });
                chart
                    .draw_series(
                        ps.iter()
                            .map(|p| Circle::new((p.0, clamp(p.1)), 3, col.filled())),
                    )
                    .map_err(|e| err(&e))?;
                if let Some(w) = c.winner {
                    let p = &c.points[w];
                    let m = 100.0 * p.mean_se().map_or(f64::NAN, |m| m.0);
                    chart
                        .draw_series(std::iter::once(Circle::new(
                            (p.lr, clamp(m)),
                            8,
                            BLACK.stroke_width(2),
                        )))
                        .map_err(|e| err(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font((FONT, 13))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// Writes `plots/<task>-lr-curve.svg` for every task of `choices`.
pub fn write_lr_curves(dir: &std::path::Path, choices: &[Choice]) -> anyhow::Result<()> {
    let mut tasks: Vec<&str> = vec![];
    for c in choices {
        if !tasks.contains(&c.task.as_str()) {
            tasks.push(&c.task);
        }
    }
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)?;
    for t in tasks {
        let cs: Vec<&Choice> = choices.iter().filter(|c| c.task == t).collect();
        let svg = lr_curve_svg(t, &cs)?;
        crate::io::write_atomic(
            &plots.join(format!("{}-lr-curve.svg", crate::io::slug(t))),
            svg.as_bytes(),
        )?;
    }
    Ok(())
}
