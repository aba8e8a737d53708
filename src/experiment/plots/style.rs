//! How lines look: Okabe and Ito's colour-blind-safe palette, a dash
//! pattern and a marker per line, and the drawing of paths, markers and
//! legend keys.

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Okabe and Ito's colour-blind-safe palette, black (the baseline's) left
/// out, in an order that keeps the first colours apart in grey too.
pub(super) const OKABE_ITO: [(u8, u8, u8); 7] = [
    (0, 114, 178),   // blue
    (213, 94, 0),    // vermillion
    (0, 158, 115),   // bluish green
    (204, 121, 167), // reddish purple
    (230, 159, 0),   // orange
    (86, 180, 233),  // sky blue
    (240, 228, 66),  // yellow
];

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Marker {
    None,
    Circle,
    Triangle,
    Square,
    Diamond,
    Cross,
}

#[derive(Clone, Copy)]
pub(super) struct Style {
    pub(super) color: RGBColor,
    /// Dash and gap lengths in pixels; None for a solid line.
    pub(super) dash: Option<(i32, i32)>,
    pub(super) marker: Marker,
    pub(super) width: u32,
}

pub(super) fn style(i: usize) -> Style {
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

pub(super) fn baseline_style() -> Style {
    Style {
        color: BLACK,
        dash: Some((6, 5)),
        marker: Marker::None,
        width: 2,
    }
}

pub(super) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

pub(super) fn plot_err(title: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot `{title}`: {e}")
}

/// Draws `m` centred on the pixel `(x, y)` of `area`.
pub(super) fn draw_marker(area: &Area, m: Marker, (x, y): (i32, i32), c: RGBColor) -> Result<()> {
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
pub(super) fn draw_path(area: &Area, pts: Vec<(i32, i32)>, s: &Style) -> Result<()> {
    let st = s.color.stroke_width(s.width);
    match s.dash {
        None => area.draw(&PathElement::new(pts, st)),
        Some((d, g)) => area.draw(&DashedPathElement::new(pts, d, g, st)),
    }
    .map_err(|e| plot_err("line", e))
}

/// A legend entry: a line sample with its marker, then the label.
pub(super) fn draw_key(
    area: &Area,
    (x, y): (i32, i32),
    s: &Style,
    label: &str,
    size: u32,
) -> Result<()> {
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

pub(super) const FONT: &str = "sans-serif";
