//! Study files: `experiments/<name>.toml`.
//!
//! A study is a grid: tasks (model + data + training settings) x named
//! optimizer configurations x seeds. Every hyper-parameter of every
//! optimizer is resolved and written into each run's record.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::models::ModelConfig;
use crate::optim::OptimizerConfig;
use crate::rng::fnv1a;
use crate::train::{Schedule, TrainConfig};
use crate::{bail_usage, error::usage};

/// An optimizer configuration with the label it has in tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedOptimizer {
    pub label: String,
    /// A learning-rate grid: one configuration per value, labelled
    /// `<label> lr=<value>` (for tuning studies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lrs: Option<Vec<f64>>,
    #[serde(flatten)]
    pub config: OptimizerConfig,
}

impl NamedOptimizer {
    /// The configurations this entry stands for, with their labels.
    pub fn expand(&self) -> Result<Vec<(String, OptimizerConfig)>> {
        match &self.lrs {
            None => Ok(vec![(self.label.clone(), self.config.clone())]),
            Some(lrs) => lrs
                .iter()
                .map(|lr| {
                    let mut c = self.config.clone();
                    c.set("lr", crate::optim::RawValue::Toml(toml::Value::Float(*lr)))?;
                    Ok((format!("{} lr={lr}", self.label), c))
                })
                .collect(),
        }
    }
}

/// One model-and-data setting of a study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub label: String,
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub eval_every: Option<usize>,
    #[serde(default)]
    pub eval_windows: Option<usize>,
    #[serde(default)]
    pub prune_fracs: Option<Vec<f64>>,
    /// Optimizers for this task only; otherwise the study's list.
    #[serde(default)]
    pub optimizers: Option<Vec<NamedOptimizer>>,
    /// The label of the configuration the others are compared with, paired
    /// by seed (overrides the study's `baseline`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Bucket the weights by accumulated |g| at the end of each run
    /// (`TrainConfig::track_gradients`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_gradients: bool,
    /// Pruning in training (`TrainConfig::pruning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<crate::prune::PruneConfig>,
    /// Only these of the study's optimizers, by label (e.g. those a
    /// pruning criterion applies to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
}

fn default_batch() -> usize {
    64
}

/// A whole study file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Study {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seeds: Vec<u64>,
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub optimizers: Vec<NamedOptimizer>,
    /// Overrides applied with `--quick`, as `--set` would: `{ "epochs" = 1 }`.
    #[serde(default)]
    pub quick: toml::Table,
    /// The label of the configuration every task's others are compared
    /// with in the report (paired differences over shared seeds); a task's
    /// own `baseline` overrides it.
    #[serde(default)]
    pub baseline: Option<String>,
    /// The confirmatory family, declared before the runs
    /// ([`super::hypotheses`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hypotheses: Vec<super::hypotheses::Hypothesis>,
    /// A tuning study: rank each configuration's learning rates (its
    /// `lrs`) by this criterion and report the winner with its margins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<super::tuning::Tuning>,
    /// What the report writes besides its tables (`[report]`).
    #[serde(default, skip_serializing_if = "ReportOptions::is_default")]
    pub report: ReportOptions,
}

/// A study's `[report]`: the report's optional outputs, all on by default.
/// A tuning grid of hundreds of runs turns them off: its per-evaluation
/// `metrics.csv` and its magnitude histograms run over 1 MiB each and say
/// nothing about the learning-rate choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportOptions {
    /// `plots/<task>-magnitudes.svg`, linked from each task's section.
    #[serde(default = "on")]
    pub magnitude_plots: bool,
    /// `metrics.csv`, one row per run and evaluation.
    #[serde(default = "on")]
    pub metrics_csv: bool,
}

fn on() -> bool {
    true
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            magnitude_plots: true,
            metrics_csv: true,
        }
    }
}

impl ReportOptions {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One cell of the grid.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub task: String,
    pub label: String,
    /// (task index, optimizer index) in the study file, for ordering tables.
    pub order: (usize, usize),
    pub seed: u64,
    pub config: TrainConfig,
}

impl RunSpec {
    /// A file name that says what ran and, through a hash of the full
    /// config, changes when any setting does, so that an edited study never
    /// reuses a stale result.
    pub fn file_name(&self) -> String {
        let text = serde_json::to_string(&self.config).expect("configs serialize");
        format!(
            "{}--{}--s{}--{:08x}.json",
            slug(&self.task),
            slug(&self.label),
            self.seed,
            fnv1a(text.as_bytes()) as u32
        )
    }
}

/// The longest run file name a study may produce (file systems allow 255
/// bytes; the temporary name adds a prefix).
const MAX_FILE_NAME: usize = 200;

/// A label cut to 40 characters for messages.
fn short(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(40).collect::<String>())
    }
}

pub use crate::io::slug;

/// Top-level keys of a study; any other `--set` key applies to every task.
const STUDY_KEYS: [&str; 8] = [
    "name",
    "description",
    "seeds",
    "tasks",
    "optimizers",
    "quick",
    "baseline",
    "hypotheses",
];

impl Study {
    /// Reads a study file, applies `--quick` and `--set` overrides, and
    /// checks it. Errors name the file and the key.
    pub fn load(path: &Path, quick: bool, sets: &[(String, String)]) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read study {file}: {e}")))?;
        let mut doc: toml::Table =
            toml::from_str(&text).map_err(|e| toml_error(&file, &text, &e))?;
        if let Some((k, v)) = sets
            .iter()
            .find(|(k, _)| k == "quick" || k.starts_with("quick."))
        {
            bail_usage!(
                "{file}: --set {k}={v}: [quick] is applied before --set, so this changes nothing; with --quick give the setting itself (e.g. --set epochs=1), or edit the [quick] table"
            );
        }
        if quick {
            let q = doc
                .get("quick")
                .and_then(|q| q.as_table())
                .cloned()
                .unwrap_or_default();
            if q.is_empty() {
                bail_usage!(
                    "{file}: --quick: the study has no [quick] table, so --quick would run the full study; run it without --quick, or add one (e.g. [quick] epochs = 1)"
                );
            }
            let plain_ok: Result<Study, _> = Study::deserialize(toml::Value::Table(doc.clone()));
            for (k, v) in q {
                apply(&mut doc, &k, v).map_err(|e| usage(format!("{file}: [quick] {k}: {e}")))?;
            }
            // An error that only the [quick] settings bring is theirs: say so.
            if plain_ok.is_ok() {
                Study::deserialize(toml::Value::Table(doc.clone()))
                    .map_err(|e| usage(format!("{file}: in [quick]: {}", e.message().trim())))?;
            }
        }
        for (k, v) in sets {
            let value = parse_value(v);
            apply(&mut doc, k, value).map_err(|e| usage(format!("{file}: --set {k}={v}: {e}")))?;
        }
        let study: Study = if quick || !sets.is_empty() {
            Study::deserialize(toml::Value::Table(doc)).map_err(|e| {
                let keys: Vec<_> = sets.iter().map(|(k, _)| format!("--set {k}")).collect();
                usage(format!(
                    "{file} (with {}): {}",
                    keys.join(", "),
                    e.message().trim()
                ))
            })?
        } else {
            toml::from_str(&text).map_err(|e| toml_error(&file, &text, &e))?
        };
        // A `--set` run is not the study its file declares (labels may be
        // renamed, configurations added): its hypotheses do not apply, and
        // its report has no confirmatory table.
        let mut study = study;
        if !sets.is_empty() {
            study.hypotheses.clear();
        }
        study.check(&file)?;
        Ok(study)
    }

    fn check(&self, file: &str) -> Result<()> {
        if self.name.trim().is_empty() {
            bail_usage!("{file}: `name` is empty; give the study a name, e.g. name = \"mine\"");
        }
        check_text(file, "name", &self.name)?;
        for t in &self.tasks {
            check_text(file, "a task's `label`", &t.label)?;
            for o in t.optimizers.iter().flatten().chain(&self.optimizers) {
                check_text(file, "an optimizer's `label`", &o.label)?;
            }
            for l in t.only.iter().flatten().chain(&t.baseline) {
                check_text(file, &format!("task `{}`: `only`/`baseline`", t.label), l)?;
            }
        }
        if let Some(b) = &self.baseline {
            check_text(file, "`baseline`", b)?;
        }
        for o in self
            .tasks
            .iter()
            .flat_map(|t| t.optimizers.iter().flatten())
            .chain(&self.optimizers)
        {
            if let Some(lrs) = &o.lrs {
                if lrs.is_empty() {
                    bail_usage!(
                        "{file}: optimizer `{}`: `lrs` is empty, so the configuration would vanish from the study; give at least one learning rate, or remove `lrs`",
                        o.label
                    );
                }
                for (i, a) in lrs.iter().enumerate() {
                    // `==`: 0.0 and -0.0 are the same learning rate.
                    if let Some(b) = lrs[..i].iter().find(|b| **b == *a) {
                        bail_usage!(
                            "{file}: optimizer `{}`: `lrs` lists the learning rate {b} twice (as {b} and {a}); give each once",
                            o.label
                        );
                    }
                }
            }
        }
        if self.seeds.is_empty() {
            bail_usage!("{file}: `seeds` is empty; give at least one seed");
        }
        if self.tasks.is_empty() {
            bail_usage!("{file}: no [[tasks]]");
        }
        let mut seen_seeds = std::collections::BTreeSet::new();
        for s in &self.seeds {
            if !seen_seeds.insert(s) {
                bail_usage!("{file}: `seeds` lists {s} twice; give each seed once");
            }
        }
        // Labels name the run files, through `slug`: two labels that differ
        // only in case or punctuation would share (and overwrite) files.
        let mut labels = std::collections::BTreeMap::new();
        for t in &self.tasks {
            if t.label.trim().is_empty() {
                bail_usage!("{file}: a task has an empty `label`; give every task a label");
            }
            if let Some(other) = labels.insert(slug(&t.label), &t.label) {
                if *other == t.label {
                    bail_usage!("{file}: two tasks are labelled `{}`", t.label);
                }
                bail_usage!(
                    "{file}: tasks `{other}` and `{}` map to the same run file name `{}`; make the labels differ in more than case and punctuation",
                    t.label,
                    slug(&t.label)
                );
            }
            let all = t.optimizers.as_deref().unwrap_or(&self.optimizers);
            if let Some(l) = t
                .only
                .iter()
                .flatten()
                .find(|l| !all.iter().any(|o| o.label == **l))
            {
                bail_usage!(
                    "{file}: task `{}`: `only` names `{l}`, which is not one of its optimizer labels",
                    t.label
                );
            }
            if self.tuning.is_some()
                && let Some(o) = self.optimizers_of(t).iter().find(|o| o.lrs.is_none())
            {
                bail_usage!(
                    "{file}: task `{}`, optimizer `{}`: a study with [tuning] ranks learning rates, so every optimizer needs `lrs = [...]`",
                    t.label,
                    o.label
                );
            }
            let opts = self.optimizers_of(t);
            if opts.is_empty() {
                bail_usage!(
                    "{file}: task `{}` has no optimizers ([[optimizers]] or [[tasks.optimizers]])",
                    t.label
                );
            }
            let mut ol = std::collections::BTreeMap::new();
            for o in opts {
                if o.label.trim().is_empty() {
                    bail_usage!(
                        "{file}: task `{}` has an optimizer with an empty `label`; give every optimizer a label",
                        t.label
                    );
                }
                for (label, _) in o
                    .expand()
                    .map_err(|e| usage(format!("{file}: optimizer `{}`: {e:#}", o.label)))?
                {
                    if let Some(other) = ol.insert(slug(&label), label.clone()) {
                        if other == label {
                            bail_usage!(
                                "{file}: task `{}` has two optimizers labelled `{label}`",
                                t.label
                            );
                        }
                        bail_usage!(
                            "{file}: task `{}`: optimizers `{other}` and `{label}` map to the same run file name `{}`; make the labels differ in more than case and punctuation",
                            t.label,
                            slug(&label)
                        );
                    }
                }
            }
            if let Some(b) = t.baseline.as_ref().or(self.baseline.as_ref())
                && !ol.values().any(|l| l == b)
            {
                bail_usage!(
                    "{file}: task `{}`: `baseline = \"{b}\"` is not one of its optimizer labels ({})",
                    t.label,
                    ol.values().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        super::hypotheses::check(
            file,
            &self.hypotheses,
            |task| self.task_labels(task),
            |task| {
                self.baselines()
                    .into_iter()
                    .find(|(t, _)| t == task)
                    .map(|(_, b)| b)
            },
        )?;
        for spec in self.grid() {
            let name = spec.file_name();
            if name.len() > MAX_FILE_NAME {
                bail_usage!(
                    "{file}: task `{}`, optimizer `{}`: the run file name would be {} bytes, over the limit of {MAX_FILE_NAME}; shorten the labels",
                    short(&spec.task),
                    short(&spec.label),
                    name.len()
                );
            }
            spec.config
                .validate()
                .and_then(|()| crate::train::checks::check_config(&spec.config))
                .map_err(|e| {
                    usage(format!(
                        "{file}: task `{}`, optimizer `{}`: {e:#}",
                        spec.task, spec.label
                    ))
                })?;
        }
        Ok(())
    }

    /// Each task's baseline label, if any: (task label, baseline label).
    pub fn baselines(&self) -> Vec<(String, String)> {
        self.tasks
            .iter()
            .filter_map(|t| {
                t.baseline
                    .as_ref()
                    .or(self.baseline.as_ref())
                    .map(|b| (t.label.clone(), b.clone()))
            })
            .collect()
    }

    fn optimizers_of<'a>(&'a self, t: &'a Task) -> Vec<&'a NamedOptimizer> {
        t.optimizers
            .as_deref()
            .unwrap_or(&self.optimizers)
            .iter()
            .filter(|o| t.only.as_ref().is_none_or(|only| only.contains(&o.label)))
            .collect()
    }

    /// The configuration labels of task `task` (lr grids expanded); None
    /// for a task the study does not have.
    pub fn task_labels(&self, task: &str) -> Option<Vec<String>> {
        let t = self.tasks.iter().find(|t| t.label == task)?;
        Some(
            self.optimizers_of(t)
                .iter()
                .flat_map(|o| {
                    o.expand()
                        .map(|v| v.into_iter().map(|(l, _)| l).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect(),
        )
    }

    /// Every run of the study, in a fixed order: task, optimizer, seed.
    pub fn grid(&self) -> Vec<RunSpec> {
        let mut out = vec![];
        for (ti, t) in self.tasks.iter().enumerate() {
            let expanded: Vec<(String, OptimizerConfig)> = self
                .optimizers_of(t)
                .iter()
                .flat_map(|o| o.expand().expect("checked when the study was loaded"))
                .collect();
            for (oi, (label, opt)) in expanded.into_iter().enumerate() {
                for &seed in &self.seeds {
                    let mut c = TrainConfig::new(t.model.clone(), t.data.clone(), opt.clone());
                    c.epochs = t.epochs;
                    c.steps = t.steps;
                    c.batch_size = t.batch_size;
                    c.schedule = t.schedule.clone();
                    c.eval_every = t.eval_every;
                    if let Some(w) = t.eval_windows {
                        c.eval_windows = w;
                    }
                    if let Some(p) = &t.prune_fracs {
                        c.prune_fracs = p.clone();
                    }
                    c.seed = seed;
                    c.track_gradients = t.track_gradients;
                    c.pruning = t.pruning.clone();
                    out.push(RunSpec {
                        task: t.label.clone(),
                        label: label.clone(),
                        order: (ti, oi),
                        seed,
                        config: c,
                    });
                }
            }
        }
        out
    }
}

/// Refuses control characters (a newline, a tab, an escape...) in a name or
/// label: they would break the tables and plots it is written into.
fn check_text(file: &str, what: &str, text: &str) -> Result<()> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        bail_usage!(
            "{file}: {what} {:?} holds the control character {:?}; use printable characters only",
            short(text),
            c
        );
    }
    Ok(())
}

/// A `--set` value: TOML if it parses (numbers, booleans, arrays, quoted
/// strings), else a bare string.
fn parse_value(v: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("x = {v}")) {
        Ok(mut t) => t.remove("x").expect("parsed key"),
        Err(_) => toml::Value::String(v.to_string()),
    }
}

/// Sets a dotted key (`tasks.0.epochs`, `optimizers.2.lr`). A key that is
/// not a study-level key applies to every task (`epochs=1`,
/// `data.train_limit=1000`).
fn apply(doc: &mut toml::Table, key: &str, value: toml::Value) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    if STUDY_KEYS.contains(&parts[0]) {
        return set_path(doc, &parts, value);
    }
    let Some(toml::Value::Array(tasks)) = doc.get_mut("tasks") else {
        return Err("the study has no [[tasks]]".into());
    };
    for t in tasks {
        let toml::Value::Table(t) = t else {
            return Err("[[tasks]] entries must be tables".into());
        };
        set_path(t, &parts, value.clone())?;
    }
    Ok(())
}

fn set_path(
    table: &mut toml::Table,
    parts: &[&str],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let (first, rest) = parts.split_first().expect("non-empty");
    if rest.is_empty() {
        table.insert(first.to_string(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()));
    match entry {
        toml::Value::Table(t) => set_path(t, rest, value),
        toml::Value::Array(items) => {
            let (idx, rest2) = rest.split_first().expect("non-empty");
            let i: usize = idx.parse().map_err(|_| {
                format!("`{first}` is a list; index it with a number, e.g. {first}.0")
            })?;
            let len = items.len();
            let item = items.get_mut(i).ok_or(format!(
                "`{first}` has {len} entries; index {i} is out of range"
            ))?;
            match item {
                toml::Value::Table(t) if !rest2.is_empty() => set_path(t, rest2, value),
                _ if rest2.is_empty() => {
                    *item = value;
                    Ok(())
                }
                _ => Err(format!("`{first}.{i}` is not a table")),
            }
        }
        _ => Err(format!("`{first}` is not a table")),
    }
}

/// One line: file, line number and toml's message.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|s| {
            format!(
                " line {}",
                text[..s.start.min(text.len())].matches('\n').count() + 1
            )
        })
        .unwrap_or_default();
    usage(format!(
        "{file}{line}: {}",
        e.message().trim().replace('\n', " ")
    ))
}

/// The project's `experiments/` folder: relative to the working directory
/// when it exists there, else beside the crate's manifest.
pub fn experiments_dir() -> PathBuf {
    let here = PathBuf::from("experiments");
    if here.is_dir() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments")
    }
}

/// Resolves `--exp NAME|PATH`: a path to a .toml file, or a name under
/// `experiments/`. Returns (study file, output folder).
pub fn resolve(exp: &str, experiments: &Path) -> Result<(PathBuf, PathBuf)> {
    let as_path = PathBuf::from(exp);
    if as_path.is_dir() && !experiments.join(format!("{exp}.toml")).is_file() {
        bail_usage!(
            "--exp {exp}: {} is a folder; give a study name or the path of a .toml file (to rebuild a results folder's tables: sparsity-lab report {exp})",
            as_path.display()
        );
    }
    let file = if exp.ends_with(".toml") || as_path.is_file() {
        as_path
    } else {
        experiments.join(format!("{exp}.toml"))
    };
    if let Ok(meta) = std::fs::metadata(&file)
        && !meta.is_file()
    {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a pipe, socket or device)"
        };
        bail_usage!(
            "--exp {exp}: {} is {what}; give a study name or the path of a .toml file",
            file.display()
        );
    }
    if !file.is_file() {
        let known = list(experiments).unwrap_or_default();
        bail_usage!(
            "no study `{exp}`: {} does not exist; shipped studies: {} (or give a path to a .toml file)",
            file.display(),
            if known.is_empty() {
                "none found".into()
            } else {
                known.join(", ")
            }
        );
    }
    let stem = file
        .file_stem()
        .expect("a file name")
        .to_string_lossy()
        .to_string();
    let dir = file.parent().unwrap_or(Path::new(".")).join(stem);
    Ok((file, dir))
}

/// The study names under `experiments/`, sorted.
pub fn list(experiments: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(experiments)?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension().is_some_and(|x| x == "toml"))
                .then(|| p.file_stem().unwrap().to_string_lossy().to_string())
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests;
