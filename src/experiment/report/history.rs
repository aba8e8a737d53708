//! Tables over training, from the evaluations a run records in `history`:
//! one table per measure, a row per configuration (mean ± sd over seeds), a
//! column per evaluation. The CNN's filter section uses them for dead
//! filters; the Transformer's for how far its weights left their
//! initialisation and whether its held-out loss has flattened.

use std::fmt::Write as _;

use super::columns::{finite, md_table, num, pct, stat};
use crate::experiment::record::{Group, StudyRecord};

/// A run's value at evaluation `i` (its index in `history`).
pub(super) type AtEval = fn(&StudyRecord, usize) -> Option<f64>;

/// One table over training: its title, the value at an evaluation, and
/// whether it is a fraction shown in percent (else a number with 4
/// decimals).
pub(super) type Series = (&'static str, AtEval, bool);

/// One table per series: a row per group, a column per entry of `columns`
/// (an evaluation's index in `history`, and its header).
pub(super) fn history_tables(
    out: &mut String,
    gs: &[&Group],
    columns: &[(usize, String)],
    series: &[Series],
) {
    let mut header = vec!["optimizer".to_string()];
    header.extend(columns.iter().map(|(_, h)| h.clone()));
    for (title, at, percent) in series {
        let _ = writeln!(out, "{title}:\n");
        let rows: Vec<Vec<String>> = gs
            .iter()
            .map(|g| {
                let mut row = vec![g.label.clone()];
                row.extend(columns.iter().map(|&(i, _)| {
                    let v = stat(g, |r| at(r, i));
                    if *percent { pct(v) } else { num(v, 4) }
                }));
                row
            })
            .collect();
        md_table(out, &header, &rows);
    }
}

/// At most `max` of `n` evaluations, evenly spaced, always the first and
/// the last: every k-th with the smallest k that fits, plus the last.
fn spaced(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let k = (n - 1).div_ceil(max.max(2) - 1);
    let mut idx: Vec<usize> = (0..n).step_by(k).collect();
    if idx.last() != Some(&(n - 1)) {
        if idx.len() == max {
            idx.pop();
        }
        idx.push(n - 1);
    }
    idx
}

/// The first finished run whose history records the distance from
/// initialisation at every evaluation.
fn run_with_distance<'a>(gs: &[&'a Group]) -> Option<&'a StudyRecord> {
    gs.iter()
        .flat_map(|g| g.done())
        .find(|r| r.history.len() > 1 && r.history.iter().all(|h| h.weights_dist_init.is_some()))
}

/// The held-out loss's fall over the last fifth of a run (from the last
/// evaluation at or before 80 % of its steps to the end), as a fraction of
/// its fall since the first evaluation.
fn last_fifth_fall(r: &StudyRecord) -> Option<f64> {
    let points: Vec<(usize, f64)> = r.history.iter().map(|h| (h.step, h.test_loss)).collect();
    fall_fraction(&points)
}

/// [`last_fifth_fall`] of (step, loss) points in step order; none when the
/// loss did not fall overall or a value is not finite.
fn fall_fraction(points: &[(usize, f64)]) -> Option<f64> {
    let (&(_, first), &(end, last)) = (points.first()?, points.last()?);
    let &(_, mark) = points.iter().rev().find(|(s, _)| 5 * s <= 4 * end)?;
    let fall = first - last;
    finite((mark - last) / fall).filter(|_| fall > 0.0)
}

/// How far the weights left their initialisation and whether the held-out
/// loss has flattened: a summary row per configuration, then the measures
/// at (at most 11 of) the evaluations. For the Transformer, whose runs
/// record the distance from initialisation at every evaluation (the CNN
/// has its own tables over training in the filter section).
pub(super) fn weights_over_training(out: &mut String, gs: &[&Group]) {
    let Some(first) = run_with_distance(gs) else {
        return;
    };
    if !matches!(
        first.config.model,
        crate::models::ModelConfig::Transformer(_)
    ) {
        return;
    }
    let dist_end = |r: &StudyRecord| r.history.last()?.weights_dist_init;
    let _ = writeln!(
        out,
        "### Over training\n\n\
         How far the weights (tensors with two or more dimensions, pooled) moved from their \
         initialisation, ‖w − w₀‖ / ‖w₀‖, and how much the held-out loss still fell over the \
         last fifth of the run (from the last evaluation at or before 80 % of the steps to the \
         end), as a percentage of its fall since step 0; mean ± sd over seeds.\n"
    );
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            vec![
                g.label.clone(),
                num(stat(g, dist_end), 3),
                pct(stat(g, last_fifth_fall)),
            ]
        })
        .collect();
    md_table(
        out,
        &[
            "optimizer".into(),
            "‖w − w₀‖ / ‖w₀‖ at the end".into(),
            "held-out loss fall over the last fifth, % of its fall".into(),
        ],
        &rows,
    );
    let columns: Vec<(usize, String)> = spaced(first.history.len(), 11)
        .into_iter()
        .map(|i| (i, format!("step {}", first.history[i].step)))
        .collect();
    let _ = writeln!(
        out,
        "At each evaluation (columns: step; every evaluation is in `metrics.csv`), mean ± sd over seeds.\n"
    );
    let series: [Series; 6] = [
        (
            "Held-out loss",
            |r, i| finite(r.history.get(i)?.test_loss),
            false,
        ),
        (
            "Training loss, mean over the steps since the previous evaluation",
            |r, i| r.history.get(i)?.train_loss.and_then(finite),
            false,
        ),
        (
            "Held-out accuracy (%)",
            |r, i| finite(r.history.get(i)?.test_acc),
            true,
        ),
        (
            "Distance from initialisation, ‖w − w₀‖ / ‖w₀‖",
            |r, i| r.history.get(i)?.weights_dist_init,
            false,
        ),
        (
            "\\|w\\| < 0.01 × the RMS of its own tensor (%)",
            |r, i| {
                let h = r.history.get(i)?;
                h.weights_scale_rel_near_zero_frac
                    .get("0.01")
                    .copied()
                    .and_then(finite)
            },
            true,
        ),
        (
            "Shrunk to ≤ 0.1 × \\|w_init\\| (%)",
            |r, i| {
                let h = r.history.get(i)?;
                h.weights_shrinkage.get("0.1").copied().and_then(finite)
            },
            true,
        ),
    ];
    history_tables(out, gs, &columns, &series);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_over_the_last_fifth_by_hand() {
        // Steps 0..1000 by 200: the mark is step 800 (5 × 800 = 4 × 1000).
        let pts = [
            (0, 4.0),
            (200, 2.5),
            (400, 2.2),
            (600, 2.1),
            (800, 2.05),
            (1000, 2.0),
        ];
        // (2.05 − 2.0) / (4.0 − 2.0) = 0.025.
        assert!((fall_fraction(&pts).unwrap() - 0.025).abs() < 1e-12);
        // Steps 0..3000 by 200: the mark is step 2400.
        let pts: Vec<(usize, f64)> = (0..=15).map(|i| (200 * i, 10.0 - i as f64)).collect();
        assert!((fall_fraction(&pts).unwrap() - 3.0 / 15.0).abs() < 1e-12);
        // A loss that rose, or a NaN, gives none.
        assert_eq!(fall_fraction(&[(0, 1.0), (10, 2.0)]), None);
        assert_eq!(fall_fraction(&[(0, 1.0), (10, f64::NAN)]), None);
        assert_eq!(fall_fraction(&[]), None);
    }

    #[test]
    fn spaced_keeps_the_first_and_the_last_and_at_most_max() {
        assert_eq!(spaced(5, 11), vec![0, 1, 2, 3, 4]);
        assert_eq!(spaced(16, 11), vec![0, 2, 4, 6, 8, 10, 12, 14, 15]);
        assert_eq!(spaced(21, 11), (0..=20).step_by(2).collect::<Vec<_>>());
        for n in 1..200 {
            let s = spaced(n, 11);
            assert!(s.len() <= 11, "{n}: {s:?}");
            assert_eq!(s[0], 0);
            assert_eq!(*s.last().unwrap(), n - 1);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{n}: {s:?}");
        }
    }
}
