//! Optimizers compared at matched accuracy over their learning-rate grids,
//! and the Pareto plots of sparsity against accuracy.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::columns::md_table;
use super::columns::{Column, headline_cols, num, pct, stat};
use crate::experiment::{plots, record::Group, study::slug};

/// The configurations of a task that form learning-rate grids (labels
/// `NAME lr=VALUE`, from `lrs` in the study file), by NAME in study order:
/// (lr, group).
pub fn lr_grids<'a>(gs: &[&'a Group]) -> Vec<(String, Vec<(f64, &'a Group)>)> {
    let mut out: Vec<(String, Vec<(f64, &'a Group)>)> = vec![];
    for g in gs {
        let Some((name, lr)) = g
            .label
            .rsplit_once(" lr=")
            .and_then(|(n, lr)| Some((n.to_string(), lr.parse::<f64>().ok()?)))
        else {
            continue;
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push((lr, *g)),
            None => out.push((name, vec![(lr, *g)])),
        }
    }
    out
}

/// One optimizer's best value of a measure among its settings at the
/// matched accuracy: (mean, sd over seeds, lr).
type Best = Option<(f64, Option<f64>, f64)>;

pub struct MatchedRow {
    pub name: String,
    /// (lr, mean test accuracy) of its most accurate setting.
    pub best_acc: (f64, f64),
    /// Its settings at or above the matched level.
    pub at_level: Vec<f64>,
    pub best: Vec<Best>,
}

/// Optimizers compared at matched accuracy over their lr grids.
pub struct Matched {
    /// The matched level: the lowest of the optimizers' best mean test
    /// accuracies, so that every optimizer has a setting there.
    pub level: f64,
    pub rows: Vec<MatchedRow>,
}

/// Accuracy below the matched level that still counts as matched.
const MATCH_TOLERANCE: f64 = 0.002;

fn matched_cols() -> Vec<Column> {
    headline_cols()
        .into_iter()
        .filter(|c| c.key != "test_acc" && c.key != "dead_units" && c.key != "weights_exact_zero")
        .collect()
}

pub fn matched(gs: &[&Group]) -> Option<Matched> {
    let grids = lr_grids(gs);
    if grids.len() < 2 {
        return None;
    }
    let acc = |g: &Group| stat(g, |r| r.r#final.as_ref().map(|f| f.test_acc)).map(|s| s.0);
    let mut rows = vec![];
    for (name, points) in &grids {
        let best_acc = points
            .iter()
            .filter_map(|(lr, g)| Some((*lr, acc(g)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        rows.push(MatchedRow {
            name: name.clone(),
            best_acc,
            at_level: vec![],
            best: vec![],
        });
    }
    let level = rows.iter().map(|r| r.best_acc.1).min_by(f64::total_cmp)?;
    let cols = matched_cols();
    for (row, (_, points)) in rows.iter_mut().zip(&grids) {
        let eligible: Vec<&(f64, &Group)> = points
            .iter()
            .filter(|(_, g)| acc(g).is_some_and(|a| a >= level - MATCH_TOLERANCE))
            .collect();
        row.at_level = eligible.iter().map(|(lr, _)| *lr).collect();
        row.best = cols
            .iter()
            .map(|c| {
                eligible
                    .iter()
                    .filter_map(|(lr, g)| stat(g, c.value).map(|(m, s)| (m, s, *lr)))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
            })
            .collect();
    }
    Some(Matched { level, rows })
}

/// The Pareto plots of a task run over lr grids: each sparsity measure
/// against test accuracy, one line per optimizer over its grid (means over
/// seeds).
pub(super) fn pareto_plots(dir: &Path, task: &str, gs: &[&Group]) -> Result<()> {
    let slug = slug(task);
    for (file, col, what) in PARETO {
        let c = headline_cols()
            .into_iter()
            .find(|c| c.key == *col)
            .expect("a headline column");
        let points: Vec<(String, f64, f64)> = lr_grids(gs)
            .into_iter()
            .flat_map(|(name, pts)| {
                pts.into_iter().filter_map(move |(_, g)| {
                    let acc = stat(g, |r| r.r#final.as_ref().map(|f| f.test_acc))?.0;
                    let y = stat(g, c.value)?.0;
                    Some((name.clone(), 100.0 * acc, 100.0 * y))
                })
            })
            .collect();
        plots::pareto(
            &dir.join("plots").join(format!("{slug}-{file}.svg")),
            &format!(
                "{task}: {what} against test accuracy; each line walks its optimizer's lr grid from the smallest lr"
            ),
            &points,
            "test accuracy %",
            &format!("{what} %"),
        )?;
    }
    Ok(())
}

/// (file suffix, headline column, axis name) of the Pareto plots.
pub(super) const PARETO: &[(&str, &str, &str)] = &[
    (
        "pareto-near-zero",
        "weights_near_zero_1e-3",
        "weights with |w| < 1e-3",
    ),
    (
        "pareto-scale-rel",
        "weights_scale_rel_0.01",
        "weights with |w| < 0.01 RMS",
    ),
    ("pareto-pruned", "pruned_90_acc", "accuracy at 90% pruned"),
];

pub(super) fn matched_markdown(out: &mut String, m: &Matched) {
    let cols = matched_cols();
    let _ = writeln!(
        out,
        "### At matched accuracy\n\n\
         The matched level is the lowest of the optimizers' best mean test accuracies over their learning-rate \
         grids: {:.2} %. For each optimizer, among its learning rates whose mean test accuracy is at least {:.2} % \
         (the level less {:.1} points), the highest mean of each measure (± sd over seeds) and the lr that gives it.\n",
        100.0 * m.level,
        100.0 * (m.level - MATCH_TOLERANCE),
        100.0 * MATCH_TOLERANCE
    );
    let mut header = vec![
        "optimizer".to_string(),
        "best test acc % (lr)".to_string(),
        "lrs at the level".to_string(),
    ];
    header.extend(cols.iter().map(|c| format!("{} (lr)", c.header)));
    let rows: Vec<Vec<String>> = m
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.name.clone(),
                format!("{:.2} ({})", 100.0 * r.best_acc.1, r.best_acc.0),
                r.at_level
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ];
            row.extend(r.best.iter().zip(&cols).map(|(b, c)| match b {
                Some((mean, sd, lr)) => {
                    let v = if c.percent {
                        pct(Some((*mean, *sd)))
                    } else {
                        num(Some((*mean, *sd)), 4)
                    };
                    format!("{v} ({lr})")
                }
                None => "–".into(),
            }));
            row
        })
        .collect();
    md_table(out, &header, &rows);
}
