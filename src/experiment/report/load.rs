//! Reading a results folder: its manifest, its run records grouped by
//! configuration (refusing rows that would mix configurations), the runs
//! still missing, and `--remeasure`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use tracing::warn;

use crate::experiment::record::{Group, StudyRecord};
use crate::experiment::study::ReportOptions;
use crate::{bail_usage, io::write_json, train::Status};

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
    pub tuning: Option<crate::experiment::tuning::Tuning>,
    /// The study's `[report]` options.
    #[serde(default, skip_serializing_if = "ReportOptions::is_default")]
    pub report: ReportOptions,
}

/// The folder's manifest, if it has one.
/// A manifest that exists but cannot be read (truncated, edited) is named
/// in a warning, once per folder: without it the report cannot tell which
/// runs are missing or stale.
pub fn manifest(dir: &Path) -> Option<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(m) => Some(m),
        Err(e) => {
            static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> =
                std::sync::Mutex::new(Vec::new());
            let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
            if !warned.contains(&path) {
                warned.push(path.clone());
                eprintln!(
                    "warning: report: {} is unreadable ({e}); the report cannot say which runs are missing or leave out records of an earlier grid; rerun the study (--exp) to rewrite it",
                    path.display()
                );
            }
            None
        }
    }
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
            // Done but without its final measures (a damaged record): left
            // out, so that no row counts a seed it does not average.
            Ok(r) if r.study.is_some() && r.status == Status::Done && r.r#final.is_none() => {
                foreign.push(format!(
                    "{} (status done but no `final` measures: a damaged record; rerun the study to retrain it)",
                    p.display()
                ));
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
