//! Runs a study: expands the grid, skips runs already recorded, trains the
//! rest one by one, and writes one JSON per run, atomically. A diverged or
//! failed run is recorded and the sweep goes on. With `--shard i/n` only a
//! deterministic share of the runs is done; `report` merges all shards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use tracing::{info, warn};

use super::report;
use super::study::{RunSpec, Study, resolve};
use crate::bail_usage;
use crate::data::Dataset;
use crate::error::is_usage;
use crate::io::write_json;
use crate::train::{self, RunOptions, RunRecord, Status, StudyRun, TrainConfig};

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
    pub seconds: f64,
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

/// The folder the results of a study (or its quick version) go to.
pub fn output_dir(study_dir: &Path, quick: bool) -> PathBuf {
    if quick {
        study_dir.join("quick")
    } else {
        study_dir.to_path_buf()
    }
}

/// Runs `--exp NAME|PATH` and, unless sharded, writes the report.
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

pub fn run_study(exp: &str, experiments: &Path, opts: &SweepOptions) -> Result<SweepSummary> {
    let start = Instant::now();
    let (file, study_dir) = resolve(exp, experiments)?;
    let study = Study::load(&file, opts.quick, &opts.sets)?;
    let dir = output_dir(&study_dir, opts.quick);
    let runs_dir = dir.join("runs");
    std::fs::create_dir_all(&runs_dir)?;
    let grid = study.grid();
    let total = grid.len();
    let mine: Vec<RunSpec> = grid
        .into_iter()
        .enumerate()
        .filter(|(i, _)| opts.shard.is_none_or(|(s, n)| i % n == s))
        .map(|(_, r)| r)
        .collect();
    let git_commit = git_commit(&file);
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
    let multi = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let sweep_bar = multi.add(train::progress_bar(todo.len() as u64, "study"));
    // Every dataset the runs need, loaded once, before any run starts.
    let mut data: HashMap<String, Dataset> = HashMap::new();
    for (spec, _) in &todo {
        dataset(&mut data, &spec.config)?;
    }
    let next = AtomicUsize::new(0);
    let counts = Mutex::new((0usize, 0usize, 0usize));
    let write_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    // Workers take the next unfinished run until none is left; each run is
    // independent (its own model, optimizer, data order and RNG).
    let worker = |run_bar: ProgressBar| {
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some((spec, path)) = todo.get(i) else {
                break;
            };
            if write_error.lock().expect("lock").is_some() {
                break;
            }
            sweep_bar.set_message(format!(
                "{} / {} / seed {}",
                spec.task, spec.label, spec.seed
            ));
            let ds = &data[&data_key(&spec.config)];
            let record = run_one(
                spec,
                ds,
                &opts.device,
                &run_bar,
                &study.name,
                git_commit.clone(),
            );
            {
                let mut c = counts.lock().expect("lock");
                match record.status {
                    Status::Done => c.0 += 1,
                    Status::Diverged => c.1 += 1,
                    Status::Failed => c.2 += 1,
                }
            }
            if record.status != Status::Done {
                let why = record.error.as_deref().unwrap_or("non-finite loss");
                let _ = multi.println(format!(
                    "{} / {} / seed {}: {:?} ({why})",
                    spec.task, spec.label, spec.seed, record.status
                ));
            }
            if let Err(e) = write_json(path, &record) {
                *write_error.lock().expect("lock") = Some(e);
                break;
            }
            sweep_bar.inc(1);
        }
        run_bar.finish_and_clear();
    };
    if jobs == 1 {
        worker(multi.add(train::progress_bar(0, "run  ")));
    } else {
        std::thread::scope(|s| {
            for j in 0..jobs {
                let bar = multi.add(train::progress_bar(0, &format!("run {j}")));
                let worker = &worker;
                s.spawn(move || worker(bar));
            }
        });
    }
    sweep_bar.finish_and_clear();
    if let Some(e) = write_error.into_inner().expect("lock") {
        return Err(e);
    }
    let (done, diverged, failed) = counts.into_inner().expect("lock");
    let summary = SweepSummary {
        dir: dir.clone(),
        total,
        skipped,
        done,
        diverged,
        failed,
        seconds: start.elapsed().as_secs_f64(),
    };
    if opts.shard.is_none() {
        report::write_report(&dir)?;
    }
    Ok(summary)
}

/// A run file that holds a finished run (done or diverged). Failed runs are
/// retried; an unreadable file (from an older version) is redone.
fn is_finished(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match serde_json::from_str::<RunRecord>(&text) {
        Ok(r) => r.status != Status::Failed,
        Err(e) => {
            warn!(
                "{}: unreadable run record ({e}); running it again",
                path.display()
            );
            false
        }
    }
}

/// Loads each distinct dataset once per sweep. Missing data stops the sweep
/// with the loader's error: every run would fail the same way.
fn data_key(c: &TrainConfig) -> String {
    serde_json::to_string(&c.data).expect("data configs serialize")
}

fn dataset<'a>(cache: &'a mut HashMap<String, Dataset>, c: &TrainConfig) -> Result<&'a Dataset> {
    let key = data_key(c);
    if !cache.contains_key(&key) {
        let ds = c.data.load(c.seed)?;
        cache.insert(key.clone(), ds);
    }
    Ok(&cache[&key])
}

fn run_one(
    spec: &RunSpec,
    ds: &Dataset,
    device: &Device,
    bar: &ProgressBar,
    study: &str,
    git: Option<String>,
) -> RunRecord {
    let start = Instant::now();
    let opts = RunOptions {
        progress: Some(bar.clone()),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train::run_on(&spec.config, ds, device, &opts)
    }));
    let mut record = match outcome {
        Ok(Ok(trained)) => trained.record,
        Ok(Err(e)) => failed_record(spec, ds, device, crate::error::one_line(&e), is_usage(&e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            failed_record(spec, ds, device, format!("internal error: {msg}"), false)
        }
    };
    record.wall_seconds = start.elapsed().as_secs_f64();
    record.study = Some(StudyRun {
        study: study.to_string(),
        task: spec.task.clone(),
        label: spec.label.clone(),
        order: spec.order,
        git_commit: git,
    });
    record
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
        device: train::device_name(device),
        data_source: ds.source.clone(),
        params: 0,
        optimizer_state_bytes: 0,
        steps_done: 0,
        history: vec![],
        r#final: None,
        wall_seconds: 0.0,
        study: None,
    }
}

/// The commit of the repository holding the study file, if any.
fn git_commit(file: &Path) -> Option<String> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
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
}
