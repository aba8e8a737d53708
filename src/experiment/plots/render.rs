//! A figure of small multiples: panels on shared axes, the baseline in
//! every panel, bands under the lines, and a legend under each panel.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::Axis;
use super::lines::{Line, Pt};
use super::style::{
    Area, FONT, Marker, Style, baseline_style, draw_key, draw_marker, draw_path, plot_err, style,
};

pub(super) struct Panel {
    pub(super) title: String,
    pub(super) lines: Vec<Line>,
}

pub(super) struct Figure<'a> {
    pub(super) title: String,
    pub(super) note: String,
    pub(super) x_desc: &'a str,
    pub(super) y_desc: &'a str,
    pub(super) x: Axis,
    pub(super) y: Axis,
    /// A thin grey vertical line at this x, if in range.
    pub(super) vline: Option<f64>,
    pub(super) baseline: Option<Line>,
    pub(super) panels: Vec<Panel>,
}

pub(super) fn render_figure(fig: &Figure) -> Result<String> {
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
            draw_panel(&root, cell, panel, fig, chart_h)?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// One panel in its cell of the figure: the chart (axes and grid, the
/// vertical line, bands, lines and markers) and its legend under it.
fn draw_panel(root: &Area, cell: &Area, panel: &Panel, fig: &Figure, chart_h: u32) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| plot_err(&fig.title, e);
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
            root,
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
        draw_path(root, pts.clone(), s)?;
        // No markers on points drawn at the bottom of a log axis.
        for (j, (p, px)) in finite.iter().zip(&pts).enumerate() {
            if j % stride == k % stride && p.y >= fig.y.lo {
                draw_marker(root, s.marker, *px, s.color)?;
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
    Ok(())
}
