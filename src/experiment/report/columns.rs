//! The measured columns of the tables ([`Column`]) and the statistics of a
//! group of runs that fill their cells.

use std::fmt::Write as _;

use crate::experiment::{
    record::{Group, StudyRecord},
    stats::mean_std,
};
use crate::train::Status;

/// Mean, and the sample sd when there are two or more values.
pub(super) type Stat = Option<(f64, Option<f64>)>;

/// A statistic of the finished runs of a group.
pub(super) fn stat(g: &Group, f: impl Fn(&StudyRecord) -> Option<f64>) -> Stat {
    let xs: Vec<f64> = g.done().filter_map(f).collect();
    mean_std(&xs).map(|(m, s)| (m, (xs.len() > 1).then_some(s)))
}

/// A fraction as a percentage, 2 decimals.
pub(super) fn pct(v: Stat) -> String {
    num(v.map(|(m, s)| (100.0 * m, s.map(|s| 100.0 * s))), 2)
}

pub(super) fn num(v: Stat, digits: usize) -> String {
    match v {
        Some((m, Some(s))) => format!("{m:.digits$} ± {s:.digits$}"),
        Some((m, None)) => format!("{m:.digits$}"),
        None => "–".into(),
    }
}

/// A value, if it is finite (records older than a measure hold NaN).
pub(super) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

pub(super) fn runs_cell(g: &Group) -> String {
    let (d, v, f) = (
        g.count(Status::Done),
        g.count(Status::Diverged),
        g.count(Status::Failed),
    );
    let mut s = d.to_string();
    if v > 0 {
        s += &format!(" ({v} diverged)");
    }
    if f > 0 {
        s += &format!(" ({f} failed)");
    }
    s
}

/// A measured column of the tables: one number per run, shown as the mean
/// (± sd) over a configuration's finished runs.
#[derive(Clone, Copy)]
pub(super) struct Column {
    /// The Markdown header.
    pub header: &'static str,
    /// The CSV name (`results.csv` adds `_mean` and `_std`; `paired.csv`
    /// names the measure by it).
    pub key: &'static str,
    /// The run's value, if it has one.
    pub value: fn(&StudyRecord) -> Option<f64>,
    /// A fraction shown in percent (and its differences in points).
    pub percent: bool,
}

impl Column {
    /// A fraction, shown in percent.
    const fn percent(
        header: &'static str,
        key: &'static str,
        value: fn(&StudyRecord) -> Option<f64>,
    ) -> Self {
        Self {
            header,
            key,
            value,
            percent: true,
        }
    }

    /// A plain number.
    const fn number(
        header: &'static str,
        key: &'static str,
        value: fn(&StudyRecord) -> Option<f64>,
    ) -> Self {
        Self {
            header,
            key,
            value,
            percent: false,
        }
    }
}

pub(super) fn main_cols() -> Vec<Column> {
    fn fin(r: &StudyRecord) -> &crate::train::Final {
        r.r#final.as_ref().expect("done runs have final measures")
    }
    vec![
        Column::percent("test acc %", "test_acc", |r| Some(fin(r).test_acc)),
        Column::number("test loss", "test_loss", |r| Some(fin(r).test_loss)),
        Column::number("train loss", "train_loss", |r| Some(fin(r).train_loss)),
        Column::percent("w = 0 %", "weights_exact_zero", |r| {
            Some(fin(r).measures.weights.exact_zero_frac)
        }),
        Column::percent("\\|w\\| < 1e-4 %", "weights_near_zero_1e-4", |r| {
            Some(fin(r).measures.weights.near("1e-4"))
        }),
        Column::percent("\\|w\\| < 1e-3 %", "weights_near_zero_1e-3", |r| {
            Some(fin(r).measures.weights.near("1e-3"))
        }),
        Column::percent("\\|w\\| < 1e-2 %", "weights_near_zero_1e-2", |r| {
            Some(fin(r).measures.weights.near("1e-2"))
        }),
        Column::percent("\\|w\\| < 1% max %", "weights_rel_near_zero", |r| {
            Some(fin(r).measures.weights.rel_near_zero_frac)
        }),
        Column::percent("\\|w\\| < 0.01 RMS %", "weights_scale_rel_0.01", |r| {
            finite(fin(r).measures.weights.scale_rel("0.01"))
        }),
        Column::percent("\\|w\\| < 0.1 RMS %", "weights_scale_rel_0.1", |r| {
            finite(fin(r).measures.weights.scale_rel("0.1"))
        }),
        Column::number("Hoyer", "weights_hoyer", |r| {
            finite(fin(r).measures.weights.hoyer)
        }),
        Column::number("Gini", "weights_gini", |r| {
            finite(fin(r).measures.weights.gini)
        }),
        Column::number("L1", "weights_l1", |r| Some(fin(r).measures.weights.l1)),
        Column::percent("dead units %", "dead_units", |r| {
            fin(r).dead_units.as_ref().map(|d| d.frac)
        }),
        // Shrinkage: |w_end| <= c * |w_init| (crate::metrics::shrinkage);
        // records written before it existed have none.
        Column::percent("shrunk to ≤ 0.1 init %", "shrinkage_0.1", |r| {
            finite(fin(r).shrinkage.as_ref()?.weights.at("0.1"))
        }),
        Column::percent("shrunk to ≤ 0.01 init %", "shrinkage_0.01", |r| {
            finite(fin(r).shrinkage.as_ref()?.weights.at("0.01"))
        }),
        // The highest one-shot sparsity within 1 point of the dense
        // accuracy, from the run's magnitude-pruning curve.
        Column::percent(
            "functional sparsity %",
            "functional_sparsity",
            crate::experiment::hypotheses::functional_sparsity,
        ),
    ]
}

pub(super) fn bias_cols() -> Vec<Column> {
    fn m(r: &StudyRecord) -> &crate::metrics::Measures {
        &r.r#final.as_ref().expect("final").measures.biases
    }
    vec![
        Column::percent("b = 0 %", "biases_exact_zero", |r| {
            Some(m(r).exact_zero_frac)
        }),
        Column::percent("\\|b\\| < 1e-3 %", "biases_near_zero_1e-3", |r| {
            Some(m(r).near("1e-3"))
        }),
        Column::number("Hoyer", "biases_hoyer", |r| Some(m(r).hoyer)),
        Column::number("Gini", "biases_gini", |r| Some(m(r).gini)),
        Column::percent("all \\|p\\| < 1e-3 %", "total_near_zero_1e-3", |r| {
            Some(
                r.r#final
                    .as_ref()
                    .expect("final")
                    .measures
                    .total
                    .near("1e-3"),
            )
        }),
    ]
}

/// The measures compared with the baseline, paired by seed: columns of the
/// main table (headers without their unit), and accuracy at 90 % pruned.
pub(super) fn headline_cols() -> Vec<Column> {
    const KEYS: [&str; 9] = [
        "test_acc",
        "weights_near_zero_1e-3",
        "weights_scale_rel_0.01",
        "shrinkage_0.1",
        "weights_exact_zero",
        "weights_gini",
        "weights_hoyer",
        "dead_units",
        "functional_sparsity",
    ];
    let main = main_cols();
    let mut out: Vec<Column> = KEYS
        .iter()
        .map(|k| {
            let c = main.iter().find(|c| c.key == *k).expect("a main column");
            Column {
                header: c.header.trim_end_matches(" %"),
                ..*c
            }
        })
        .collect();
    out.push(Column::percent("acc at 90% pruned", "pruned_90_acc", |r| {
        r.r#final
            .as_ref()?
            .pruning
            .iter()
            .find(|p| (p.frac - 0.9).abs() < 1e-9)
            .map(|p| p.test_acc)
    }));
    out
}

/// The prunability scores (`crate::prune`): shown, and compared with the
/// baseline, only in tasks that set `pruning`, so that other studies'
/// tables stay as they were.
pub(super) fn prune_cols() -> Vec<Column> {
    fn sc(r: &StudyRecord) -> Option<&crate::prune::PruneScores> {
        r.r#final.as_ref()?.prune_scores.as_ref()
    }
    vec![
        Column::percent("prunability AUC %", "prune_auc", |r| sc(r).map(|s| s.auc)),
        Column::percent(
            "max sparsity within 1 pt %",
            "prune_max_sparsity_1pt",
            |r| sc(r).map(|s| s.max_sparsity_within_1pt),
        ),
        Column::percent("mask sparsity %", "mask_sparsity", |r| sc(r)?.mask_sparsity),
    ]
}

/// A table with one row per group: the `lead` columns (their cells from
/// `lead_cells`), then a cell of each of `cols`.
pub(super) fn column_table(
    out: &mut String,
    gs: &[&Group],
    lead: &[&str],
    lead_cells: impl Fn(&Group) -> Vec<String>,
    cols: &[Column],
) {
    let mut header: Vec<String> = lead.iter().map(|h| h.to_string()).collect();
    header.extend(cols.iter().map(|c| c.header.to_string()));
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut r = lead_cells(g);
            r.extend(cols.iter().map(|c| cell(g, c)));
            r
        })
        .collect();
    md_table(out, &header, &rows);
}

pub(super) fn cell(g: &Group, c: &Column) -> String {
    let v = stat(g, c.value);
    if c.percent {
        pct(v)
    } else {
        num(v, if c.key.ends_with("_l1") { 1 } else { 4 })
    }
}

/// Fractions pruned, from the first finished run of the task.
pub(super) fn prune_fracs(groups: &[&Group]) -> Vec<f64> {
    groups
        .iter()
        .flat_map(|g| g.done())
        .next()
        .map(|r| {
            r.r#final
                .as_ref()
                .unwrap()
                .pruning
                .iter()
                .map(|p| p.frac)
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn prune_stat(g: &Group, i: usize) -> Stat {
    stat(g, |r| {
        r.r#final
            .as_ref()
            .and_then(|f| f.pruning.get(i))
            .map(|p| p.test_acc)
    })
}

/// Whether any run of the groups pruned (set `pruning`).
pub(super) fn has_pruning<'a>(gs: impl IntoIterator<Item = &'a Group>) -> bool {
    gs.into_iter()
        .any(|g| g.runs.iter().any(|r| r.config.pruning.is_some()))
}

/// The groups by task, tasks in order of first appearance.
pub(super) fn by_task(groups: &[Group]) -> Vec<(String, Vec<&Group>)> {
    let mut out: Vec<(String, Vec<&Group>)> = vec![];
    for g in groups {
        match out.iter_mut().find(|(t, _)| *t == g.task) {
            Some((_, v)) => v.push(g),
            None => out.push((g.task.clone(), vec![g])),
        }
    }
    out
}

/// A Markdown table: the header, then one line per row.
pub(super) fn md_table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in rows {
        // The first cell is a label from the study file: a `|` in it would
        // split the row, a control character (from records of older
        // versions, which did not refuse them) break the line.
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { md_label(c) } else { c.clone() })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// A label as markdown table text: `|` escaped, control characters as spaces.
pub(super) fn md_label(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_shows_no_spread() {
        assert_eq!(pct(Some((0.5, None))), "50.00");
        assert_eq!(pct(Some((0.5, Some(0.01)))), "50.00 ± 1.00");
        assert_eq!(num(Some((0.25, None)), 2), "0.25");
        assert_eq!(pct(None), "–");
    }
}
