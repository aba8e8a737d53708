//! Runs a study: expands the grid, skips runs already recorded, trains the
//! rest, and writes one JSON per run (with its provenance) and one
//! safetensors checkpoint beside it, each atomically. A diverged or failed
//! run is recorded and the sweep goes on. With `--shard i/n` only a
//! deterministic share of the runs is done; `report` merges all shards.
//!
//! Fresh results go to their own folder (`results/<study>/` by default,
//! git-ignored), never into the committed reference (`experiments/<study>/`);
//! overrides (`--quick`, `--set`) get a folder of their own, so a table never
//! mixes configurations. Several processes may share a folder: each run is
//! claimed (`runs/<run>.claim`, created exclusively) before it trains, so
//! every run is trained once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use tracing::{info, warn};

use super::claim::{Claim, clean_stale_temporaries, is_finished};
use super::compare;
use super::record::{StudyRecord, StudyRun};
use super::report::{self, MANIFEST, Manifest};
use super::study::{RunSpec, Study, resolve};
use crate::bail_usage;
use crate::data::Dataset;
use crate::error::is_usage;
use crate::io::{write_atomic, write_json};
use crate::provenance::{self, Machine};
use crate::train::{self, RunOptions, RunRecord, Status, TrainConfig};

/// How to run a study.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub quick: bool,
    pub sets: Vec<(String, String)>,
    /// `(i, n)`: run the runs whose index in the grid is `i` modulo `n`.
    pub shard: Option<(usize, usize)>,
    pub device: Device,
    /// Show progress bars (when stderr is a terminal).
    pub progress: bool,
    /// Runs trained at once. With more than one, each run uses one thread
    /// (the caller sets `RAYON_NUM_THREADS=1` before Candle starts).
    pub jobs: usize,
    /// The results folder of the plain study; `--quick` and `--set` runs go
    /// to sub-folders of it (see [`output_dir`]). Default: `results/<study>`.
    pub out: Option<PathBuf>,
}

/// What a sweep did.
#[derive(Debug)]
pub struct SweepSummary {
    pub dir: PathBuf,
    pub total: usize,
    pub skipped: usize,
    pub done: usize,
    pub diverged: usize,
    pub failed: usize,
    /// Runs of this sweep's share that other processes hold a claim on.
    pub claimed_elsewhere: usize,
    pub seconds: f64,
    /// The comparison with the committed reference tables, when there is
    /// one and the report was written.
    pub verdict: Option<compare::Verdict>,
    /// The reference folder, when there is one.
    pub reference: Option<PathBuf>,
}

/// Parses `i/n` with 0 <= i < n.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed = s.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => bail_usage!("invalid --shard `{s}`: expected i/n with 0 <= i < n, e.g. 0/4"),
    }
}

/// The folder that holds the results of one variant of a study, under the
/// study's base folder: the base itself for the study as written, `quick/`
/// with `--quick`, and `set-<what>-<hash>/` (or `quick-set-...`) with
/// `--set` overrides, named by the overrides so that different settings
/// never share a folder. The same rule places the committed references
/// (`experiments/<study>/`, `experiments/<study>/quick/`).
pub fn output_dir(base: &Path, quick: bool, sets: &[(String, String)]) -> PathBuf {
    if sets.is_empty() {
        return if quick {
            base.join("quick")
        } else {
            base.to_path_buf()
        };
    }
    let text: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = text.join("\n");
    let mut readable = super::study::slug(&text.replace('\n', "_"));
    readable.truncate(40);
    let hash = crate::rng::fnv1a(text.as_bytes()) as u32;
    base.join(format!(
        "{}set-{}-{hash:08x}",
        if quick { "quick-" } else { "" },
        readable.trim_end_matches('-')
    ))
}

/// Whether every run of the study trains fastest on one thread
/// ([`TrainConfig::prefers_one_thread`]): then `--jobs auto` runs one per
/// core. Reads only the study file.
pub fn small_models_only(
    exp: &str,
    experiments: &Path,
    quick: bool,
    sets: &[(String, String)],
) -> Result<bool> {
    let (file, _) = resolve(exp, experiments)?;
    let study = Study::load(&file, quick, sets)?;
    Ok(study.grid().iter().all(|r| r.config.prefers_one_thread()))
}

/// The folder a sweep with these options writes to, and the committed
/// reference to compare it with (none for `--set` runs, or when absent).
pub fn folders(
    exp: &str,
    experiments: &Path,
    opts: &SweepOptions,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let (file, study_dir) = resolve(exp, experiments)?;
    let stem = file
        .file_stem()
        .expect("a study file name")
        .to_string_lossy()
        .to_string();
    let base = opts
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(&stem));
    let dir = output_dir(&base, opts.quick, &opts.sets);
    let reference = output_dir(&study_dir, opts.quick, &opts.sets);
    let reference = (opts.sets.is_empty()
        && reference.join("results.csv").is_file()
        && !same_dir(&reference, &dir))
    .then_some(reference);
    Ok((dir, reference))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Runs `--exp NAME|PATH` and, unless sharded, writes the report.
pub fn run_study(exp: &str, experiments: &Path, opts: &SweepOptions) -> Result<SweepSummary> {
    let start = Instant::now();
    let plan = plan(exp, experiments, opts)?;
    let data = preload(&plan)?;
    let (counts, claimed_elsewhere) = run_all(&plan, &data, opts)?;
    finish(plan, opts, counts, claimed_elsewhere, start)
}

/// A sweep's plan: the study, its folders, and the runs of this shard that
/// are not finished yet.
struct SweepPlan {
    study: Study,
    file: PathBuf,
    dir: PathBuf,
    reference: Option<PathBuf>,
    runs_dir: PathBuf,
    /// The runs in the whole grid.
    total: usize,
    /// The `--set` overrides as `key=value`.
    set_list: Vec<String>,
    /// This shard's runs not finished yet, with their record's path.
    todo: Vec<(RunSpec, PathBuf)>,
    /// This shard's runs already finished.
    skipped: usize,
}

/// Loads the study, creates its results folder with the manifest, and
/// picks this shard's unfinished runs; says what it is about to do.
fn plan(exp: &str, experiments: &Path, opts: &SweepOptions) -> Result<SweepPlan> {
    let (file, _) = resolve(exp, experiments)?;
    let study = Study::load(&file, opts.quick, &opts.sets)?;
    let (dir, reference) = folders(exp, experiments, opts)?;
    let runs_dir = dir.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating the results folder {}", runs_dir.display()))?;
    clean_stale_temporaries(&dir);
    let grid = study.grid();
    let total = grid.len();
    let set_list: Vec<String> = opts.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let manifest = Manifest {
        study: study.name.clone(),
        quick: opts.quick,
        set: set_list.clone(),
        runs: grid.iter().map(|r| r.file_name()).collect(),
        baselines: study.baselines(),
        tuning: study.tuning,
        report: study.report,
    };
    write_json(&dir.join(MANIFEST), &manifest)?;
    let mine: Vec<RunSpec> = grid
        .into_iter()
        .enumerate()
        .filter(|(i, _)| opts.shard.is_none_or(|(s, n)| i % n == s))
        .map(|(_, r)| r)
        .collect();
    let todo: Vec<(RunSpec, PathBuf)> = mine
        .iter()
        .map(|r| (r.clone(), runs_dir.join(r.file_name())))
        .filter(|(_, p)| !is_finished(p))
        .collect();
    let skipped = mine.len() - todo.len();
    info!(
        "study {} ({}): {} runs in the grid, {} in this shard, {} already done, {} to run; results in {}",
        study.name,
        file.display(),
        total,
        mine.len(),
        skipped,
        todo.len(),
        dir.display()
    );
    let jobs = opts.jobs.clamp(1, todo.len().max(1));
    eprintln!(
        "study {}: {} runs{}, {} already done, {} to run ({}) -> {}",
        study.name,
        total,
        opts.shard
            .map(|(i, n)| format!(" ({} in shard {i}/{n})", mine.len()))
            .unwrap_or_default(),
        skipped,
        todo.len(),
        if jobs == 1 {
            "one at a time".to_string()
        } else {
            format!("{jobs} at a time, one thread each")
        },
        dir.display()
    );
    Ok(SweepPlan {
        study,
        file,
        dir,
        reference,
        runs_dir,
        total,
        set_list,
        todo,
        skipped,
    })
}

/// Every dataset the runs need, loaded once (with its digest), and every
/// run's settings checked against its data, before any run trains.
fn preload(plan: &SweepPlan) -> Result<HashMap<String, (Dataset, String)>> {
    let mut data: HashMap<String, (Dataset, String)> = HashMap::new();
    for (spec, _) in &plan.todo {
        dataset(&mut data, &spec.config)?;
    }
    for (spec, _) in &plan.todo {
        let (ds, _) = &data[&data_key(&spec.config)];
        spec.config
            .check_data(ds)
            .and_then(|()| train::checks::check_with_data(&spec.config, ds))
            .map_err(|e| {
                crate::error::usage(format!(
                    "{}: task `{}`, optimizer `{}`: {}",
                    plan.file.display(),
                    spec.task,
                    spec.label,
                    crate::error::one_line(&e)
                ))
            })?;
    }
    Ok(data)
}

/// What the workers of a sweep share.
struct Sweep<'a> {
    plan: &'a SweepPlan,
    data: &'a HashMap<String, (Dataset, String)>,
    opts: &'a SweepOptions,
    machine: Machine,
    multi: MultiProgress,
    sweep_bar: ProgressBar,
    next: AtomicUsize,
    /// (done, diverged, failed).
    counts: Mutex<(usize, usize, usize)>,
    elsewhere: AtomicUsize,
    write_error: Mutex<Option<anyhow::Error>>,
}

/// Runs the plan's runs, `opts.jobs` at a time. Returns (done, diverged,
/// failed) and the number of runs that other processes held.
fn run_all(
    plan: &SweepPlan,
    data: &HashMap<String, (Dataset, String)>,
    opts: &SweepOptions,
) -> Result<((usize, usize, usize), usize)> {
    let multi = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let sweep_bar = multi.add(train::progress_bar(plan.todo.len() as u64, "study"));
    let sweep = Sweep {
        plan,
        data,
        opts,
        machine: Machine::detect(),
        multi,
        sweep_bar,
        next: AtomicUsize::new(0),
        counts: Mutex::new((0, 0, 0)),
        elsewhere: AtomicUsize::new(0),
        write_error: Mutex::new(None),
    };
    let jobs = opts.jobs.clamp(1, plan.todo.len().max(1));
    if jobs == 1 {
        sweep.worker(sweep.multi.add(train::progress_bar(0, "run  ")));
    } else {
        std::thread::scope(|s| {
            for j in 0..jobs {
                let bar = sweep.multi.add(train::progress_bar(0, &format!("run {j}")));
                let sweep = &sweep;
                s.spawn(move || sweep.worker(bar));
            }
        });
    }
    sweep.sweep_bar.finish_and_clear();
    if let Some(e) = sweep.write_error.into_inner().expect("lock") {
        return Err(e);
    }
    Ok((
        sweep.counts.into_inner().expect("lock"),
        sweep.elsewhere.into_inner(),
    ))
}

impl Sweep<'_> {
    /// Takes the next unfinished run until none is left; each run is
    /// independent (its own model, optimizer, data order and RNG).
    fn worker(&self, run_bar: ProgressBar) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let Some((spec, path)) = self.plan.todo.get(i) else {
                break;
            };
            if self.write_error.lock().expect("lock").is_some() {
                break;
            }
            if let Err(e) = self.run_claimed(spec, path, &run_bar) {
                *self.write_error.lock().expect("lock") = Some(e);
                break;
            }
            self.sweep_bar.inc(1);
        }
        run_bar.finish_and_clear();
    }

    /// Claims one run, trains it and saves its checkpoint and record; skips
    /// it if another process holds it or has finished it since this sweep
    /// started. An error is one of writing (a run's own failure is
    /// recorded).
    fn run_claimed(&self, spec: &RunSpec, path: &Path, run_bar: &ProgressBar) -> Result<()> {
        let Some(claim) = Claim::take(path)? else {
            self.elsewhere.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        };
        if is_finished(path) {
            drop(claim);
            return Ok(());
        }
        self.sweep_bar.set_message(format!(
            "{} / {} / seed {}",
            spec.task, spec.label, spec.seed
        ));
        let (opts, plan) = (self.opts, self.plan);
        let (ds, sha) = &self.data[&data_key(&spec.config)];
        let (mut record, model) = run_one(spec, ds, &opts.device, run_bar, &plan.study);
        record.provenance =
            Some(
                self.machine
                    .provenance(&opts.device, &plan.set_list, opts.quick, sha.clone()),
            );
        {
            let mut c = self.counts.lock().expect("lock");
            match record.status {
                Status::Done => c.0 += 1,
                Status::Diverged => c.1 += 1,
                Status::Failed => c.2 += 1,
            }
        }
        if record.status != Status::Done {
            let why = record.error.as_deref().unwrap_or("non-finite loss");
            let _ = self.multi.println(format!(
                "{} / {} / seed {}: {:?} ({why})",
                spec.task, spec.label, spec.seed, record.status
            ));
        }
        let saved = save(path, &mut record, model.as_ref());
        drop(claim);
        saved
    }
}

/// Saves a run: the checkpoint first, so that a record on disk means the
/// run is finished, with everything it keeps.
fn save(path: &Path, record: &mut StudyRecord, model: Option<&crate::models::Model>) -> Result<()> {
    if let Some(model) = model {
        let ckpt = path.with_extension("safetensors");
        let place = record.study.as_ref().map(StudyRun::metadata);
        let bytes =
            train::checkpoint_bytes(model, record, place.as_ref().map_or(&[][..], |m| &m[..]))?;
        write_atomic(&ckpt, &bytes)?;
        record.checkpoint = Some(
            ckpt.file_name()
                .expect("a file name")
                .to_string_lossy()
                .to_string(),
        );
    }
    write_json(path, record)
}

/// The report and the verdict after a sweep (not after one shard of it).
fn finish(
    plan: SweepPlan,
    opts: &SweepOptions,
    (done, diverged, failed): (usize, usize, usize),
    claimed_elsewhere: usize,
    start: Instant,
) -> Result<SweepSummary> {
    let mut verdict = None;
    if opts.shard.is_none() {
        // Another process may add a record while this one writes the
        // report: write it again until the set of records stands still, so
        // that the last process to finish leaves the complete tables.
        loop {
            let before = report::record_paths(&plan.runs_dir);
            report::write_report(&plan.dir)?;
            if report::record_paths(&plan.runs_dir) == before {
                break;
            }
        }
        if let Some(r) = &plan.reference
            && claimed_elsewhere == 0
        {
            verdict = Some(compare::compare(&plan.dir, r)?);
        }
    }
    Ok(SweepSummary {
        dir: plan.dir,
        total: plan.total,
        skipped: plan.skipped,
        done,
        diverged,
        failed,
        claimed_elsewhere,
        seconds: start.elapsed().as_secs_f64(),
        verdict,
        reference: plan.reference,
    })
}

/// Loads each distinct dataset once per sweep. Missing data stops the sweep
/// with the loader's error: every run would fail the same way.
fn data_key(c: &TrainConfig) -> String {
    serde_json::to_string(&c.data).expect("data configs serialize")
}

fn dataset(cache: &mut HashMap<String, (Dataset, String)>, c: &TrainConfig) -> Result<()> {
    if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(data_key(c)) {
        let ds = c.data.load(c.seed)?;
        let sha = provenance::data_sha256(&ds)?;
        slot.insert((ds, sha));
    }
    Ok(())
}

fn run_one(
    spec: &RunSpec,
    ds: &Dataset,
    device: &Device,
    bar: &ProgressBar,
    study: &Study,
) -> (StudyRecord, Option<crate::models::Model>) {
    let start = Instant::now();
    let opts = RunOptions {
        progress: Some(bar.clone()),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train::run_on(&spec.config, ds, device, &opts)
    }));
    let (mut record, model) = match outcome {
        Ok(Ok(trained)) => (trained.record, Some(trained.model)),
        Ok(Err(e)) => (
            failed_record(spec, ds, device, crate::error::one_line(&e), is_usage(&e)),
            None,
        ),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            (
                failed_record(spec, ds, device, format!("internal error: {msg}"), false),
                None,
            )
        }
    };
    record.wall_seconds = start.elapsed().as_secs_f64();
    let record = StudyRecord {
        run: record,
        study: Some(StudyRun {
            study: study.name.clone(),
            task: spec.task.clone(),
            label: spec.label.clone(),
            order: spec.order,
            declared: study.hypotheses.iter().map(|h| h.fingerprint()).collect(),
        }),
    };
    (record, model)
}

fn failed_record(
    spec: &RunSpec,
    ds: &Dataset,
    device: &Device,
    error: String,
    usage: bool,
) -> RunRecord {
    warn!(
        "{} / {} / seed {} failed: {error}",
        spec.task, spec.label, spec.seed
    );
    RunRecord {
        status: Status::Failed,
        error: Some(if usage {
            format!("configuration: {error}")
        } else {
            error
        }),
        config: spec.config.clone(),
        seed: spec.seed,
        device: provenance::device_name(device),
        data: ds.description.clone(),
        params: 0,
        optimizer_state_bytes: 0,
        steps_done: 0,
        history: vec![],
        r#final: None,
        wall_seconds: 0.0,
        provenance: None,
        checkpoint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards() {
        assert_eq!(parse_shard("0/4").unwrap(), (0, 4));
        assert_eq!(parse_shard("3/4").unwrap(), (3, 4));
        for bad in ["4/4", "1", "a/b", "0/0", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_variant_has_its_own_folder() {
        let base = Path::new("results/s");
        let set = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(output_dir(base, false, &[]), base);
        assert_eq!(output_dir(base, true, &[]), base.join("quick"));
        let a = output_dir(base, false, &set(&[("epochs", "10")]));
        let name = a.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("set-epochs-10-"), "{name}");
        assert_eq!(name.len(), "set-epochs-10-".len() + 8, "{name}");
        // Different overrides, order, or --quick: different folders.
        let b = output_dir(base, false, &set(&[("epochs", "11")]));
        let c = output_dir(base, true, &set(&[("epochs", "10")]));
        let d = output_dir(base, false, &set(&[("epochs", "10"), ("seeds", "[0]")]));
        let e = output_dir(base, false, &set(&[("seeds", "[0]"), ("epochs", "10")]));
        let all = [&a, &b, &c, &d, &e];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert!(
            c.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("quick-set-")
        );
        // Long overrides give a bounded name.
        let long = output_dir(base, false, &set(&[("description", &"x".repeat(500))]));
        assert!(long.file_name().unwrap().len() < 60);
    }
}
