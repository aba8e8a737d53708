//! `sparsity-lab report DIR`: tables and plots from the run JSONs alone.
//!
//! Reads every `DIR/runs/*.json` (all shards), groups runs by task and
//! optimizer label, and writes `DIR/results.md`, `DIR/results.csv` and
//! `DIR/plots/*.svg`. The output depends only on the run files' measured
//! numbers (never on wall time or file order), so a study run twice gives
//! byte-identical tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::plots;
use crate::bail_usage;
use crate::io::write_atomic;
use crate::train::{RunRecord, Status};

/// The runs of one optimizer on one task.
pub struct Group {
    pub task: String,
    pub label: String,
    pub order: (usize, usize),
    pub optimizer: String,
    pub runs: Vec<RunRecord>,
}

impl Group {
    /// Finished runs with final measures.
    pub fn done(&self) -> impl Iterator<Item = &RunRecord> {
        self.runs
            .iter()
            .filter(|r| r.status == Status::Done && r.r#final.is_some())
    }
    fn count(&self, s: Status) -> usize {
        self.runs.iter().filter(|r| r.status == s).count()
    }
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((m, sd))
}

/// Reads and groups the runs of a results folder, in study order.
pub fn load_groups(dir: &Path) -> Result<Vec<Group>> {
    let runs_dir = dir.join("runs");
    let Ok(entries) = std::fs::read_dir(&runs_dir) else {
        bail_usage!(
            "report: {} has no runs/ folder; give the folder a study wrote its results to",
            dir.display()
        );
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.file_name().unwrap().to_string_lossy().starts_with(".tmp")
        })
        .collect();
    paths.sort();
    let mut groups: BTreeMap<(usize, usize, String, String), Group> = BTreeMap::new();
    for p in paths {
        let text = std::fs::read_to_string(&p)?;
        let rec: RunRecord = serde_json::from_str(&text)
            .with_context(|| format!("report: {} is not a run record", p.display()))?;
        let Some(s) = rec.study.clone() else {
            bail_usage!(
                "report: {} is not part of a study (no `study` field)",
                p.display()
            );
        };
        let key = (s.order.0, s.order.1, s.task.clone(), s.label.clone());
        groups
            .entry(key)
            .or_insert_with(|| Group {
                task: s.task.clone(),
                label: s.label.clone(),
                order: s.order,
                optimizer: rec.config.optimizer.short(),
                runs: vec![],
            })
            .runs
            .push(rec);
    }
    if groups.is_empty() {
        bail_usage!("report: {} holds no run files", runs_dir.display());
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    for g in &mut out {
        g.runs.sort_by_key(|r| r.seed);
    }
    Ok(out)
}

/// Writes results.md, results.csv and the plots. Returns the Markdown.
pub fn write_report(dir: &Path) -> Result<String> {
    let groups = load_groups(dir)?;
    let md = markdown(&groups);
    write_atomic(&dir.join("results.md"), md.as_bytes())?;
    write_atomic(&dir.join("results.csv"), csv(&groups).as_bytes())?;
    plots::write_all(dir, &groups)?;
    Ok(md)
}

/// A statistic of the finished runs of a group.
fn stat(g: &Group, f: impl Fn(&RunRecord) -> Option<f64>) -> Option<(f64, f64)> {
    let xs: Vec<f64> = g.done().filter_map(f).collect();
    mean_std(&xs)
}

fn pct(v: Option<(f64, f64)>) -> String {
    match v {
        Some((m, s)) => format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s),
        None => "–".into(),
    }
}

fn num(v: Option<(f64, f64)>, digits: usize) -> String {
    match v {
        Some((m, s)) => format!("{m:.digits$} ± {s:.digits$}"),
        None => "–".into(),
    }
}

fn runs_cell(g: &Group) -> String {
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

/// The columns of the main table: (header, CSV name, extractor, percent?).
type Col = (
    &'static str,
    &'static str,
    fn(&RunRecord) -> Option<f64>,
    bool,
);

fn main_cols() -> Vec<Col> {
    fn fin(r: &RunRecord) -> &crate::train::Final {
        r.r#final.as_ref().expect("done runs have final measures")
    }
    vec![
        ("test acc %", "test_acc", |r| Some(fin(r).test_acc), true),
        ("test loss", "test_loss", |r| Some(fin(r).test_loss), false),
        (
            "train loss",
            "train_loss",
            |r| Some(fin(r).train_loss),
            false,
        ),
        (
            "w = 0 %",
            "weights_exact_zero",
            |r| Some(fin(r).measures.weights.exact_zero_frac),
            true,
        ),
        (
            "\\|w\\| < 1e-4 %",
            "weights_near_zero_1e-4",
            |r| Some(fin(r).measures.weights.near("1e-4")),
            true,
        ),
        (
            "\\|w\\| < 1e-3 %",
            "weights_near_zero_1e-3",
            |r| Some(fin(r).measures.weights.near("1e-3")),
            true,
        ),
        (
            "\\|w\\| < 1e-2 %",
            "weights_near_zero_1e-2",
            |r| Some(fin(r).measures.weights.near("1e-2")),
            true,
        ),
        (
            "\\|w\\| < 1% max %",
            "weights_rel_near_zero",
            |r| Some(fin(r).measures.weights.rel_near_zero_frac),
            true,
        ),
        (
            "Hoyer",
            "weights_hoyer",
            |r| Some(fin(r).measures.weights.hoyer),
            false,
        ),
        (
            "Gini",
            "weights_gini",
            |r| Some(fin(r).measures.weights.gini),
            false,
        ),
        (
            "L1",
            "weights_l1",
            |r| Some(fin(r).measures.weights.l1),
            false,
        ),
        (
            "dead units %",
            "dead_units",
            |r| fin(r).dead_units.as_ref().map(|d| d.frac),
            true,
        ),
    ]
}

fn bias_cols() -> Vec<Col> {
    fn m(r: &RunRecord) -> &crate::metrics::Measures {
        &r.r#final.as_ref().expect("final").measures.biases
    }
    vec![
        (
            "b = 0 %",
            "biases_exact_zero",
            |r| Some(m(r).exact_zero_frac),
            true,
        ),
        (
            "\\|b\\| < 1e-3 %",
            "biases_near_zero_1e-3",
            |r| Some(m(r).near("1e-3")),
            true,
        ),
        ("Hoyer", "biases_hoyer", |r| Some(m(r).hoyer), false),
        ("Gini", "biases_gini", |r| Some(m(r).gini), false),
        (
            "all \\|p\\| < 1e-3 %",
            "total_near_zero_1e-3",
            |r| {
                Some(
                    r.r#final
                        .as_ref()
                        .expect("final")
                        .measures
                        .total
                        .near("1e-3"),
                )
            },
            true,
        ),
    ]
}

fn cell(g: &Group, c: &Col) -> String {
    let v = stat(g, c.2);
    if c.3 {
        pct(v)
    } else {
        num(v, if c.1.ends_with("_l1") { 1 } else { 4 })
    }
}

/// Fractions pruned, from the first finished run of the task.
fn prune_fracs(groups: &[&Group]) -> Vec<f64> {
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

fn prune_stat(g: &Group, i: usize) -> Option<(f64, f64)> {
    stat(g, |r| {
        r.r#final
            .as_ref()
            .and_then(|f| f.pruning.get(i))
            .map(|p| p.test_acc)
    })
}

fn by_task(groups: &[Group]) -> Vec<(String, Vec<&Group>)> {
    let mut out: Vec<(String, Vec<&Group>)> = vec![];
    for g in groups {
        match out.iter_mut().find(|(t, _)| *t == g.task) {
            Some((_, v)) => v.push(g),
            None => out.push((g.task.clone(), vec![g])),
        }
    }
    out
}

fn md_table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
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
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

pub fn markdown(groups: &[Group]) -> String {
    let study = groups[0].runs[0]
        .study
        .as_ref()
        .map(|s| s.study.clone())
        .unwrap_or_default();
    let mut out = format!(
        "# Study `{study}`\n\nMean ± sample standard deviation over seeds; weights are the tensors with two or more \
         dimensions. Generated by `sparsity-lab report` from the run files in `runs/`.\n\n"
    );
    for (task, gs) in by_task(groups) {
        let first = gs.iter().flat_map(|g| g.runs.iter()).next().expect("a run");
        let c = &first.config;
        let length = match (c.epochs, c.steps) {
            (Some(e), _) => format!("{e} epochs"),
            (_, Some(s)) => format!("{s} steps"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "## {task}\n\n{} on {}, {length}, batch {}, seeds {}.\n",
            c.model.name(),
            first.data_source,
            c.batch_size,
            {
                let mut seeds: Vec<u64> = gs
                    .iter()
                    .flat_map(|g| g.runs.iter().map(|r| r.seed))
                    .collect();
                seeds.sort();
                seeds.dedup();
                seeds
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(out, "### Accuracy and weight sparsity\n");
        let mut header = vec!["optimizer".to_string(), "runs".to_string()];
        header.extend(main_cols().iter().map(|c| c.0.to_string()));
        let rows: Vec<Vec<String>> = gs
            .iter()
            .map(|g| {
                let mut r = vec![g.label.clone(), runs_cell(g)];
                r.extend(main_cols().iter().map(|c| cell(g, c)));
                r
            })
            .collect();
        md_table(&mut out, &header, &rows);
        let fracs = prune_fracs(&gs);
        if !fracs.is_empty() {
            let _ = writeln!(
                out,
                "### Test accuracy % after magnitude pruning (no retraining)\n"
            );
            let mut header = vec!["optimizer".to_string()];
            header.extend(fracs.iter().map(|f| format!("{:.0}% pruned", 100.0 * f)));
            let rows: Vec<Vec<String>> = gs
                .iter()
                .map(|g| {
                    let mut r = vec![g.label.clone()];
                    r.extend((0..fracs.len()).map(|i| pct(prune_stat(g, i))));
                    r
                })
                .collect();
            md_table(&mut out, &header, &rows);
        }
        let _ = writeln!(out, "### Biases and the whole model\n");
        let mut header = vec!["optimizer".to_string()];
        header.extend(bias_cols().iter().map(|c| c.0.to_string()));
        let rows: Vec<Vec<String>> = gs
            .iter()
            .map(|g| {
                let mut r = vec![g.label.clone()];
                r.extend(bias_cols().iter().map(|c| cell(g, c)));
                r
            })
            .collect();
        md_table(&mut out, &header, &rows);
        let _ = writeln!(out, "### Configurations\n");
        for g in &gs {
            let _ = writeln!(out, "- {}: `{}`", g.label, g.optimizer);
        }
        out.push('\n');
        let slug = plots::slug(&task);
        let _ = writeln!(
            out,
            "![near-zero weights over training](plots/{slug}-near-zero.svg)\n![accuracy after pruning](plots/{slug}-pruning.svg)\n![weight magnitudes](plots/{slug}-magnitudes.svg)\n"
        );
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(groups: &[Group]) -> String {
    let cols: Vec<Col> = main_cols().into_iter().chain(bias_cols()).collect();
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
        header.push(format!("{}_mean", c.1));
        header.push(format!("{}_std", c.1));
    }
    for f in &fracs {
        header.push(format!("pruned_{:.0}_acc_mean", 100.0 * f));
        header.push(format!("pruned_{:.0}_acc_std", 100.0 * f));
    }
    let mut out = header.join(",") + "\n";
    let fmt = |v: Option<(f64, f64)>| match v {
        Some((m, s)) => [format!("{m:.6}"), format!("{s:.6}")],
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
            row.extend(fmt(stat(g, c.2)));
        }
        for i in 0..fracs.len() {
            row.extend(fmt(prune_stat(g, i)));
        }
        out += &(row.join(",") + "\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[2.0]), Some((2.0, 0.0)));
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }
}
