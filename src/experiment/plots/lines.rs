//! The lines of a figure: per configuration, the mean over its finished
//! seeds at each x, with the 95 % confidence interval of that mean.

use crate::experiment::record::{Group, StudyRecord};
use crate::experiment::stats::{ci95, mean_std};

/// A line's value at one x: the mean over seeds and the 95 % CI half-width.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pt {
    pub(super) x: f64,
    pub(super) y: f64,
    pub(super) half: Option<f64>,
}

/// One line of a plot.
#[derive(Clone, Debug)]
pub(super) struct Line {
    pub(super) label: String,
    pub(super) points: Vec<Pt>,
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

pub(super) fn near_zero_line(g: &Group) -> Line {
    line_of(g, |r| {
        r.history
            .iter()
            .map(|h| (h.epoch, 100.0 * h.weights_near_zero_frac["1e-3"]))
            .collect()
    })
}

/// A per-evaluation value against the epoch, from the evaluations that
/// have it.
pub(super) fn history_line(g: &Group, value: fn(&crate::train::EvalPoint) -> Option<f64>) -> Line {
    line_of(g, |r| {
        r.history
            .iter()
            .filter_map(|h| value(h).filter(|v| v.is_finite()).map(|v| (h.epoch, v)))
            .collect()
    })
}

/// Test accuracy against the fraction of weights kept (1 = unpruned).
pub(super) fn pruning_line(g: &Group) -> Line {
    line_of(g, |r| {
        let f = r.r#final.as_ref().expect("done runs have final measures");
        let mut pts = vec![(1.0, 100.0 * f.test_acc)];
        pts.extend(f.pruning.iter().map(|p| (1.0 - p.frac, 100.0 * p.test_acc)));
        pts
    })
}

pub(super) fn magnitude_line(g: &Group) -> Line {
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
pub(super) fn trim_tails(lines: &mut [&mut Line], min: f64) {
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
