//! Every configuration against the task's baseline, paired by seed, with
//! Holm's adjustment across the table.

use std::fmt::Write as _;

use super::columns::{Column, has_pruning, headline_cols, prune_cols};
use super::columns::{by_task, md_table};
use crate::experiment::{record::Group, stats};

/// One configuration's paired comparisons: per headline measure, the
/// comparison and its Holm-adjusted p-value.
pub struct PairedRow {
    pub label: String,
    pub cells: Vec<Option<(stats::Paired, Option<f64>)>>,
}

/// The paired comparisons of one task against its baseline.
pub struct PairedTable {
    pub task: String,
    pub baseline: String,
    pub rows: Vec<PairedRow>,
    /// The measures compared: the headline ones, and the pruning scores
    /// in tasks that prune.
    pub(super) cols: Vec<Column>,
}

/// For each task with a baseline: every other configuration minus the
/// baseline, per shared seed (runs both finished), per headline measure;
/// Holm's adjustment across all the cells of the task's table.
pub fn paired_tables(groups: &[Group], baselines: &[(String, String)]) -> Vec<PairedTable> {
    let mut out = vec![];
    for (task, gs) in by_task(groups) {
        let mut cols = headline_cols();
        if has_pruning(gs.iter().copied()) {
            cols.extend(prune_cols().into_iter().take(2));
        }
        let Some((_, base_label)) = baselines.iter().find(|(t, _)| *t == task) else {
            continue;
        };
        let Some(base) = gs.iter().find(|g| g.label == *base_label) else {
            continue;
        };
        let mut rows: Vec<PairedRow> = gs
            .iter()
            .filter(|g| g.label != *base_label)
            .map(|g| PairedRow {
                label: g.label.clone(),
                cells: cols
                    .iter()
                    .map(|c| {
                        let d: Vec<f64> = g
                            .done()
                            .filter_map(|r| {
                                let b = base.done().find(|b| b.seed == r.seed)?;
                                Some((c.value)(r)? - (c.value)(b)?)
                            })
                            .collect();
                        // Equal in every pair (e.g. no exact zeros on either
                        // side): nothing to test, and not counted by Holm.
                        let equal = !d.is_empty() && d.iter().all(|x| *x == 0.0);
                        stats::paired(&d).map(|p| {
                            let p = if equal {
                                stats::Paired { p: None, ..p }
                            } else {
                                p
                            };
                            (p, None)
                        })
                    })
                    .collect(),
            })
            .collect();
        let ps: Vec<f64> = rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten().filter_map(|(p, _)| p.p))
            .collect();
        let adjusted = stats::holm(&ps);
        let mut k = 0;
        for r in &mut rows {
            for (p, holm) in r.cells.iter_mut().flatten() {
                if p.p.is_some() {
                    *holm = Some(adjusted[k]);
                    k += 1;
                }
            }
        }
        out.push(PairedTable {
            task,
            baseline: base_label.clone(),
            rows,
            cols,
        });
    }
    out
}

pub(super) fn paired_markdown(out: &mut String, t: &PairedTable) {
    let cols = &t.cols;
    let n = t
        .rows
        .iter()
        .flat_map(|r| r.cells.iter().flatten().map(|(p, _)| p.n))
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "### Paired differences against {} (same seeds)\n\n\
         Each cell: the mean over shared seeds of (configuration − {}), in percentage points for \
         percentages, with its 95 % confidence interval (Student's t with n − 1 degrees of freedom; n = {n} \
         unless marked). † marks a two-sided paired t-test p < 0.05 after Holm's adjustment across all {} \
         comparisons of this table (cells equal in every pair are not tests and are left out); every p-value \
         is in `paired.csv`.\n",
        t.baseline,
        t.baseline,
        t.rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten())
            .filter(|(p, _)| p.p.is_some())
            .count()
    );
    let mut header = vec!["optimizer".to_string()];
    header.extend(cols.iter().map(|c| format!("Δ {}", c.header)));
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![r.label.clone()];
            row.extend(r.cells.iter().zip(cols).map(|(cell, c)| {
                let Some((p, holm)) = cell else {
                    return "–".to_string();
                };
                let (scale, digits) = if c.percent { (100.0, 2) } else { (1.0, 4) };
                let mark = if holm.is_some_and(|h| h < 0.05) {
                    "†"
                } else {
                    ""
                };
                let n_note = if p.n != n {
                    format!(" (n = {})", p.n)
                } else {
                    String::new()
                };
                if p.p.is_none() && p.n > 1 {
                    return format!("0 (equal){n_note}");
                }
                if p.p.is_none() {
                    return format!("{:+.digits$}{n_note}", scale * p.mean);
                }
                format!(
                    "{:+.digits$} [{:+.digits$}, {:+.digits$}]{mark}{n_note}",
                    scale * p.mean,
                    scale * p.lo,
                    scale * p.hi
                )
            }));
            row
        })
        .collect();
    md_table(out, &header, &rows);
}
