//! Tests of the parent module (kept apart so the module file holds only its code).

use super::*;

const STUDY: &str = r#"
name = "t"
seeds = [0, 1]
[[tasks]]
label = "teacher"
epochs = 2
model = { name = "mlp", hidden = [8] }
data = { name = "teacher", train_size = 100, test_size = 50 }
[[optimizers]]
label = "SGD"
name = "sgd"
lr = 0.1
[[optimizers]]
label = "Adam"
name = "adam"
lr = 0.01
[quick]
epochs = 1
seeds = [0]
"#;

/// A study file of its own per call: tests run in parallel.
fn write(text: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "sparsity-lab-study-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn grid_is_tasks_by_optimizers_by_seeds_in_file_order() {
    let s = Study::load(&write(STUDY), false, &[]).unwrap();
    let g = s.grid();
    assert_eq!(g.len(), 4);
    assert_eq!((g[0].label.as_str(), g[0].seed), ("SGD", 0));
    assert_eq!((g[3].label.as_str(), g[3].seed), ("Adam", 1));
    assert_eq!(g[0].config.optimizer.get("momentum"), 0.0);
    // Names differ with the config.
    assert_ne!(g[0].file_name(), g[1].file_name());
    assert!(g[0].file_name().starts_with("teacher--sgd--s0--"));
}

#[test]
fn quick_and_set_override() {
    let p = write(STUDY);
    let q = Study::load(&p, true, &[]).unwrap();
    assert_eq!((q.seeds.clone(), q.tasks[0].epochs), (vec![0], Some(1)));
    let s = Study::load(
        &p,
        false,
        &[
            ("epochs".into(), "3".into()),
            ("optimizers.1.lr".into(), "0.5".into()),
        ],
    )
    .unwrap();
    assert_eq!(s.tasks[0].epochs, Some(3));
    assert_eq!(s.optimizers[1].config.lr(), 0.5);
    let s = Study::load(&p, false, &[("data.train_size".into(), "77".into())]).unwrap();
    assert!(format!("{:?}", s.tasks[0].data).contains("train_size: 77"));
}

/// `track_gradients` is a task setting that reaches every run's config,
/// and off it leaves the run files' names as they were.
#[test]
fn track_gradients_is_copied_into_each_run() {
    let p = write(STUDY);
    let off = Study::load(&p, false, &[]).unwrap().grid();
    assert!(off.iter().all(|r| !r.config.track_gradients));
    let on = Study::load(&p, false, &[("track_gradients".into(), "true".into())])
        .unwrap()
        .grid();
    assert!(on.iter().all(|r| r.config.track_gradients));
    assert_ne!(on[0].file_name(), off[0].file_name());
    let mut back = on[0].config.clone();
    back.track_gradients = false;
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        serde_json::to_string(&off[0].config).unwrap()
    );
}

/// The checks refuse nothing that the shipped studies do.
#[test]
fn every_shipped_study_passes_the_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let names = list(&dir).unwrap();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let file = dir.join(format!("{name}.toml"));
        for quick in [false, true] {
            if let Err(e) = Study::load(&file, quick, &[]) {
                panic!("{name} (quick {quick}): {e:#}");
            }
        }
    }
}

#[test]
fn errors_name_the_file_and_the_key() {
    let p = write(STUDY);
    let f = p.display().to_string();
    for (k, v, needle) in [
        ("epocs", "1", "epocs"),
        ("epochs", "\"many\"", "epochs"),
        ("optimizers.0.lr", "-1", "`lr`"),
        ("optimizers.9.lr", "1", "out of range"),
        ("optimizers.0.rho", "0.5", "rho"),
    ] {
        let err = Study::load(&p, false, &[(k.into(), v.into())]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(crate::error::is_usage(&err), "{msg}");
        assert!(msg.contains(&f) && msg.contains(needle), "{k}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    // Problems found at load, before any run: each names the file and the cause.
    for (from, to, needle) in [
        ("seeds = [0, 1]", "seeds = [0, 0]", "lists 0 twice"),
        ("label = \"Adam\"", "label = \"sgd\"", "same run file name"),
        ("label = \"teacher\"", "label = \"\"", "empty `label`"),
        ("hidden = [8]", "hidden = [0]", "hidden widths must be > 0"),
        (
            "train_size = 100",
            "train_size = 100, inputs = 0",
            "`inputs`",
        ),
        ("test_size = 50", "test_size = 0", "`test_size`"),
        ("hidden = [8]", "hidden = [100000000]", "memory"),
    ] {
        assert!(STUDY.contains(from), "{from}");
        let p = write(&STUDY.replace(from, to));
        let err = Study::load(&p, false, &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(crate::error::is_usage(&err), "{msg}");
        assert!(msg.contains(&f) || msg.contains(&p.display().to_string()));
        assert!(msg.contains(needle), "{to}: {msg}");
        if needle == "`inputs`" {
            assert!(msg.contains("task `teacher`"), "{msg}");
        }
    }
    let long = "x".repeat(300);
    let p2 = write(&STUDY.replace("label = \"Adam\"", &format!("label = \"{long}\"")));
    let msg = format!("{:#}", Study::load(&p2, false, &[]).unwrap_err());
    assert!(
        msg.contains("shorten the labels") && msg.len() < 400,
        "{msg}"
    );
    let msg = format!(
        "{:#}",
        Study::load(&p, false, &[("baseline".into(), "\"Adamm\"".into())]).unwrap_err()
    );
    assert!(
        msg.contains("Adamm") && msg.contains("SGD, Adam") || msg.contains("Adam, SGD"),
        "{msg}"
    );
    let ok = Study::load(&p, false, &[("baseline".into(), "\"SGD\"".into())]).unwrap();
    assert_eq!(
        ok.baselines(),
        vec![("teacher".to_string(), "SGD".to_string())]
    );
    let bad = write(&STUDY.replace("epochs = 2", "epochs = 2\nbatchsize = 3"));
    let msg = format!("{:#}", Study::load(&bad, false, &[]).unwrap_err());
    assert!(msg.contains("batchsize") && msg.contains("line"), "{msg}");
}
