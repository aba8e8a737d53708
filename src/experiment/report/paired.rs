//! Every configuration against the task's baseline, paired by seed: the
//! exploratory comparisons (no adjustment, no †), and the table of the
//! study's confirmatory hypotheses (Holm within the family, † only there).

use std::fmt::Write as _;

use super::columns::{Column, has_pruning, headline_cols, prune_cols};
use super::columns::{by_task, md_table};
use crate::experiment::hypotheses::{Outcome, Verdict};
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
/// baseline, per shared seed (runs both finished), per headline measure.
/// These are exploratory: no Holm adjustment (the cells' adjusted p stays
/// None); the confirmatory family is [`crate::experiment::hypotheses`].
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
        let rows: Vec<PairedRow> = gs
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
        // Exploratory: no adjustment and no mark. The confirmatory family
        // (the study's declared hypotheses) is tested apart.
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
        "### Exploratory: paired differences against {} (same seeds)\n\n\
         Each cell: the mean over shared seeds of (configuration − {}), in percentage points for \
         percentages, with its 95 % confidence interval (Student's t with n − 1 degrees of freedom; n = {n} \
         unless marked). These comparisons were not declared before the runs: no correction for many \
         comparisons is applied and none is marked; read them as estimates, not tests (the two-sided \
         p-values are in `paired.csv`). Only the hypotheses the study file declares (\"Confirmatory hypotheses\", when it declares any) are tested as a family.\n",
        t.baseline, t.baseline,
    );
    let mut header = vec!["optimizer".to_string()];
    header.extend(cols.iter().map(|c| format!("Δ {}", c.header)));
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![r.label.clone()];
            row.extend(r.cells.iter().zip(cols).map(|(cell, c)| {
                let Some((p, _)) = cell else {
                    return "–".to_string();
                };
                let (scale, digits) = if c.percent { (100.0, 2) } else { (1.0, 4) };
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
                    "{:+.digits$} [{:+.digits$}, {:+.digits$}]{n_note}",
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

/// The study's confirmatory hypotheses, tested with Holm's adjustment within
/// the family: the only table whose cells carry †.
pub(super) fn confirmatory_markdown(out: &mut String, outcomes: &[Outcome]) {
    if outcomes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Confirmatory hypotheses\n\n\
         Declared in the study file (`[[hypotheses]]`, each with the reason it is there). Each row: a − b paired \
         by seed (runs both finished), the mean difference with its two-sided 95 % confidence interval (percentage \
         points for fractions), the pairs n, the paired t-test's p-value (one-sided in the declared direction; \
         two-sided for `two-sided`), and that p after Holm's adjustment across the {} hypotheses of this family (one \
         that cannot be tested counts as p = 1). † marks a Holm-adjusted p < 0.05 with the mean in the declared \
         direction (confirmed); contradicted: the interval excludes 0 on the other side. Every other comparison in \
         this report is exploratory.\n",
        outcomes.len()
    );
    let header: Vec<String> = [
        "hypothesis",
        "claim",
        "task",
        "a − b",
        "measure",
        "expected",
        "effect [95 % CI]",
        "n",
        "p",
        "Holm p",
        "verdict",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let mark = if o.verdict == Verdict::Confirmed {
                "†"
            } else {
                ""
            };
            let p =
                |x: Option<f64>| x.map_or("–".to_string(), crate::experiment::hypotheses::p_text);
            vec![
                format!("`{}`", o.hypothesis.id),
                o.hypothesis.claim.clone(),
                o.hypothesis.task.clone(),
                format!("{} − {}", o.a, o.b),
                o.measure_name.replace('|', "\\|"),
                format!("{} 0", o.direction.symbol()),
                format!("{}{mark} {}", o.effect(), o.unit())
                    .trim_end()
                    .to_string(),
                o.paired.as_ref().map_or(0, |p| p.n).to_string(),
                p(o.p),
                p(o.p.map(|_| o.p_holm)),
                o.verdict_text(),
            ]
        })
        .collect();
    md_table(out, &header, &rows);
}
