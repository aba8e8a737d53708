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
    };
    write_json(&dir.join(MANIFEST), &manifest)?;
    let mine: Vec<RunSpec> = grid
        .into_iter()
        .enumerate()
        .filter(|(i, _)| opts.shard.is_none_or(|(s, n)| i % n == s))
        .map(|(_, r)| r)
        .collect();
    let machine = Machine::detect();
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
    // Every dataset the runs need, loaded once (with its digest), before any
    // run starts.
    let mut data: HashMap<String, (Dataset, String)> = HashMap::new();
    for (spec, _) in &todo {
        dataset(&mut data, &spec.config)?;
    }
    // Every run's settings against its data, before any run trains.
    for (spec, _) in &todo {
        let (ds, _) = &data[&data_key(&spec.config)];
        spec.config.check_data(ds).map_err(|e| {
            crate::error::usage(format!(
                "{}: task `{}`, optimizer `{}`: {}",
                file.display(),
                spec.task,
                spec.label,
                crate::error::one_line(&e)
            ))
        })?;
    }
    let next = AtomicUsize::new(0);
    let counts = Mutex::new((0usize, 0usize, 0usize));
    let elsewhere = AtomicUsize::new(0);
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
            // Claim the run; skip it if another process holds it or has
            // finished it since this sweep started.
            let claim = match Claim::take(path) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    elsewhere.fetch_add(1, Ordering::SeqCst);
                    sweep_bar.inc(1);
                    continue;
                }
                Err(e) => {
                    *write_error.lock().expect("lock") = Some(e);
                    break;
                }
            };
            if is_finished(path) {
                drop(claim);
                sweep_bar.inc(1);
                continue;
            }
            sweep_bar.set_message(format!(
                "{} / {} / seed {}",
                spec.task, spec.label, spec.seed
            ));
            let (ds, sha) = &data[&data_key(&spec.config)];
            let (mut record, model) = run_one(spec, ds, &opts.device, &run_bar, &study.name);
            record.provenance =
                Some(machine.provenance(&opts.device, &set_list, opts.quick, sha.clone()));
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
            // The checkpoint first: a record on disk means the run is
            // finished, with everything it keeps.
            let saved = (|| -> Result<()> {
                if let Some(model) = &model {
                    let ckpt = path.with_extension("safetensors");
                    let place = record.study.as_ref().map(StudyRun::metadata);
                    let bytes = train::checkpoint_bytes(
                        model,
                        &record,
                        place.as_ref().map_or(&[][..], |m| &m[..]),
                    )?;
                    write_atomic(&ckpt, &bytes)?;
                    record.checkpoint = Some(
                        ckpt.file_name()
                            .expect("a file name")
                            .to_string_lossy()
                            .to_string(),
                    );
                }
                write_json(path, &record)
            })();
            drop(claim);
            if let Err(e) = saved {
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
    let claimed_elsewhere = elsewhere.into_inner();
    let mut verdict = None;
    if opts.shard.is_none() {
        // Another process may add a record while this one writes the
        // report: write it again until the set of records stands still, so
        // that the last process to finish leaves the complete tables.
        loop {
            let before = report::record_paths(&runs_dir);
            report::write_report(&dir)?;
            if report::record_paths(&runs_dir) == before {
                break;
            }
        }
        if let Some(r) = &reference
            && claimed_elsewhere == 0
        {
            verdict = Some(compare::compare(&dir, r)?);
        }
    }
    Ok(SweepSummary {
        dir,
        total,
        skipped,
        done,
        diverged,
        failed,
        claimed_elsewhere,
        seconds: start.elapsed().as_secs_f64(),
        verdict,
        reference,
    })
}

/// An exclusive claim on one run, held while it trains: the file
/// `<run>.claim` beside the run's record, created only if absent, holding
/// the host and process id. A claim whose process is gone (on this host) is
/// stale and is taken over; claims of other hosts are respected.
struct Claim {
    path: PathBuf,
}

impl Claim {
    fn take(run: &Path) -> Result<Option<Claim>> {
        let path = run.with_extension("claim");
        let me = format!("{} {}\n", hostname(), std::process::id());
        // The claim appears with its content or not at all: written to a
        // temporary file, then hard-linked to its name, which fails if the
        // name exists. (Created empty and then written, a process killed in
        // between would leave a claim nobody could judge stale.)
        let tmp = path.with_file_name(format!(
            ".tmp.{}.{}",
            std::process::id(),
            path.file_name().expect("a file name").to_string_lossy()
        ));
        let cannot = |e: std::io::Error, p: &Path| {
            anyhow::Error::new(e).context(format!(
                "cannot write in the results folder: creating {}",
                p.display()
            ))
        };
        for _ in 0..2 {
            std::fs::write(&tmp, &me).map_err(|e| cannot(e, &tmp))?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok(Some(Claim { path })),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    if !claim_is_stale(&held) {
                        return Ok(None);
                    }
                    warn!(
                        "{}: stale claim ({}); taking it over",
                        path.display(),
                        held.trim()
                    );
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(cannot(e, &path)),
            }
        }
        Ok(None)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether process `pid` of this host is gone.
fn process_gone(pid: u32) -> bool {
    pid != std::process::id()
        && !Path::new(&format!("/proc/{pid}")).exists()
        && Path::new("/proc/self").exists()
}

/// A claim (`host pid`) is stale when it names this host and a process that
/// no longer runs. (Claims are never half-written: see [`Claim::take`].)
fn claim_is_stale(text: &str) -> bool {
    let mut parts = text.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) {
        (Some(host), Some(pid)) => host == hostname() && process_gone(pid),
        _ => false,
    }
}

/// Removes temporary files (`.tmp.<pid>.*`) and stale claims left by killed
/// processes of this host in a results folder.
fn clean_stale_temporaries(dir: &Path) {
    for sub in [dir.to_path_buf(), dir.join("runs"), dir.join("plots")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name
                .strip_prefix(".tmp.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|p| p.parse::<u32>().ok());
            let stale = match pid {
                Some(pid) => process_gone(pid),
                None if name.ends_with(".claim") => {
                    claim_is_stale(&std::fs::read_to_string(e.path()).unwrap_or_default())
                }
                None => false,
            };
            if stale {
                info!("removing {}, left by a killed process", e.path().display());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
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
    study: &str,
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
            study: study.to_string(),
            task: spec.task.clone(),
            label: spec.label.clone(),
            order: spec.order,
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

    #[test]
    fn claims_are_exclusive_and_stale_ones_are_taken_over() {
        let dir = std::env::temp_dir().join(format!("sparsity-lab-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("r.json");
        let first = Claim::take(&run).unwrap().expect("free");
        assert!(Claim::take(&run).unwrap().is_none(), "held by this process");
        drop(first);
        assert!(!run.with_extension("claim").exists(), "released on drop");
        // A claim by a process of this host that no longer runs.
        std::fs::write(
            run.with_extension("claim"),
            format!("{} 4000000\n", hostname()),
        )
        .unwrap();
        assert!(
            Claim::take(&run).unwrap().is_some(),
            "stale claim taken over"
        );
        // A claim by another host is respected.
        std::fs::write(run.with_extension("claim"), "another-host 1\n").unwrap();
        assert!(Claim::take(&run).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
