//! Studies end to end: the `smoke` study run twice gives byte-identical
//! tables; killed half-way and restarted, it redoes only unfinished runs and
//! ends with the same tables; shards merge; two processes share a folder;
//! the main command reproduces the committed reference without touching it;
//! overrides keep apart; every run keeps its provenance and checkpoint;
//! errors are one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sparsity-lab");
const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/smoke.toml");
/// A scratch folder with a copy of the smoke study whose runs are `epochs`
/// long (40: long enough that a kill lands between runs, and that two
/// processes overlap). Results go to `DIR/smoke/` (see [`exp`]).
fn fresh_with(name: &str, epochs: usize) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sparsity-lab-study-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let text = std::fs::read_to_string(SMOKE).unwrap();
    assert!(text.contains("\nepochs = 3\n"));
    let text = text.replace("\nepochs = 3\n", &format!("\nepochs = {epochs}\n"));
    std::fs::write(d.join("smoke.toml"), text).unwrap();
    d
}

fn fresh(name: &str) -> PathBuf {
    fresh_with(name, 3)
}

fn exp_command(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--exp")
        .arg(dir.join("smoke.toml"))
        .arg("--out")
        .arg(dir.join("smoke"))
        .args(extra);
    c
}

fn exp(dir: &Path, extra: &[&str]) -> Output {
    let o = exp_command(dir, extra).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("smoke/runs"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.extension().is_some_and(|x| x == "json")
            && !p.file_name().unwrap().to_string_lossy().starts_with(".tmp")
    });
    v.sort();
    v
}

/// Every output the report writes, by relative path.
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    outputs_without(dir, &[])
}

/// As [`outputs`], for a report that leaves out the top-level files `skip`.
fn outputs_without(dir: &Path, skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    let base = dir.join("smoke");
    let mut files: Vec<PathBuf> = ["results.md", "results.csv", "metrics.csv"]
        .into_iter()
        .filter(|f| !skip.contains(f))
        .map(|f| base.join(f))
        .collect();
    let mut plots: Vec<PathBuf> = std::fs::read_dir(base.join("plots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    plots.sort();
    files.extend(plots);
    files
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(&base).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// A run record without the fields that legitimately differ between runs
/// (wall time, the provenance: threads and the dirty flag may differ).
fn measured(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("wall_seconds");
    v.as_object_mut().unwrap().remove("provenance");
    v
}

#[test]
fn smoke_twice_is_identical_and_a_killed_sweep_resumes() {
    // Uninterrupted, twice.
    let a = fresh_with("a", 40);
    let first = exp(&a, &[]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("6 runs: 0 skipped"));
    let out_a = outputs(&a);
    assert_eq!(
        out_a.len(),
        6,
        "results.md, results.csv, metrics.csv and three plots"
    );
    let again = exp(&a, &[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("6 runs: 6 skipped"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    // Rerun from scratch in a second folder: byte-identical tables and plots.
    let b = fresh_with("b", 40);
    exp(&b, &[]);
    assert_eq!(
        outputs(&b),
        out_a,
        "a study run twice must give byte-identical outputs"
    );

    // Killed after the first run file appears, then restarted.
    let c = fresh_with("c", 40);
    let mut child = exp_command(&c, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_files(&c).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = run_files(&c);
    assert!(
        !before.is_empty() && before.len() < 6,
        "the kill should land mid-sweep; {} runs were done",
        before.len()
    );
    assert!(!c.join("smoke/results.md").exists());
    let kept: Vec<(PathBuf, Vec<u8>)> = before
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let resumed = exp(&c, &[]);
    let text = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        text.contains(&format!("6 runs: {} skipped", before.len())),
        "{text}"
    );
    for (p, bytes) in kept {
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{} was redone",
            p.display()
        );
    }
    assert_eq!(
        outputs(&c),
        out_a,
        "the resumed study must end with the same outputs"
    );
    for (pa, pc) in run_files(&a).iter().zip(run_files(&c)) {
        assert_eq!(measured(pa), measured(&pc));
    }
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn shards_merge_into_the_same_report_and_report_rebuilds_it() {
    let whole = fresh("whole");
    exp(&whole, &[]);
    let sharded = fresh("sharded");
    for s in ["0/2", "1/2"] {
        let o = exp(&sharded, &["--shard", s]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("report"));
    }
    assert_eq!(run_files(&sharded).len(), 6);
    let o = Command::new(BIN)
        .arg("report")
        .arg(sharded.join("smoke"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(outputs(&sharded), outputs(&whole));
    // report alone rebuilds the same files after they are deleted.
    std::fs::remove_file(whole.join("smoke/results.md")).unwrap();
    let before = outputs(&sharded);
    let o = Command::new(BIN)
        .arg("report")
        .arg(whole.join("smoke"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(outputs(&whole), before);
    for d in [whole, sharded] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn quick_writes_apart_from_the_full_results() {
    let d = fresh("quick");
    let o = exp(&d, &["--quick"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("3 runs"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(d.join("smoke/quick/results.md").is_file());
    assert!(!d.join("smoke/results.md").exists());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn list_and_bad_input() {
    let o = Command::new(BIN).arg("--list").output().unwrap();
    assert!(o.status.success());
    let names = String::from_utf8_lossy(&o.stdout).to_string();
    for n in ["smoke", "sparsity"] {
        assert!(
            names.lines().any(|l| l == n),
            "{n} missing from --list: {names}"
        );
    }
    let d = fresh("bad");
    let f = d.join("smoke.toml").display().to_string();
    // Declared hypotheses that name no measure or no configuration.
    let smoke = std::fs::read_to_string(d.join("smoke.toml")).unwrap();
    let bad_measure = d.join("bad-measure.toml");
    std::fs::write(
        &bad_measure,
        smoke.replace("measure = \"weights_exact_zero\"", "measure = \"sparsity\""),
    )
    .unwrap();
    let bad_label = d.join("bad-label.toml");
    std::fs::write(
        &bad_label,
        smoke.replace(
            "comparison = [\"Adam+L1 prox\", \"Adam\"]",
            "comparison = [\"Lion\", \"Adam\"]",
        ),
    )
    .unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--exp".into(), bad_measure.display().to_string()],
            "hypothesis `C3b-smoke-prox-zeros`: `measure` = \"sparsity\" is not a measure".into(),
        ),
        (
            vec!["--exp".into(), bad_label.display().to_string()],
            "hypothesis `C3b-smoke-prox-zeros`: `comparison` names \"Lion\"".into(),
        ),
        (
            vec!["--exp".into(), "nosuchstudy".into()],
            "shipped studies".into(),
        ),
        (
            vec!["--exp".into(), f.clone(), "--set".into(), "epocs=1".into()],
            "epocs".into(),
        ),
        (
            vec![
                "--exp".into(),
                f.clone(),
                "--set".into(),
                "epochs=many".into(),
            ],
            "epochs".into(),
        ),
        (
            vec![
                "--exp".into(),
                f.clone(),
                "--set".into(),
                "optimizers.0.lr=-1".into(),
            ],
            "`lr`".into(),
        ),
        (
            vec!["--exp".into(), f.clone(), "--shard".into(), "2/2".into()],
            "--shard".into(),
        ),
        (
            vec!["--exp".into(), f.clone(), "--jobs".into(), "0".into()],
            "--jobs".into(),
        ),
        (
            vec!["--exp".into(), f.clone(), "--jobs".into(), "many".into()],
            "or auto".into(),
        ),
        (
            vec!["report".into(), d.display().to_string()],
            "runs/".into(),
        ),
    ];
    for (args, needle) in cases {
        let o = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&needle), "{args:?}: {err}");
        if args.iter().any(|a| a == "--set") {
            assert!(err.contains(&f), "the error names the file: {err}");
        }
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// `--jobs 2` trains two runs at once, one thread each, and writes the same
/// tables and plots as one run at a time on all cores (`--jobs 1`) and as
/// the default (`auto`).
#[test]
fn parallel_jobs_give_the_same_outputs() {
    let one = fresh_with("jobs1", 40);
    exp(&one, &["--jobs", "1"]);
    let auto = fresh_with("jobsauto", 40);
    exp(&auto, &[]);
    assert_eq!(outputs(&auto), outputs(&one));
    let two = fresh_with("jobs2", 40);
    let o = exp(&two, &["--jobs", "2"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("6 done"));
    assert_eq!(outputs(&two), outputs(&one));
    for d in [one, auto, two] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The CPU features recorded in the committed smoke runs, and this machine's
/// (from a fresh run): the reference is bit-identical only on the same kind
/// of CPU.
fn cpu_features(record: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    v["provenance"]["cpu_features"].clone()
}

/// The README's main command, as a new user runs it: `--exp smoke` from a
/// folder that has no experiments/ of its own uses the shipped study,
/// trains every run into results/smoke/, prints the reproduction verdict,
/// and leaves the committed reference untouched; a `--set` run goes to a
/// folder of its own, named by the overrides, and is not compared.
#[test]
fn main_command_trains_compares_and_leaves_the_reference_alone() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/smoke");
    let before = tree(&reference);
    let cwd = fresh("main-command");
    let o = Command::new(BIN)
        .args(["--exp", "smoke", "--jobs", "1"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("6 runs: 0 skipped"), "{out}");
    let results = cwd.join("results/smoke");
    let records: Vec<PathBuf> = std::fs::read_dir(results.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), 6, "new run files appear");
    assert!(out.contains("reproduction: "), "{out}");
    let committed = std::fs::read_dir(reference.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    if cpu_features(&committed) == cpu_features(&records[0]) {
        assert!(
            out.contains("reproduction: identical to the reference"),
            "same CPU features as the reference, so the tables must be byte-identical: {out}"
        );
    } else {
        eprintln!("NOTE: this CPU's features differ from the reference's; identity not asserted");
    }
    // Overrides: their own folder, listed in its study.json; no comparison.
    let o = Command::new(BIN)
        .args(["--exp", "smoke", "--set", "epochs=1", "--jobs", "1"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("6 runs: 0 skipped"), "{out}");
    assert!(out.contains("no committed reference"), "{out}");
    let set_dirs: Vec<PathBuf> = std::fs::read_dir(&results)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("set-epochs-1-")
        })
        .collect();
    assert_eq!(set_dirs.len(), 1, "one folder for the overrides");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(set_dirs[0].join("study.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["set"], serde_json::json!(["epochs=1"]));
    let set_name = set_dirs[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        out.contains(&set_name),
        "the output names the folder: {out}"
    );
    // The plain folder's tables were not touched by the --set run.
    assert_eq!(
        std::fs::read_dir(results.join("runs")).unwrap().count(),
        12,
        "6 records and 6 checkpoints"
    );
    assert_eq!(
        tree(&reference),
        before,
        "the committed reference is untouched"
    );
    std::fs::remove_dir_all(cwd).unwrap();
}

/// Each run record has the provenance keys, and a checkpoint beside it that
/// `measure` reads, with torch's names and the config in its metadata; the
/// tidy metrics have one row per run and evaluation; `report --remeasure`
/// recomputes the weight measures from the checkpoints.
#[test]
fn runs_keep_provenance_and_checkpoints_and_report_remeasures() {
    let d = fresh("provenance");
    exp(&d, &[]);
    let records = run_files(&d);
    assert_eq!(records.len(), 6);
    let mut evaluations = 0;
    for r in &records {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
        let p = &v["provenance"];
        for key in [
            "git_commit",
            "git_dirty",
            "rustc",
            "candle",
            "cpu",
            "cpu_features",
            "threads",
            "device",
            "overrides",
            "data_sha256",
        ] {
            assert!(p.get(key).is_some(), "{}: no provenance.{key}", r.display());
        }
        assert!(p["rustc"].as_str().unwrap().starts_with("rustc "));
        assert_eq!(p["data_sha256"].as_str().unwrap().len(), 64);
        assert!(p["threads"].as_u64().unwrap() >= 1);
        let text = std::fs::read_to_string(r).unwrap();
        assert!(
            !text.contains("/tmp/"),
            "no absolute path in {}",
            r.display()
        );
        evaluations += v["history"].as_array().unwrap().len();
        // The checkpoint.
        let ckpt = r.with_extension("safetensors");
        assert_eq!(
            v["checkpoint"].as_str().unwrap(),
            ckpt.file_name().unwrap().to_str().unwrap()
        );
        let bytes = std::fs::read(&ckpt).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(header["__metadata__"]["config"].as_str().unwrap()).unwrap();
        assert_eq!(config, v["config"]);
        for name in ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"] {
            assert!(header.get(name).is_some(), "no {name} in the checkpoint");
        }
        let o = Command::new(BIN)
            .args(["measure", "--json"])
            .arg(&ckpt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(m["total"]["numel"], v["params"]);
        assert_eq!(
            m["total"]["gini"], v["final"]["measures"]["total"]["gini"],
            "measure on the checkpoint equals the run's own final measure"
        );
    }
    let metrics = std::fs::read_to_string(d.join("smoke/metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + evaluations);
    assert!(metrics.starts_with("task,optimizer,seed,status,step,"));
    // Spoil one record's measures; --remeasure restores them from the checkpoint.
    let tables = outputs(&d);
    let original = std::fs::read_to_string(&records[0]).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["final"]["measures"]["weights"]["gini"] = serde_json::json!(0.5);
    v["final"]["measures"]["total"]["l1"] = serde_json::json!(1.0);
    std::fs::write(
        &records[0],
        serde_json::to_string_pretty(&v).unwrap() + "\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .arg("report")
        .arg(d.join("smoke"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_ne!(outputs(&d), tables, "the spoiled record changes the tables");
    let o = Command::new(BIN)
        .args(["report", "--remeasure"])
        .arg(d.join("smoke"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("of 6 runs"));
    assert_eq!(std::fs::read_to_string(&records[0]).unwrap(), original);
    assert_eq!(outputs(&d), tables);
    std::fs::remove_dir_all(d).unwrap();
}

/// A folder whose runs of one row differ in a setting is refused, naming
/// the setting; a foreign JSON in runs/ is skipped with a warning; a
/// `report --compare` names the cells that differ.
#[test]
fn report_refuses_mixed_rows_and_skips_foreign_files() {
    let d = fresh("mixed");
    exp(&d, &[]);
    let tables = outputs(&d);
    std::fs::write(d.join("smoke/runs/notes.json"), "{\"hello\": 1}\n").unwrap();
    let o = Command::new(BIN)
        .arg("report")
        .arg(d.join("smoke"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("notes.json"));
    assert_eq!(outputs(&d), tables);
    // A second 3-epoch folder compared with a 2-epoch one.
    let e = fresh_with("mixed-2", 2);
    exp(&e, &[]);
    let o = Command::new(BIN)
        .arg("report")
        .arg(e.join("smoke"))
        .arg("--compare")
        .arg(d.join("smoke"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(text.contains("cells differ from the reference"), "{text}");
    assert!(text.contains("train_loss_mean"), "{text}");
    // Mix one 2-epoch run into the 3-epoch folder: the study's grid does not
    // name it, so it is left out with a warning and the tables stand.
    let two_epoch = run_files(&e)[0].clone();
    std::fs::copy(
        &two_epoch,
        d.join("smoke/runs").join(format!(
            "x{}",
            two_epoch.file_name().unwrap().to_string_lossy()
        )),
    )
    .unwrap();
    let o = Command::new(BIN)
        .arg("report")
        .arg(d.join("smoke"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("left out 1 run file(s)"), "{err}");
    assert_eq!(outputs(&d), tables);
    // Without the grid (no study.json) the row mixes configurations: refused.
    std::fs::remove_file(d.join("smoke/study.json")).unwrap();
    let o = Command::new(BIN)
        .arg("report")
        .arg(d.join("smoke"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("mixes configurations") && err.contains("`epochs`"),
        "{err}"
    );
    for dir in [d, e] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Two processes on one folder, the second started once the first has
/// finished a run, train each run once between them (a claim per run), and
/// the tables equal a single process's; temporary files left by a killed
/// process are removed at the next start.
#[test]
fn two_processes_share_a_folder() {
    // Long enough (about 0.8 s a run on a 2-core AMD EPYC) that the first
    // process still has runs to claim when the second starts. (Started a
    // fixed second apart, the first could finish all six runs first: 150
    // epochs took 1.2 s in all.)
    let single = fresh_with("single", 600);
    exp(&single, &[]);
    let d = fresh_with("shared", 600);
    std::fs::create_dir_all(d.join("smoke/runs")).unwrap();
    // A leftover of a killed process (no process has this pid).
    let stale = d.join("smoke/.tmp.4000000.results.md");
    std::fs::write(&stale, "half").unwrap();
    let first = exp_command(&d, &["--jobs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_files(&d).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = exp_command(&d, &["--jobs", "1"]).output().unwrap();
    let first = first.wait_with_output().unwrap();
    for o in [&first, &second] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // "6 runs: S skipped (already done), D done, ..."
    let trained = |o: &Output| -> usize {
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let at = text.find(" done, ").expect("a summary line");
        text[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (a, b) = (trained(&first), trained(&second));
    assert_eq!(a + b, 6, "each run trained once: {a} + {b}");
    assert!(a > 0 && b > 0, "both processes trained: {a} + {b}");
    assert!(!stale.exists(), "the stale temporary file is removed");
    assert_eq!(run_files(&d).len(), 6);
    // The last to finish wrote the complete tables.
    assert_eq!(outputs(&d), outputs(&single));
    std::fs::remove_dir_all(d).unwrap();
    std::fs::remove_dir_all(single).unwrap();
}

/// The report compares every configuration with the study's baseline,
/// paired by seed (a table in results.md, every test in paired.csv), and
/// compares optimizers run over lr grids at matched accuracy.
#[test]
fn report_has_paired_comparisons_and_matched_accuracy() {
    let d = fresh("paired");
    exp(&d, &[]);
    let md = std::fs::read_to_string(d.join("smoke/results.md")).unwrap();
    assert!(
        md.contains("### Exploratory: paired differences against SGD+momentum (same seeds)"),
        "{md}"
    );
    // The declared family (smoke.toml's one hypothesis), the only † there is.
    assert!(md.contains("## Confirmatory hypotheses"), "{md}");
    assert!(
        md.contains("| `C3b-smoke-prox-zeros` | C3(b) | teacher |"),
        "{md}"
    );
    let exploratory = &md[md.find("### Exploratory").unwrap()..];
    assert!(!exploratory.contains('†'), "{md}");
    let paired = std::fs::read_to_string(d.join("smoke/paired.csv")).unwrap();
    let rows: Vec<&str> = paired.lines().skip(1).collect();
    assert_eq!(rows.len(), 2 * 10, "two configurations x ten measures");
    for r in &rows {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!((f[2], f[4]), ("SGD+momentum", "2"), "{r}");
        // The interval holds the mean.
        if !f[6].is_empty() {
            let (m, lo, hi): (f64, f64, f64) = (
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
                f[7].parse().unwrap(),
            );
            assert!(lo <= m && m <= hi, "{r}");
            let p: f64 = f[8].parse().unwrap();
            assert!((0.0..=1.0).contains(&p), "{r}");
            // Exploratory: no adjusted p-value.
            assert_eq!(f[9], "", "{r}");
        }
    }
    // Learning-rate grids: the matched-accuracy section.
    let o = exp(
        &d,
        &[
            "--set",
            "optimizers.0.lrs=[0.02,0.05]",
            "--set",
            "optimizers.1.lrs=[0.001,0.003]",
            "--set",
            "optimizers.2.lrs=[0.001,0.003]",
            "--set",
            "baseline=\"SGD+momentum lr=0.05\"",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let folder = out
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .expect("the results line");
    let md = std::fs::read_to_string(folder).unwrap();
    assert!(md.contains("### At matched accuracy"), "{md}");
    assert!(md.contains("| Adam+L1 prox |"), "{md}");
    // A --set run is not the declared study: no confirmatory table.
    assert!(!md.contains("## Confirmatory hypotheses"), "{md}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A study's run file reads as a `StudyRecord` (its place in the study
/// included) and as the plain `RunRecord` that `train` writes, and writes
/// back to the same JSON: every committed run file of `smoke`, written when
/// `study` sat in the middle of the record, round-trips through the
/// flattened record without losing a field or a digit.
#[test]
fn committed_run_files_read_as_study_records_and_round_trip() {
    use sparsity_lab::experiment::record::StudyRecord;
    use sparsity_lab::train::RunRecord;
    let runs = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/smoke/runs");
    let mut n = 0;
    for e in std::fs::read_dir(&runs).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let rec: StudyRecord = serde_json::from_str(&text).unwrap();
        let place = rec.study.as_ref().expect("a study's run names its place");
        assert_eq!(place.study, "smoke", "{}", p.display());
        let plain: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(plain.seed, rec.seed);
        // Field by field, through serde_json's values (key order aside).
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        let written = serde_json::to_value(&rec).unwrap();
        assert_eq!(written, original, "{}", p.display());
        n += 1;
    }
    assert!(n >= 6, "only {n} run files in {}", runs.display());
}

/// Records name the commit of the sparsity-lab checkout the command runs in:
/// cargo reuses a build made from identical sources at another path (CI's
/// clone shares the target folder), so the path the binary was compiled at
/// may be gone or hold another commit.
#[test]
fn provenance_names_the_checkout_the_command_runs_in() {
    let git = |dir: &Path, args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
    };
    let d = fresh("checkout");
    if git(&d, &["init", "-q"])
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED provenance_names_the_checkout_the_command_runs_in: no git");
        return;
    }
    std::fs::write(d.join("Cargo.toml"), "[package]\nname = \"sparsity-lab\"\n").unwrap();
    git(&d, &["add", "."]).unwrap();
    assert!(
        git(&d, &["commit", "-q", "-m", "x"])
            .unwrap()
            .status
            .success()
    );
    let head = String::from_utf8(git(&d, &["rev-parse", "HEAD"]).unwrap().stdout).unwrap();
    let o = exp_command(&d, &["--quick"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs = d.join("smoke/quick/runs");
    let record = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a run record");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(v["provenance"]["git_commit"].as_str(), Some(head.trim()));
    // The results folder is not committed there, so the tree is dirty.
    assert_eq!(v["provenance"]["git_dirty"].as_bool(), Some(true));
    std::fs::remove_dir_all(d).unwrap();
}

/// A study file edited after a run (here a learning rate) retrains only the
/// changed configuration, and the report leaves the old records out (with a
/// warning) instead of refusing the row.
#[test]
fn an_edited_study_reports_its_current_grid() {
    let d = fresh("edited");
    let o = exp(&d, &["--quick"]);
    let before = std::fs::read_to_string(d.join("smoke/quick/results.csv")).unwrap();
    let text = std::fs::read_to_string(d.join("smoke.toml")).unwrap();
    let first_lr = text
        .lines()
        .find(|l| l.starts_with("lr = "))
        .expect("smoke.toml sets an lr")
        .to_string();
    std::fs::write(
        d.join("smoke.toml"),
        text.replacen(&first_lr, "lr = 0.0123", 1),
    )
    .unwrap();
    let o2 = exp(&d, &["--quick"]);
    let err = String::from_utf8_lossy(&o2.stderr);
    assert!(
        err.contains("left out 1 run file(s)"),
        "{err}\n{:?}",
        o.stderr.len()
    );
    let after = std::fs::read_to_string(d.join("smoke/quick/results.csv")).unwrap();
    assert_ne!(before, after);
    assert!(after.contains("lr=0.0123"), "{after}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A task that sets `pruning` gets the pruning scores in its tables and its
/// paired comparisons (the smoke study without it has neither: the test
/// above counts eight measures); a wrong key in it is a one-line error that
/// names the key.
#[test]
fn pruning_tasks_report_their_scores_and_bad_keys_are_named() {
    let d = fresh("pruning");
    let o = exp(
        &d,
        &[
            "--set",
            "pruning={ method = \"oneshot\", sparsity = 0.5, finetune_epochs = 1, state = \"reset\" }",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let folder = PathBuf::from(
        out.lines()
            .find_map(|l| l.strip_prefix("results: "))
            .expect("the results line"),
    );
    let md = std::fs::read_to_string(&folder).unwrap();
    assert!(md.contains("### Pruning scores"), "{md}");
    assert!(md.contains("| mask sparsity % |"), "{md}");
    let paired = std::fs::read_to_string(folder.with_file_name("paired.csv")).unwrap();
    for m in ["prune_auc", "prune_max_sparsity_1pt"] {
        assert_eq!(
            paired
                .lines()
                .filter(|l| l.split(',').nth(3) == Some(m))
                .count(),
            2,
            "{paired}"
        );
    }
    let csv = std::fs::read_to_string(folder.with_file_name("results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("mask_sparsity_mean"));
    let plain = std::fs::read_to_string(d.join("smoke.toml")).unwrap();
    assert!(!plain.contains("pruning"));

    let o = exp_command(
        &d,
        &["--set", "pruning={ method = \"oneshot\", sparsty = 0.5 }"],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sparsty") && err.trim().lines().count() == 1,
        "{err}"
    );
    let o = exp_command(
        &d,
        &["--set", "pruning={ method = \"none\", criterion = \"wv\" }"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("criterion"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A Transformer study's report groups the weight matrices by role
/// (attention, MLP, embedding, head): each group's |w| < 1e-3 fraction is
/// the size-weighted mean of its matrices' fractions in the run files, and
/// each configuration is paired against the baseline.
#[test]
fn transformer_report_has_weights_by_role() {
    let d = std::env::temp_dir().join(format!("sparsity-lab-study-{}-roles", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let study = r#"
name = "roles"
description = "tiny Transformer"
seeds = [0, 1]
baseline = "SGD"
[[tasks]]
label = "modadd"
model = { name = "transformer", layers = 1, d_model = 8, heads = 2, context = 4, mlp_ratio = 2 }
data = { name = "modadd", modulus = 7, train_frac = 0.5, seed = 0 }
steps = 3
batch_size = 8
prune_fracs = [0.5]
[[optimizers]]
label = "SGD"
name = "sgd"
lr = 0.1
[[optimizers]]
label = "Adam"
name = "adam"
lr = 0.01
"#;
    std::fs::write(d.join("roles.toml"), study).unwrap();
    let o = Command::new(BIN)
        .arg("--exp")
        .arg(d.join("roles.toml"))
        .arg("--out")
        .arg(d.join("roles"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(d.join("roles/results.md")).unwrap();
    assert!(md.contains("### Weights by role"), "{md}");
    assert!(md.contains("Paired by seed against SGD"), "{md}");
    // Adam's attention |w| < 1e-3 %, mean over seeds, from the run files.
    let mut fracs = vec![];
    for e in std::fs::read_dir(d.join("roles/runs")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("modadd--adam--") && name.ends_with(".json")) {
            continue;
        }
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let (mut num, mut den) = (0.0, 0.0);
        for (k, m) in r["final"]["measures"]["tensors"].as_object().unwrap() {
            if k.ends_with(".attn.qkv.weight") || k.ends_with(".attn.proj.weight") {
                let n = m["numel"].as_f64().unwrap();
                num += n * m["near_zero_frac"]["1e-3"].as_f64().unwrap();
                den += n;
            }
        }
        assert_eq!(den, (8 * 24 + 8 * 8) as f64);
        fracs.push(num / den);
    }
    assert_eq!(fracs.len(), 2);
    let mean = 100.0 * (fracs[0] + fracs[1]) / 2.0;
    let table = &md[md.find("### Weights by role").unwrap()..];
    let row = table
        .lines()
        .find(|l| l.starts_with("| Adam |"))
        .expect("Adam's row");
    let cells: Vec<&str> = row.split(" | ").collect();
    // optimizer, test loss, then attention's |w| < 1e-3 %.
    assert!(
        cells[2].starts_with(&format!("{mean:.2} ± ")),
        "{row} against {mean:.2}"
    );
    let paired = table
        .lines()
        .filter(|l| l.starts_with("| Adam |"))
        .nth(1)
        .expect("Adam's paired row");
    assert!(paired.contains('['), "a 95 % interval: {paired}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A study's `[report]` options leave metrics.csv and the magnitude plots
/// out (neither written nor linked, and a stale copy removed) while every
/// other output stays the same bytes; an unknown option is named.
#[test]
fn report_options_leave_out_metrics_and_magnitude_plots() {
    let d = fresh("report-options");
    exp(&d, &[]);
    let base = d.join("smoke");
    let magnitudes = base.join("plots/teacher-magnitudes.svg");
    assert!(base.join("metrics.csv").is_file());
    assert!(magnitudes.is_file());
    let md = std::fs::read_to_string(base.join("results.md")).unwrap();
    assert!(md.contains("(plots/teacher-magnitudes.svg)"), "{md}");
    let before = outputs(&d);

    let toml = d.join("smoke.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let off = format!("{text}\n[report]\nmagnitude_plots = false\nmetrics_csv = false\n");
    std::fs::write(&toml, &off).unwrap();
    let o = exp(&d, &[]);
    // Nothing retrains: the options are the report's, not the runs'.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(log.contains("6 already done, 0 to run"), "{log}");
    assert!(!base.join("metrics.csv").exists());
    assert!(!magnitudes.exists());
    let md = std::fs::read_to_string(base.join("results.md")).unwrap();
    assert!(!md.contains("magnitudes"), "{md}");
    // `report` alone reads the options from the folder's manifest.
    std::fs::write(base.join("metrics.csv"), "stale").unwrap();
    let r = Command::new(BIN).arg("report").arg(&base).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!base.join("metrics.csv").exists());
    // The rest is what it was, but for the one line that linked the plot.
    let after = outputs_without(&d, &["metrics.csv"]);
    let expected: Vec<(String, Vec<u8>)> = before
        .into_iter()
        .filter(|(p, _)| p != "metrics.csv" && p != "plots/teacher-magnitudes.svg")
        .map(|(p, b)| {
            if p == "results.md" {
                let md = String::from_utf8(b).unwrap();
                let md = md.replace("![weight magnitudes](plots/teacher-magnitudes.svg)\n", "");
                (p, md.into_bytes())
            } else {
                (p, b)
            }
        })
        .collect();
    assert_eq!(after, expected);

    std::fs::write(&toml, text + "\n[report]\nmagnitudes = false\n").unwrap();
    let o = exp_command(&d, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("magnitudes"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}
