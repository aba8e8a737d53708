//! Linear and logarithmic axes (possibly reversed) with explicit ticks,
//! and the extents of a set of lines.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

use super::lines::Line;

/// A linear or logarithmic axis, possibly reversed, with explicit ticks.
#[derive(Clone)]
pub(super) struct Axis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) log: bool,
    pub(super) reversed: bool,
    pub(super) ticks: Vec<f64>,
    pub(super) minor: Vec<f64>,
    pub(super) fmt: fn(f64) -> String,
}

impl Axis {
    fn t(&self, v: f64) -> f64 {
        if self.log { v.max(1e-300).log10() } else { v }
    }

    pub(super) fn clamp(&self, v: f64) -> f64 {
        v.clamp(self.lo, self.hi)
    }

    /// A linear axis over [lo, hi] with about six round ticks and a margin
    /// of 4 % (none below a `floor` that the data touches).
    pub(super) fn linear(lo: f64, hi: f64, floor: Option<f64>, fmt: fn(f64) -> String) -> Axis {
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
    pub(super) fn log(lo: f64, hi: f64, pad: f64, reversed: bool, fmt: fn(f64) -> String) -> Axis {
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
pub(super) fn fmt_num(v: f64) -> String {
    for d in 0..=6 {
        let s = format!("{v:.d$}");
        let back: f64 = s.parse().unwrap_or(f64::NAN);
        if (back - v).abs() <= 1e-9 * v.abs().max(1.0) {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:e}")
}

pub(super) fn fmt_pct(v: f64) -> String {
    format!("{}%", fmt_num(100.0 * v))
}

/// A label for log10 |w|: `1e-3` at integers.
pub(super) fn fmt_pow10(v: f64) -> String {
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
pub(super) fn y_extent<'a>(
    lines: impl Iterator<Item = &'a Line>,
    positive: bool,
) -> Option<(f64, f64)> {
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

pub(super) fn x_extent<'a>(lines: impl Iterator<Item = &'a Line>) -> Option<(f64, f64)> {
    let mut ext: Option<(f64, f64)> = None;
    for p in lines.flat_map(|l| l.points.iter()) {
        if p.x.is_finite() && p.y.is_finite() {
            ext = Some(ext.map_or((p.x, p.x), |(a, b)| (a.min(p.x), b.max(p.x))));
        }
    }
    ext
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn nice_steps() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.1), 2.0);
        assert_eq!(nice_step(0.021), 0.05);
        assert_eq!(nice_step(3.0), 5.0);
    }
}
