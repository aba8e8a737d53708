//! Studies end to end: the `smoke` study run twice gives byte-identical
//! tables; killed half-way and restarted, it redoes only unfinished runs and
//! ends with the same tables; shards merge; errors are one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sparsity-lab");
const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/smoke.toml");
/// Longer runs than the shipped smoke study, so that a kill lands between runs.
const LONGER: [&str; 2] = ["--set", "epochs=40"];

fn fresh(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sparsity-lab-study-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(SMOKE, d.join("smoke.toml")).unwrap();
    d
}

fn exp(dir: &Path, extra: &[&str]) -> Output {
    let o = Command::new(BIN)
        .arg("--exp")
        .arg(dir.join("smoke.toml"))
        .args(extra)
        .output()
        .unwrap();
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
    let base = dir.join("smoke");
    let mut files = vec![base.join("results.md"), base.join("results.csv")];
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
/// (wall time, the commit).
fn measured(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("wall_seconds");
    v["study"].as_object_mut().unwrap().remove("git_commit");
    v
}

#[test]
fn smoke_twice_is_identical_and_a_killed_sweep_resumes() {
    // Uninterrupted, twice.
    let a = fresh("a");
    let first = exp(&a, &LONGER);
    assert!(String::from_utf8_lossy(&first.stdout).contains("6 runs: 0 skipped"));
    let out_a = outputs(&a);
    assert_eq!(out_a.len(), 5, "results.md, results.csv and three plots");
    let again = exp(&a, &LONGER);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("6 runs: 6 skipped"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    // Rerun from scratch in a second folder: byte-identical tables and plots.
    let b = fresh("b");
    exp(&b, &LONGER);
    assert_eq!(
        outputs(&b),
        out_a,
        "a study run twice must give byte-identical outputs"
    );

    // Killed after the first run file appears, then restarted.
    let c = fresh("c");
    let mut child = Command::new(BIN)
        .arg("--exp")
        .arg(c.join("smoke.toml"))
        .args(LONGER)
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
    let resumed = exp(&c, &LONGER);
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
    let cases: Vec<(Vec<String>, String)> = vec![
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
    let one = fresh("jobs1");
    exp(&one, &["--set", "epochs=40", "--jobs", "1"]);
    let auto = fresh("jobsauto");
    exp(&auto, &LONGER);
    assert_eq!(outputs(&auto), outputs(&one));
    let two = fresh("jobs2");
    let o = exp(&two, &["--set", "epochs=40", "--jobs", "2"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("6 done"));
    assert_eq!(outputs(&two), outputs(&one));
    for d in [one, auto, two] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
