//! The CSV files of a report: `results.csv` (one row per configuration),
//! `paired.csv` (one row per paired comparison) and `metrics.csv` (one row
//! per run and evaluation).

use std::fmt::Write as _;

use super::columns::by_task;
use super::columns::{
    Column, Stat, bias_cols, has_pruning, main_cols, prune_cols, prune_fracs, prune_stat, stat,
};
use super::paired::PairedTable;
use crate::experiment::record::Group;
use crate::train::Status;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(groups: &[Group]) -> String {
    let mut cols: Vec<Column> = main_cols().into_iter().chain(bias_cols()).collect();
    if has_pruning(groups) {
        cols.extend(prune_cols());
    }
    let fracs = by_task(groups)
        .iter()
        .map(|(_, gs)| prune_fracs(gs))
        .max_by_key(|f| f.len())
        .unwrap_or_default();
    let mut header = vec!["task", "optimizer", "config", "done", "diverged", "failed"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    for c in &cols {
        header.push(format!("{}_mean", c.key));
        header.push(format!("{}_std", c.key));
    }
    for f in &fracs {
        header.push(format!("pruned_{:.0}_acc_mean", 100.0 * f));
        header.push(format!("pruned_{:.0}_acc_std", 100.0 * f));
    }
    let mut out = header.join(",") + "\n";
    let fmt = |v: Stat| match v {
        Some((m, s)) => [
            format!("{m:.6}"),
            s.map(|s| format!("{s:.6}")).unwrap_or_default(),
        ],
        None => [String::new(), String::new()],
    };
    for g in groups {
        let mut row = vec![
            csv_field(&g.task),
            csv_field(&g.label),
            csv_field(&g.optimizer),
            g.count(Status::Done).to_string(),
            g.count(Status::Diverged).to_string(),
            g.count(Status::Failed).to_string(),
        ];
        for c in &cols {
            row.extend(fmt(stat(g, c.value)));
        }
        for i in 0..fracs.len() {
            row.extend(fmt(prune_stat(g, i)));
        }
        out += &(row.join(",") + "\n");
    }
    out
}

/// Every paired comparison, one row per (task, configuration, measure).
pub fn paired_csv(tables: &[PairedTable]) -> String {
    let mut out =
        "task,optimizer,baseline,measure,n,mean_diff,ci95_low,ci95_high,p,p_holm\n".to_string();
    let f = |x: Option<f64>| x.map(|v| format!("{v:.6e}")).unwrap_or_default();
    for t in tables {
        for r in &t.rows {
            for (cell, c) in r.cells.iter().zip(&t.cols) {
                let Some((p, holm)) = cell else { continue };
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    csv_field(&t.task),
                    csv_field(&r.label),
                    csv_field(&t.baseline),
                    c.key,
                    p.n,
                    f(Some(p.mean)),
                    f(p.p.map(|_| p.lo)),
                    f(p.p.map(|_| p.hi)),
                    f(p.p),
                    f(*holm)
                );
            }
        }
    }
    out
}

/// One row per run and evaluation (tidy data): the study's place, the
/// seed, the status, and what was measured at that step.
pub fn metrics_csv(groups: &[Group]) -> String {
    let mut thresholds: Vec<String> = groups
        .iter()
        .flat_map(|g| g.runs.iter())
        .flat_map(|r| r.history.iter())
        .flat_map(|h| h.weights_near_zero_frac.keys().cloned())
        .collect();
    thresholds.sort_by(|a, b| {
        let (x, y) = (a.parse::<f64>(), b.parse::<f64>());
        match (x, y) {
            (Ok(x), Ok(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        }
    });
    thresholds.dedup();
    let mut header: Vec<String> = [
        "task",
        "optimizer",
        "seed",
        "status",
        "step",
        "epoch",
        "lr",
        "train_loss",
        "test_loss",
        "test_acc",
        "weights_exact_zero",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(thresholds.iter().map(|t| format!("weights_near_zero_{t}")));
    header.push("weights_rel_near_zero".into());
    let mut out = header.join(",") + "\n";
    let status = |s: Status| match s {
        Status::Done => "done",
        Status::Diverged => "diverged",
        Status::Failed => "failed",
    };
    for g in groups {
        for r in &g.runs {
            for h in &r.history {
                let mut row = vec![
                    csv_field(&g.task),
                    csv_field(&g.label),
                    r.seed.to_string(),
                    status(r.status).to_string(),
                    h.step.to_string(),
                    h.epoch.to_string(),
                    h.lr.to_string(),
                    h.train_loss.map(|l| l.to_string()).unwrap_or_default(),
                    h.test_loss.to_string(),
                    h.test_acc.to_string(),
                    h.weights_exact_zero_frac.to_string(),
                ];
                row.extend(thresholds.iter().map(|t| {
                    h.weights_near_zero_frac
                        .get(t)
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                }));
                row.push(h.weights_rel_near_zero_frac.to_string());
                out += &(row.join(",") + "\n");
            }
        }
    }
    out
}
