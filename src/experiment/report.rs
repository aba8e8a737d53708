//! `sparsity-lab report DIR`: tables and plots from the run JSONs alone.
//!
//! Reads every `DIR/runs/*.json` (all shards), groups runs by task and
//! optimizer label, and writes `DIR/results.md`, `DIR/results.csv`,
//! `DIR/metrics.csv` (one row per run and evaluation, for pandas) and
//! `DIR/plots/*.svg`. The output depends only on the run files' measured
//! numbers (never on wall time, file order, the machine's paths or the
//! commit), so a study run twice gives byte-identical tables. A row never
//! averages runs whose configurations differ in anything but the seed: such
//! a folder is refused. With `--remeasure`, the weight measures are first
//! recomputed from each run's checkpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use tracing::warn;

use super::plots;
use super::record::{Group, StudyRecord};
use super::stats::{self, mean_std};
use super::study::slug;
use super::tuning;
use crate::bail_usage;
use crate::io::{write_atomic, write_json};
use crate::train::Status;

/// What a results folder holds: which study, with which overrides, and the
/// run files of the full grid (so that `report` can say which are missing).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub study: String,
    pub quick: bool,
    /// The `--set` overrides, as given.
    pub set: Vec<String>,
    /// The file name of every run of the grid, in grid order.
    pub runs: Vec<String>,
    /// (task, baseline label) for the tasks whose report compares every
    /// configuration with a baseline, paired by seed.
    #[serde(default)]
    pub baselines: Vec<(String, String)>,
    /// The study's `[tuning]`, when it is a tuning study.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<super::tuning::Tuning>,
}

/// The folder's manifest, if it has one.
pub fn manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST)).ok()?).ok()
}

pub const MANIFEST: &str = "study.json";

/// The run files (`*.json`, temporaries aside) of a `runs/` folder, sorted;
/// None when the folder cannot be read.
pub fn record_paths(runs_dir: &Path) -> Option<Vec<std::path::PathBuf>> {
    let mut paths: Vec<_> = std::fs::read_dir(runs_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
        })
        .collect();
    paths.sort();
    Some(paths)
}

/// Reads and groups the runs of a results folder, in study order.
pub fn load_groups(dir: &Path) -> Result<Vec<Group>> {
    let runs_dir = dir.join("runs");
    let Some(paths) = record_paths(&runs_dir) else {
        bail_usage!(
            "report: {} has no runs/ folder; give the folder a study wrote its results to",
            dir.display()
        );
    };
    // Records the study's current grid does not name (left by an earlier
    // version of the study file, e.g. before a learning rate changed) stay on
    // disk but out of the tables.
    let grid: Option<std::collections::BTreeSet<String>> = manifest(dir)
        .filter(|m| !m.runs.is_empty())
        .map(|m| m.runs.into_iter().collect());
    let mut stale = vec![];
    let mut groups: BTreeMap<(usize, usize, String, String), Group> = BTreeMap::new();
    // The file each group's first run came from, to name both in an error.
    let mut first_file: BTreeMap<(usize, usize, String, String), std::path::PathBuf> =
        BTreeMap::new();
    let mut foreign = vec![];
    for p in paths {
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("report: reading {}", p.display()))?;
        let rec = match serde_json::from_str::<StudyRecord>(&text) {
            Ok(r) if r.study.is_some() => r,
            Ok(_) => {
                foreign.push(format!("{} (not part of a study)", p.display()));
                continue;
            }
            Err(e) => {
                foreign.push(format!("{} ({e})", p.display()));
                continue;
            }
        };
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if grid.as_ref().is_some_and(|g| !g.contains(name.as_ref())) {
            stale.push(name.into_owned());
            continue;
        }
        let s = rec.study.clone().expect("checked above");
        let key = (s.order.0, s.order.1, s.task.clone(), s.label.clone());
        if let Some(g) = groups.get(&key) {
            let first = &g.runs[0];
            if let Some(what) = config_difference(first, &rec) {
                bail_usage!(
                    "report: {} mixes configurations in the row `{} / {}`: {} and {} differ in `{what}`; a row averages runs that differ only in the seed, so give each configuration its own folder (a --set run gets one of its own)",
                    dir.display(),
                    s.task,
                    s.label,
                    first_file[&key].display(),
                    p.display()
                );
            }
        } else {
            first_file.insert(key.clone(), p.clone());
        }
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
    if let Some(first) = stale.first() {
        let msg = format!(
            "report: left out {} run file(s) of {} that the study's grid ({MANIFEST}) does not name, from an earlier version of the study (e.g. {first}); delete them to tidy",
            stale.len(),
            runs_dir.display(),
        );
        warn!("{msg}");
        eprintln!("warning: {msg}");
    }
    for f in &foreign {
        warn!("report: skipping {f}: not a run record of a study");
        eprintln!("warning: report: skipped {f}: not a run record of a study");
    }
    if groups.is_empty() {
        bail_usage!("report: {} holds no run files", runs_dir.display());
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    for g in &mut out {
        g.runs.sort_by_key(|r| r.seed);
        let mut seeds: Vec<u64> = g.runs.iter().map(|r| r.seed).collect();
        seeds.dedup();
        if seeds.len() != g.runs.len() {
            bail_usage!(
                "report: {} holds two runs of `{} / {}` with the same seed; a row takes one run per seed",
                dir.display(),
                g.task,
                g.label
            );
        }
    }
    Ok(out)
}

/// The first setting (a dotted key) in which two runs' configurations
/// differ, the seed aside.
fn config_difference(a: &StudyRecord, b: &StudyRecord) -> Option<String> {
    let (mut ca, mut cb) = (a.config.clone(), b.config.clone());
    ca.seed = 0;
    cb.seed = 0;
    if ca == cb {
        return None;
    }
    let (va, vb) = (
        serde_json::to_value(&ca).ok()?,
        serde_json::to_value(&cb).ok()?,
    );
    Some(first_difference(&va, &vb, "").unwrap_or_else(|| "config".into()))
}

fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &path),
                    _ => Some(path),
                }
            })
        }
        _ if a == b => None,
        _ => Some(if at.is_empty() {
            "config".into()
        } else {
            at.into()
        }),
    }
}

/// The runs of the folder's grid that have no record yet, when the folder
/// has a manifest (written by every sweep).
pub fn missing_runs(dir: &Path) -> Vec<String> {
    let Some(m) = manifest(dir) else {
        return vec![];
    };
    m.runs
        .into_iter()
        .filter(|r| !dir.join("runs").join(r).is_file())
        .collect()
}

/// Recomputes each run's final weight measures and weight histogram from its
/// checkpoint (runs without one are left as they are) and rewrites the
/// records that change. Returns (recomputed, without a checkpoint).
pub fn remeasure(dir: &Path) -> Result<(usize, usize)> {
    let runs_dir = dir.join("runs");
    let paths = record_paths(&runs_dir)
        .with_context(|| format!("report: cannot read {}", runs_dir.display()))?;
    let (mut done, mut without) = (0, 0);
    for p in paths {
        let Ok(mut rec) = serde_json::from_str::<StudyRecord>(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        ) else {
            continue;
        };
        let (Some(ckpt), Some(fin)) = (rec.checkpoint.clone(), rec.r#final.as_mut()) else {
            without += usize::from(rec.status == Status::Done);
            continue;
        };
        let path = runs_dir.join(&ckpt);
        let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .with_context(|| {
                format!(
                    "report --remeasure: reading the checkpoint {}",
                    path.display()
                )
            })?;
        let named: Vec<(String, candle_core::Tensor)> = tensors
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let (measures, histogram) = crate::train::weight_measures_of(&named)?;
        if fin.measures != measures || fin.weight_histogram != histogram {
            fin.measures = measures;
            fin.weight_histogram = histogram;
            write_json(&p, &rec)?;
        }
        done += 1;
    }
    Ok((done, without))
}

/// Writes results.md, results.csv and the plots. Returns the Markdown.
pub fn write_report(dir: &Path) -> Result<String> {
    let groups = load_groups(dir)?;
    let m = manifest(dir);
    let baselines = m.as_ref().map(|m| m.baselines.clone()).unwrap_or_default();
    let paired = paired_tables(&groups, &baselines);
    let mut md = markdown(&groups, &paired);
    if let Some(t) = m.and_then(|m| m.tuning) {
        let choices = tuning::choose(
            &tuning::samples(&groups, t.criterion),
            t.criterion.higher_is_better(),
        );
        md = tuning::insert_section(&md, &tuning::markdown(&choices, t.criterion));
        write_atomic(
            &dir.join("tuning.csv"),
            tuning::csv(&choices, t.criterion.higher_is_better()).as_bytes(),
        )?;
        tuning::write_plots(dir, &choices)?;
    }
    write_atomic(&dir.join("results.md"), md.as_bytes())?;
    write_atomic(&dir.join("results.csv"), csv(&groups).as_bytes())?;
    if !paired.is_empty() {
        write_atomic(&dir.join("paired.csv"), paired_csv(&paired).as_bytes())?;
    }
    write_atomic(&dir.join("metrics.csv"), metrics_csv(&groups).as_bytes())?;
    plots::write_all_with_baseline(dir, &groups, baselines.first().map(|b| b.1.as_str()))?;
    plots::pruning_methods(dir, &groups)?;
    for (task, gs) in by_task(&groups) {
        if matched(&gs).is_some() {
            pareto_plots(dir, &task, &gs)?;
        }
    }
    Ok(md)
}

/// Mean, and the sample sd when there are two or more values.
type Stat = Option<(f64, Option<f64>)>;

/// A statistic of the finished runs of a group.
fn stat(g: &Group, f: impl Fn(&StudyRecord) -> Option<f64>) -> Stat {
    let xs: Vec<f64> = g.done().filter_map(f).collect();
    mean_std(&xs).map(|(m, s)| (m, (xs.len() > 1).then_some(s)))
}

fn pct(v: Stat) -> String {
    match v {
        Some((m, Some(s))) => format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s),
        Some((m, None)) => format!("{:.2}", 100.0 * m),
        None => "–".into(),
    }
}

fn num(v: Stat, digits: usize) -> String {
    match v {
        Some((m, Some(s))) => format!("{m:.digits$} ± {s:.digits$}"),
        Some((m, None)) => format!("{m:.digits$}"),
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
    fn(&StudyRecord) -> Option<f64>,
    bool,
);

fn main_cols() -> Vec<Col> {
    fn fin(r: &StudyRecord) -> &crate::train::Final {
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
            "\\|w\\| < 0.01 RMS %",
            "weights_scale_rel_0.01",
            |r| finite(fin(r).measures.weights.scale_rel("0.01")),
            true,
        ),
        (
            "\\|w\\| < 0.1 RMS %",
            "weights_scale_rel_0.1",
            |r| finite(fin(r).measures.weights.scale_rel("0.1")),
            true,
        ),
        (
            "Hoyer",
            "weights_hoyer",
            |r| finite(fin(r).measures.weights.hoyer),
            false,
        ),
        (
            "Gini",
            "weights_gini",
            |r| finite(fin(r).measures.weights.gini),
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
    fn m(r: &StudyRecord) -> &crate::metrics::Measures {
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

fn prune_stat(g: &Group, i: usize) -> Stat {
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

pub fn markdown(groups: &[Group], paired: &[PairedTable]) -> String {
    let study = groups[0].runs[0]
        .study
        .as_ref()
        .map(|s| s.study.clone())
        .unwrap_or_default();
    let mut out = format!(
        "# Study `{study}`\n\nMean ± sample standard deviation over seeds (the mean alone for one seed); weights are the tensors with two or more \
         dimensions. Generated by `sparsity-lab report` from the run files in `runs/`.\n\n"
    );
    out += &provenance_notes(groups);
    if has_pruning(groups) {
        out += "![test accuracy against weights kept, per optimizer and pruning method](plots/pruning-methods.svg)\n\n";
    }
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
            first.data,
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
        if let Some(t) = paired.iter().find(|t| t.task == task) {
            paired_markdown(&mut out, t);
        }
        if let Some(m) = matched(&gs) {
            matched_markdown(&mut out, &m);
            let slug = slug(&task);
            for (file, _, what) in PARETO {
                let _ = writeln!(
                    out,
                    "![{what} against test accuracy](plots/{slug}-{file}.svg)"
                );
            }
            out.push('\n');
        }
        let fracs = prune_fracs(&gs);
        if !fracs.is_empty() {
            let how = crate::prune::curve_name(gs[0].runs[0].config.pruning.as_ref());
            let _ = writeln!(out, "### Test accuracy % after {how} (no retraining)\n");
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
        if has_pruning(gs.iter().copied()) {
            prune_markdown(&mut out, &gs);
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
        layer_markdown(&mut out, &gs);
        transformer_group_markdown(
            &mut out,
            &gs,
            paired
                .iter()
                .find(|t| t.task == task)
                .map(|t| t.baseline.as_str()),
        );
        activity_markdown(&mut out, &gs);
        gradient_markdown(
            &mut out,
            &gs,
            paired
                .iter()
                .find(|t| t.task == task)
                .map(|t| t.baseline.as_str()),
        );
        let _ = writeln!(out, "### Configurations\n");
        for g in &gs {
            let _ = writeln!(out, "- {}: `{}`", g.label, g.optimizer);
        }
        out.push('\n');
        let slug = slug(&task);
        let _ = writeln!(
            out,
            "![near-zero weights over training](plots/{slug}-near-zero.svg)\n![accuracy after pruning](plots/{slug}-pruning.svg)\n![weight magnitudes](plots/{slug}-magnitudes.svg)\n"
        );
    }
    out
}

/// The pruning scores of a task that prunes.
fn prune_markdown(out: &mut String, gs: &[&Group]) {
    let first = gs.iter().flat_map(|g| g.runs.iter()).next().expect("a run");
    let how = first
        .config
        .pruning
        .as_ref()
        .map(|p| {
            serde_json::to_string(p)
                .unwrap_or_default()
                .replace(['{', '}', '"'], "")
                .replace(',', ", ")
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "### Pruning scores\n\nPruning: `{how}`. Test accuracy is the final network's (after any pruning \
         and fine-tuning). Over the one-shot grid {{0, 50, 70, 80, 90, 95, 98, 99}} % (pruned from the final network \
         by the run's criterion and scope, no retraining): the prunability AUC is the mean accuracy by the trapezoid \
         rule on the axis log10(1/(1 − s)), normalised to [0, 1]; the max sparsity is the highest grid point within \
         1 point of the grid's 0 % (the network as it is). Mask sparsity: the weights the masks remove at the end.\n"
    );
    let mut header = vec!["optimizer".to_string(), "test acc %".to_string()];
    header.extend(prune_cols().iter().map(|c| c.0.to_string()));
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut r = vec![
                g.label.clone(),
                pct(stat(g, |r| r.r#final.as_ref().map(|f| f.test_acc))),
            ];
            r.extend(prune_cols().iter().map(|c| cell(g, c)));
            r
        })
        .collect();
    md_table(out, &header, &rows);
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(groups: &[Group]) -> String {
    let mut cols: Vec<Col> = main_cols().into_iter().chain(bias_cols()).collect();
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
        header.push(format!("{}_mean", c.1));
        header.push(format!("{}_std", c.1));
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
            row.extend(fmt(stat(g, c.2)));
        }
        for i in 0..fracs.len() {
            row.extend(fmt(prune_stat(g, i)));
        }
        out += &(row.join(",") + "\n");
    }
    out
}

/// The weight tensors (names ending in `weight`, with more than one row in
/// an MLP: `fc<i>.weight`) measured per tensor in the task's runs, in name
/// order; empty unless every run is an MLP.
fn mlp_weight_tensors(gs: &[&Group]) -> Vec<String> {
    let Some(first) = gs.iter().flat_map(|g| g.done()).next() else {
        return vec![];
    };
    if !matches!(first.config.model, crate::models::ModelConfig::Mlp(_)) {
        return vec![];
    }
    first
        .r#final
        .as_ref()
        .map(|f| {
            f.measures
                .tensors
                .keys()
                .filter(|k| k.starts_with("fc") && k.ends_with(".weight"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Per weight tensor of an MLP: its share of the weights and its sparsity,
/// since the first layer holds most of them (98.7 % in 784-128-10).
fn layer_markdown(out: &mut String, gs: &[&Group]) {
    let names = mlp_weight_tensors(gs);
    if names.len() < 2 {
        return;
    }
    let _ = writeln!(
        out,
        "### Per layer\n\nEach weight matrix apart (mean ± sd over seeds): \
         |w| < 1e-3, |w| < 0.01·RMS of that matrix, and Gini.\n"
    );
    let numel: Vec<usize> = gs
        .iter()
        .flat_map(|g| g.done())
        .next()
        .and_then(|r| r.r#final.as_ref())
        .map(|f| names.iter().map(|n| f.measures.tensors[n].numel).collect())
        .unwrap_or_else(|| vec![0; names.len()]);
    let total: usize = numel.iter().sum();
    let mut header = vec!["optimizer".to_string()];
    for (n, numel) in names.iter().zip(&numel) {
        let share = 100.0 * *numel as f64 / total.max(1) as f64;
        header.push(format!("{n} ({share:.1} % of weights): \\|w\\| < 1e-3 %"));
        header.push(format!("{n}: < 0.01 RMS %"));
        header.push(format!("{n}: Gini"));
    }
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut row = vec![g.label.clone()];
            for n in &names {
                fn m<'a>(r: &'a StudyRecord, n: &str) -> Option<&'a crate::metrics::Measures> {
                    r.r#final.as_ref().and_then(|f| f.measures.tensors.get(n))
                }
                row.push(pct(stat(g, |r| m(r, n).map(|m| m.near("1e-3")))));
                row.push(pct(stat(g, |r| {
                    m(r, n).and_then(|m| finite(m.scale_rel("0.01")))
                })));
                row.push(num(stat(g, |r| m(r, n).and_then(|m| finite(m.gini))), 4));
            }
            row
        })
        .collect();
    md_table(out, &header, &rows);
}

/// The Transformer's weight matrices by role, from their parameter names:
/// attention (`attn.qkv`, `attn.proj`), MLP (`mlp.fc`, `mlp.proj`),
/// embedding (`tok_emb`, `pos_emb`) and the output head.
pub const TRANSFORMER_GROUPS: [(&str, &[&str]); 4] = [
    ("attention", &[".attn.qkv.weight", ".attn.proj.weight"]),
    ("MLP", &[".mlp.fc.weight", ".mlp.proj.weight"]),
    ("embedding", &["tok_emb.weight", "pos_emb.weight"]),
    ("head", &["head.weight"]),
];

/// The group of a Transformer parameter (see [`TRANSFORMER_GROUPS`]), if it
/// is a weight matrix of one.
pub fn transformer_group(name: &str) -> Option<&'static str> {
    TRANSFORMER_GROUPS
        .iter()
        .find(|(_, ends)| ends.iter().any(|e| name.ends_with(e)))
        .map(|(g, _)| *g)
}

/// A group's fraction of weights below a threshold, from the per-matrix
/// fractions weighted by size: `f` gives one matrix's fraction. For
/// |w| < 0.01·RMS, each matrix's own RMS.
fn group_frac(
    r: &StudyRecord,
    group: &str,
    f: impl Fn(&crate::metrics::Measures) -> f64,
) -> Option<f64> {
    let tensors = &r.r#final.as_ref()?.measures.tensors;
    let (mut num, mut den) = (0.0, 0usize);
    for (name, m) in tensors {
        if transformer_group(name) == Some(group) {
            num += f(m) * m.numel as f64;
            den += m.numel;
        }
    }
    finite(num / den as f64).filter(|_| den > 0)
}

/// For the Transformer: sparsity of the attention, MLP, embedding and head
/// weights apart, next to the held-out loss, and (with a baseline) each
/// configuration minus the baseline, paired by seed, with 95 % CIs.
fn transformer_group_markdown(out: &mut String, gs: &[&Group], baseline: Option<&str>) {
    let Some(first) = gs.iter().flat_map(|g| g.done()).next() else {
        return;
    };
    if !matches!(
        first.config.model,
        crate::models::ModelConfig::Transformer(_)
    ) {
        return;
    }
    let Some(fin) = first.r#final.as_ref() else {
        return;
    };
    let numel = |group: &str| -> usize {
        fin.measures
            .tensors
            .iter()
            .filter(|(n, _)| transformer_group(n) == Some(group))
            .map(|(_, m)| m.numel)
            .sum()
    };
    let total: usize = TRANSFORMER_GROUPS.iter().map(|(g, _)| numel(g)).sum();
    type Measure = fn(&crate::metrics::Measures) -> f64;
    let measures: [(&str, Measure); 2] = [
        ("\\|w\\| < 1e-3 %", |m| m.near("1e-3")),
        ("\\|w\\| < 0.01 RMS %", |m| m.scale_rel("0.01")),
    ];
    let _ = writeln!(
        out,
        "### Weights by role\n\n\
         The weight matrices grouped by parameter name: attention (`attn.qkv`, `attn.proj`), MLP \
         (`mlp.fc`, `mlp.proj`), embedding (`tok_emb`, `pos_emb`) and the output head; per group, \
         the fraction of its weights with |w| < 1e-3 and with |w| < 0.01 × the RMS of their own \
         matrix (mean ± sd over seeds), next to the held-out loss.\n"
    );
    let mut header = vec!["optimizer".to_string(), "test loss".to_string()];
    for (g, _) in TRANSFORMER_GROUPS {
        let share = 100.0 * numel(g) as f64 / total.max(1) as f64;
        for (i, (m, _)) in measures.iter().enumerate() {
            header.push(if i == 0 {
                format!("{g} ({share:.1} % of weights): {m}")
            } else {
                format!("{g}: {m}")
            });
        }
    }
    let test_loss = |r: &StudyRecord| r.r#final.as_ref().map(|f| f.test_loss);
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut row = vec![g.label.clone(), num(stat(g, test_loss), 4)];
            for (group, _) in TRANSFORMER_GROUPS {
                for (_, f) in &measures {
                    row.push(pct(stat(g, |r| group_frac(r, group, f))));
                }
            }
            row
        })
        .collect();
    md_table(out, &header, &rows);
    let Some(base) = baseline.and_then(|b| gs.iter().find(|g| g.label == b)) else {
        return;
    };
    let _ = writeln!(
        out,
        "Paired by seed against {}: the mean over shared seeds of (configuration − {}), in \
         percentage points for percentages, with its 95 % confidence interval (Student's t, n − 1 \
         degrees of freedom; not adjusted for multiple comparisons).\n",
        base.label, base.label
    );
    let mut header = vec!["optimizer".to_string(), "Δ test loss".to_string()];
    for (g, _) in TRANSFORMER_GROUPS {
        for (m, _) in &measures {
            header.push(format!("Δ {g}: {}", m.trim_end_matches(" %")));
        }
    }
    let cell = |g: &Group, scale: f64, digits: usize, f: &dyn Fn(&StudyRecord) -> Option<f64>| {
        let d: Vec<f64> = g
            .done()
            .filter_map(|r| {
                let b = base.done().find(|b| b.seed == r.seed)?;
                Some(f(r)? - f(b)?)
            })
            .collect();
        match stats::paired(&d) {
            None => "–".to_string(),
            Some(p) if d.len() < 2 => format!("{:+.digits$}", scale * p.mean),
            Some(p) => format!(
                "{:+.digits$} [{:+.digits$}, {:+.digits$}]",
                scale * p.mean,
                scale * p.lo,
                scale * p.hi
            ),
        }
    };
    let rows: Vec<Vec<String>> = gs
        .iter()
        .filter(|g| g.label != base.label)
        .map(|g| {
            let mut row = vec![g.label.clone(), cell(g, 1.0, 4, &test_loss)];
            for (group, _) in TRANSFORMER_GROUPS {
                for (_, f) in &measures {
                    row.push(cell(g, 100.0, 2, &|r| group_frac(r, group, f)));
                }
            }
            row
        })
        .collect();
    md_table(out, &header, &rows);
}

/// For image data: the first layer's weights by how often their pixel is
/// active (> 0) in the training set.
fn activity_markdown(out: &mut String, gs: &[&Group]) {
    let Some(buckets) = gs
        .iter()
        .flat_map(|g| g.done())
        .find_map(|r| r.r#final.as_ref()?.input_activity.clone())
    else {
        return;
    };
    let _ = writeln!(
        out,
        "### First-layer weights by pixel activity\n\n\
         Pixels bucketed by the fraction of training images in which they are non-zero; per bucket, its \
         first-layer weights' |w| < 1e-3 % / w = 0 % / |w| < 0.01·RMS(first layer) % / mean |w| (means over seeds). \
         Weights of pixels that are never active get no gradient from the data.\n"
    );
    let mut header = vec!["optimizer".to_string()];
    header.extend(
        buckets
            .iter()
            .map(|b| format!("{} ({} px, {} w)", b.bucket, b.pixels, b.weights)),
    );
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut row = vec![g.label.clone()];
            for (i, _) in buckets.iter().enumerate() {
                let b = |r: &StudyRecord| -> Option<crate::metrics::ActivityBucket> {
                    r.r#final.as_ref()?.input_activity.as_ref()?.get(i).cloned()
                };
                let m = |f: fn(&crate::metrics::ActivityBucket) -> f64| {
                    stat(g, |r| b(r).and_then(|b| finite(f(&b)))).map(|s| s.0)
                };
                let p =
                    |v: Option<f64>| v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or("–".into());
                row.push(format!(
                    "{} / {} / {} / {}",
                    p(m(|b| b.near_zero_frac)),
                    p(m(|b| b.exact_zero_frac)),
                    p(m(|b| b.scale_rel_near_zero_frac)),
                    m(|b| b.mean_abs)
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or("–".into())
                ));
            }
            row
        })
        .collect();
    md_table(out, &header, &rows);
}

/// With `track_gradients`: the weights bucketed by the sum over training of
/// |g| (claim C2: do small-gradient weights drift and end far from zero?).
fn gradient_markdown(out: &mut String, gs: &[&Group], baseline: Option<&str>) {
    let Some(names) = gs
        .iter()
        .flat_map(|g| g.done())
        .find_map(|r| r.r#final.as_ref()?.gradient_buckets.clone())
        .map(|b| b.into_iter().map(|b| b.bucket).collect::<Vec<_>>())
    else {
        return;
    };
    let _ = writeln!(
        out,
        "### Weights by accumulated gradient\n\n\
         All weights pooled, bucketed by the sum over training of |g| (the gradient of the loss, before \
         any regularisation): those that never got one, then quintiles of the rest. Per bucket (means over \
         seeds): the accumulated |g| range, mean |w| at the end, mean |w_end − w_start|, |w| < 1e-3 %, \
         |w| < 0.01·RMS % and w = 0 %.\n"
    );
    let header: Vec<String> = [
        "optimizer",
        "bucket",
        "weights",
        "Σ|g| from",
        "Σ|g| to",
        "mean \\|w_end\\|",
        "mean \\|w_end − w_start\\|",
        "\\|w\\| < 1e-3 %",
        "< 0.01 RMS %",
        "w = 0 %",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows = vec![];
    for g in gs {
        for (i, name) in names.iter().enumerate() {
            let b = |r: &StudyRecord| -> Option<crate::metrics::GradBucket> {
                r.r#final
                    .as_ref()?
                    .gradient_buckets
                    .as_ref()?
                    .get(i)
                    .cloned()
            };
            let m = |f: fn(&crate::metrics::GradBucket) -> f64| {
                stat(g, |r| b(r).and_then(|b| finite(f(&b)))).map(|s| s.0)
            };
            if m(|b| b.count as f64).is_none() {
                continue;
            }
            let e = |v: Option<f64>| v.map(|v| format!("{v:.3e}")).unwrap_or("–".into());
            let f4 = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or("–".into());
            let p = |v: Option<f64>| v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or("–".into());
            rows.push(vec![
                g.label.clone(),
                name.clone(),
                m(|b| b.count as f64)
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or("–".into()),
                e(m(|b| b.grad_min)),
                e(m(|b| b.grad_max)),
                f4(m(|b| b.mean_abs)),
                f4(m(|b| b.mean_abs_change)),
                p(m(|b| b.near_zero_frac)),
                p(m(|b| b.scale_rel_near_zero_frac)),
                p(m(|b| b.exact_zero_frac)),
            ]);
        }
    }
    md_table(out, &header, &rows);
    let Some(base) = baseline.and_then(|b| gs.iter().find(|g| g.label == b)) else {
        return;
    };
    // The same buckets, paired by seed against the baseline.
    let _ = writeln!(
        out,
        "Against {}, paired by seed (bucket by bucket; each run's buckets are its own quintiles): the mean \
         difference with its 95 % confidence interval (Student's t, n − 1 degrees of freedom), for mean \
         |w_end|, mean |w_end − w_start| and |w| < 1e-3 (percentage points).\n",
        base.label
    );
    let header: Vec<String> = [
        "optimizer",
        "bucket",
        "n",
        "Δ mean \\|w_end\\|",
        "Δ mean \\|w_end − w_start\\|",
        "Δ \\|w\\| < 1e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows = vec![];
    let cell = |p: Option<stats::Paired>, scale: f64, digits: usize| match p {
        Some(p) if p.p.is_some() => format!(
            "{:+.digits$} [{:+.digits$}, {:+.digits$}]",
            scale * p.mean,
            scale * p.lo,
            scale * p.hi
        ),
        Some(p) => format!("{:+.digits$}", scale * p.mean),
        None => "–".into(),
    };
    for g in gs.iter().filter(|g| g.label != base.label) {
        for (i, name) in names.iter().enumerate() {
            let diff = |f: fn(&crate::metrics::GradBucket) -> f64| {
                let d: Vec<f64> = g
                    .done()
                    .filter_map(|r| {
                        let b = base.done().find(|b| b.seed == r.seed)?;
                        let get = |r: &StudyRecord| {
                            r.r#final
                                .as_ref()?
                                .gradient_buckets
                                .as_ref()?
                                .get(i)
                                .and_then(|b| finite(f(b)))
                        };
                        Some(get(r)? - get(b)?)
                    })
                    .collect();
                stats::paired(&d)
            };
            let n = diff(|b| b.mean_abs).map(|p| p.n).unwrap_or(0);
            rows.push(vec![
                g.label.clone(),
                name.clone(),
                n.to_string(),
                cell(diff(|b| b.mean_abs), 1.0, 4),
                cell(diff(|b| b.mean_abs_change), 1.0, 4),
                cell(diff(|b| b.near_zero_frac), 100.0, 2),
            ]);
        }
    }
    md_table(out, &header, &rows);
}

/// A value, if it is finite (records older than a measure hold NaN).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The measures compared with the baseline, paired by seed: columns of the
/// main table (headers without their unit), and accuracy at 90 % pruned.
fn headline_cols() -> Vec<Col> {
    const KEYS: [&str; 7] = [
        "test_acc",
        "weights_near_zero_1e-3",
        "weights_scale_rel_0.01",
        "weights_exact_zero",
        "weights_gini",
        "weights_hoyer",
        "dead_units",
    ];
    let main = main_cols();
    let mut out: Vec<Col> = KEYS
        .iter()
        .map(|k| {
            let c = main.iter().find(|c| c.1 == *k).expect("a main column");
            (c.0.trim_end_matches(" %"), c.1, c.2, c.3)
        })
        .collect();
    out.push((
        "acc at 90% pruned",
        "pruned_90_acc",
        |r| {
            r.r#final
                .as_ref()?
                .pruning
                .iter()
                .find(|p| (p.frac - 0.9).abs() < 1e-9)
                .map(|p| p.test_acc)
        },
        true,
    ));
    out
}

/// The prunability scores (`crate::prune`): shown, and compared with the
/// baseline, only in tasks that set `pruning`, so that other studies'
/// tables stay as they were.
fn prune_cols() -> Vec<Col> {
    fn sc(r: &StudyRecord) -> Option<&crate::prune::PruneScores> {
        r.r#final.as_ref()?.prune_scores.as_ref()
    }
    vec![
        (
            "prunability AUC %",
            "prune_auc",
            |r| sc(r).map(|s| s.auc),
            true,
        ),
        (
            "max sparsity within 1 pt %",
            "prune_max_sparsity_1pt",
            |r| sc(r).map(|s| s.max_sparsity_within_1pt),
            true,
        ),
        (
            "mask sparsity %",
            "mask_sparsity",
            |r| sc(r)?.mask_sparsity,
            true,
        ),
    ]
}

/// Whether any run of the groups pruned (set `pruning`).
fn has_pruning<'a>(gs: impl IntoIterator<Item = &'a Group>) -> bool {
    gs.into_iter()
        .any(|g| g.runs.iter().any(|r| r.config.pruning.is_some()))
}

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
    cols: Vec<Col>,
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
                                Some((c.2)(r)? - (c.2)(b)?)
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

fn paired_markdown(out: &mut String, t: &PairedTable) {
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
    header.extend(cols.iter().map(|c| format!("Δ {}", c.0)));
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![r.label.clone()];
            row.extend(r.cells.iter().zip(cols).map(|(cell, c)| {
                let Some((p, holm)) = cell else {
                    return "–".to_string();
                };
                let (scale, digits) = if c.3 { (100.0, 2) } else { (1.0, 4) };
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
                    c.1,
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

fn matched_cols() -> Vec<Col> {
    headline_cols()
        .into_iter()
        .filter(|c| c.1 != "test_acc" && c.1 != "dead_units" && c.1 != "weights_exact_zero")
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
                    .filter_map(|(lr, g)| stat(g, c.2).map(|(m, s)| (m, s, *lr)))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
            })
            .collect();
    }
    Some(Matched { level, rows })
}

/// The Pareto plots of a task run over lr grids: each sparsity measure
/// against test accuracy, one line per optimizer over its grid (means over
/// seeds).
fn pareto_plots(dir: &Path, task: &str, gs: &[&Group]) -> Result<()> {
    let slug = slug(task);
    for (file, col, what) in PARETO {
        let c = headline_cols()
            .into_iter()
            .find(|c| c.1 == *col)
            .expect("a headline column");
        let points: Vec<(String, f64, f64)> = lr_grids(gs)
            .into_iter()
            .flat_map(|(name, pts)| {
                pts.into_iter().filter_map(move |(_, g)| {
                    let acc = stat(g, |r| r.r#final.as_ref().map(|f| f.test_acc))?.0;
                    let y = stat(g, c.2)?.0;
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
const PARETO: &[(&str, &str, &str)] = &[
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

fn matched_markdown(out: &mut String, m: &Matched) {
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
    header.extend(cols.iter().map(|c| format!("{} (lr)", c.0)));
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
                    let v = if c.3 {
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

/// A note when the runs of one report came from different commits or from
/// CPUs with different features (which pick different kernels, and so can
/// change the last bits); nothing when they agree.
fn provenance_notes(groups: &[Group]) -> String {
    let mut commits = std::collections::BTreeSet::new();
    let mut features = std::collections::BTreeSet::new();
    for r in groups.iter().flat_map(|g| g.runs.iter()) {
        match &r.provenance {
            Some(p) => {
                commits.insert(
                    p.git_commit
                        .as_deref()
                        .map(|c| c[..c.len().min(10)].to_string())
                        .unwrap_or_else(|| "unknown".into()),
                );
                features.insert(p.cpu_features.join(" "));
            }
            None => {
                commits.insert("unrecorded".into());
                features.insert("unrecorded".into());
            }
        }
    }
    let mut out = String::new();
    if commits.len() > 1 {
        let _ = writeln!(
            out,
            "**Note:** these runs came from {} commits ({}); see each run's `provenance`.\n",
            commits.len(),
            commits.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if features.len() > 1 {
        let _ = writeln!(
            out,
            "**Note:** these runs came from CPUs with different features ({}), which select different matrix kernels; the last digits may differ.\n",
            features
                .into_iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join("; ")
        );
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

    #[test]
    fn transformer_weights_fall_in_one_group_each_by_name() {
        use crate::models::{ModelConfig, transformer::TransformerConfig};
        let cfg = ModelConfig::Transformer(TransformerConfig {
            layers: 3,
            d_model: 8,
            heads: 2,
            context: 4,
            mlp_ratio: 2,
        });
        let task = crate::data::Task::NextToken { vocab: 5 };
        let m = cfg
            .build(&task, 0, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let mut count: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (name, v) in m.named_params() {
            let g = transformer_group(&name);
            if v.rank() < 2 {
                assert_eq!(g, None, "{name}: biases and norms are in no group");
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("{name} is in no group"));
            let e = count.entry(g).or_default();
            e.0 += 1;
            e.1 += v.elem_count();
        }
        // 3 layers: qkv and proj per layer; fc and proj per layer; two tables; one head.
        assert_eq!(count["attention"], (6, 3 * (8 * 24 + 8 * 8)));
        assert_eq!(count["MLP"], (6, 3 * 2 * 8 * 16));
        assert_eq!(count["embedding"], (2, 5 * 8 + 4 * 8));
        assert_eq!(count["head"], (1, 8 * 5));
    }

    #[test]
    fn first_difference_names_the_setting() {
        let a = serde_json::json!({"epochs": 3, "optimizer": {"lr": 0.1, "name": "sgd"}});
        let b = serde_json::json!({"epochs": 3, "optimizer": {"lr": 0.2, "name": "sgd"}});
        assert_eq!(
            first_difference(&a, &b, "").as_deref(),
            Some("optimizer.lr")
        );
        assert_eq!(first_difference(&a, &a, ""), None);
        let c = serde_json::json!({"epochs": 3});
        assert_eq!(first_difference(&a, &c, "").as_deref(), Some("optimizer"));
    }
}
