//! The CSV files of a report: `results.csv` (one row per configuration),
//! `paired.csv` (one row per paired comparison) and `metrics.csv` (one row
//! per run and evaluation).

use super::columns::by_task;
use super::columns::{
    Column, Stat, bias_cols, has_pruning, main_cols, prune_cols, prune_fracs, prune_stat, stat,
};
use super::paired::PairedTable;
use crate::experiment::record::Group;
use crate::train::Status;

/// A CSV file built row by row (the `csv` crate's writer: fields quoted
/// only where they must be, `\n` line ends).
struct Table(csv::Writer<Vec<u8>>);

impl Table {
    fn new() -> Self {
        Self(
            csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(vec![]),
        )
    }

    fn row<I, T>(&mut self, fields: I)
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.0
            .write_record(fields)
            .expect("writing CSV to memory cannot fail");
    }

    fn finish(self) -> String {
        let bytes = self
            .0
            .into_inner()
            .expect("flushing CSV to memory cannot fail");
        String::from_utf8(bytes).expect("the fields are UTF-8")
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
    let mut out = Table::new();
    out.row(&header);
    let fmt = |v: Stat| match v {
        Some((m, s)) => [
            format!("{m:.6}"),
            s.map(|s| format!("{s:.6}")).unwrap_or_default(),
        ],
        None => [String::new(), String::new()],
    };
    for g in groups {
        let mut row = vec![
            g.task.clone(),
            g.label.clone(),
            g.optimizer.clone(),
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
        out.row(&row);
    }
    out.finish()
}

/// Every paired comparison, one row per (task, configuration, measure).
pub fn paired_csv(tables: &[PairedTable]) -> String {
    let mut out = Table::new();
    out.row([
        "task",
        "optimizer",
        "baseline",
        "measure",
        "n",
        "mean_diff",
        "ci95_low",
        "ci95_high",
        "p",
        "p_holm",
    ]);
    let f = |x: Option<f64>| x.map(|v| format!("{v:.6e}")).unwrap_or_default();
    for t in tables {
        for r in &t.rows {
            for (cell, c) in r.cells.iter().zip(&t.cols) {
                let Some((p, holm)) = cell else { continue };
                out.row([
                    t.task.clone(),
                    r.label.clone(),
                    t.baseline.clone(),
                    c.key.to_string(),
                    p.n.to_string(),
                    f(Some(p.mean)),
                    f(p.p.map(|_| p.lo)),
                    f(p.p.map(|_| p.hi)),
                    f(p.p),
                    f(*holm),
                ]);
            }
        }
    }
    out.finish()
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
    let mut out = Table::new();
    out.row(&header);
    let status = |s: Status| match s {
        Status::Done => "done",
        Status::Diverged => "diverged",
        Status::Failed => "failed",
    };
    for g in groups {
        for r in &g.runs {
            for h in &r.history {
                let mut row = vec![
                    g.task.clone(),
                    g.label.clone(),
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
                out.row(&row);
            }
        }
    }
    out.finish()
}
