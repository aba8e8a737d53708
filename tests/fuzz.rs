//! No input makes the binary panic: random study files, `--set` values and
//! command-line sizes, each run through the real binary. Every run must end
//! with status 0, 1 or 2 (never a panic's 101 or a signal), and a failure
//! must say why in one short line that starts with `error:`.
//!
//! Inputs are tiny or refused before training, so each case takes
//! milliseconds to a fraction of a second (320 cases: about 6 s here).
//! PROPTEST_CASES overrides the case counts below; FUZZ_VERBOSE=1 prints
//! each command, its status and its message (with --nocapture).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use sparsity_lab::optim::OptimizerKind;

fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "sparsity-lab-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary and checks the exit contract; returns the exit code.
fn check(args: &[String], dir: &Path) -> Result<i32, TestCaseError> {
    let o = Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.join("no-cache"))
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        eprintln!("{code:?} {args:?} {}", err.trim_end());
    }
    prop_assert!(
        matches!(code, Some(0..=2)),
        "{args:?}: status {:?}, stderr: {err}",
        o.status
    );
    if code != Some(0) {
        prop_assert_eq!(err.lines().count(), 1, "{:?}: {}", args, err);
        prop_assert!(err.starts_with("error: "), "{args:?}: {err}");
        prop_assert!(err.len() < 700, "{args:?}: {} bytes: {err}", err.len());
        prop_assert!(!err.contains("internal error"), "{args:?}: {err}");
    }
    Ok(code.unwrap())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        // Shrinking reruns the binary many times; the first failure says enough.
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers at and around every edge, small counts most often: zero, one,
/// huge, the integer limits, negative, fractional, non-finite, and things
/// that are not numbers.
fn number() -> impl Strategy<Value = String> {
    let edge = prop::sample::select(vec![
        "10000000000",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "-0",
        "0.5",
        "1e-300",
        "1e10",
        "1e400",
        "inf",
        "nan",
        "true",
        "\"x\"",
        "[0, 0]",
        "[]",
        "",
    ]);
    prop_oneof![
        6 => (0u64..8).prop_map(|v| v.to_string()),
        3 => edge.prop_map(String::from),
        1 => "[a-z=.,\\[\\] ]{0,6}",
    ]
}

/// Hyper-parameters every optimizer takes, then the rest and two unknown keys.
const COMMON_KEYS: [&str; 7] = [
    "lr",
    "eps",
    "weight_decay",
    "decoupled_weight_decay",
    "l1",
    "l1_prox",
    "exempt_1d",
];

fn opt_key() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        3 => prop::sample::select(COMMON_KEYS.to_vec()),
        1 => prop::sample::select(OPT_KEYS.to_vec()),
    ]
}

const OPT_KEYS: [&str; 21] = [
    "lr",
    "momentum",
    "dampening",
    "nesterov",
    "beta1",
    "beta2",
    "eps",
    "amsgrad",
    "weight_decay",
    "decoupled_weight_decay",
    "l1",
    "l1_prox",
    "exempt_1d",
    "alpha",
    "centered",
    "rho",
    "lr_decay",
    "initial_accumulator_value",
    "momentum_decay",
    "foo",
    "",
];

/// Not an optimizer (the error path).
const UNKNOWN_OPTIMIZER: &str = "lamb";

proptest! {
    #![proptest_config(config(128))]

    /// `trace` with random optimizers, `--set` pairs and step counts.
    #[test]
    fn trace_never_panics(
        opt in prop_oneof![
            9 => prop::sample::select(OptimizerKind::names()),
            1 => Just(UNKNOWN_OPTIMIZER),
        ],
        problem in prop::sample::select(vec!["quadratic", "rosenbrock"]),
        steps in prop_oneof![0usize..30, Just(1000)],
        dtype in prop::sample::select(vec!["f32", "f64"]),
        sets in prop::collection::vec((opt_key(), number()), 0..4),
    ) {
        let dir = scratch();
        let mut args: Vec<String> = ["trace", "--optimizer", opt, "--problem", problem,
            "--dtype", dtype, "--steps"].iter().map(|s| s.to_string()).collect();
        args.push(steps.to_string());
        for (k, v) in sets {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        check(&args, &dir)?;
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A size flag and the values it is tried with.
fn size() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (0usize..10).prop_map(|v| v.to_string()),
        1 => Just("10000000000".to_string()),
        1 => Just("18446744073709551615".to_string()),
    ]
}

proptest! {
    #![proptest_config(config(96))]

    /// `train` with random sizes on tiny tasks: the transformer on modular
    /// addition and on a 1,000-character text, the MLP on the teacher.
    /// At most two steps train.
    #[test]
    fn train_never_panics(
        kind in 0usize..3,
        divisible in any::<bool>(),
        d_model in size(),
        heads in size(),
        layers in size(),
        context in size(),
        hidden in prop::collection::vec(size(), 0..3),
        batch in size(),
        steps in prop_oneof![1 => Just("0"), 4 => Just("1"), 4 => Just("2")],
        train_limit in prop::option::weighted(0.1, size()),
        eval_every in prop::option::weighted(0.3, size()),
        sets in prop::collection::vec((opt_key(), number()), 0..2),
    ) {
        let dir = scratch();
        let text = dir.join("small.txt");
        std::fs::write(&text, "abcdefghi\n".repeat(100)).unwrap();
        let mut args: Vec<String> = vec!["train".into()];
        let mut push = |k: &str, v: &str| {
            args.push(k.into());
            args.push(v.into());
        };
        match kind {
            0 | 1 => {
                push("--model", "transformer");
                if kind == 0 {
                    push("--data", "modadd");
                } else {
                    push("--data", "text");
                    push("--data-dir", text.to_str().unwrap());
                }
                // Half the time a width that the heads divide, so that
                // more cases get as far as training.
                let d_model = match (divisible, heads.parse::<usize>(), d_model.parse::<usize>()) {
                    (true, Ok(h), Ok(d)) if h > 0 && d < 10 => (h * d.max(1)).to_string(),
                    _ => d_model,
                };
                push("--d-model", &d_model);
                push("--heads", &heads);
                push("--layers", &layers);
                push("--context", &context);
            }
            _ => {
                push("--model", "mlp");
                push("--data", "teacher");
                if !hidden.is_empty() {
                    push("--hidden", &hidden.join(","));
                }
            }
        }
        push("--batch-size", &batch);
        push("--steps", steps);
        if let Some(n) = &train_limit {
            push("--train-limit", n);
        }
        if let Some(n) = &eval_every {
            push("--eval-every", n);
        }
        for (k, v) in &sets {
            push("--set", &format!("{k}={v}"));
        }
        push("--out", dir.join("out").to_str().unwrap());
        check(&args, &dir)?;
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// One entry of a study file to replace, and the keys it may take.
const STUDY_KEYS: [&str; 22] = [
    "seeds",
    "tasks.0.label",
    "tasks.0.epochs",
    "tasks.0.steps",
    "tasks.0.batch_size",
    "tasks.0.eval_every",
    "tasks.0.eval_windows",
    "tasks.0.prune_fracs",
    "tasks.0.model.hidden",
    "tasks.0.data.train_size",
    "tasks.0.data.test_size",
    "tasks.0.data.inputs",
    "tasks.0.data.hidden",
    "tasks.0.data.classes",
    "tasks.0.data.density",
    "tasks.0.schedule",
    "optimizers.0.label",
    "optimizers.0.lr",
    "optimizers.1.label",
    "optimizers.1.lrs",
    "optimizers.0.name",
    "tasks.0.frobnicate",
];

/// A small valid study: two optimizers x one seed, milliseconds of training.
const STUDY: &str = r#"
name = "fuzz"
seeds = [0]
[[tasks]]
label = "teacher"
steps = 2
batch_size = 8
prune_fracs = [0.5]
model = { name = "mlp", hidden = [4] }
data = { name = "teacher", inputs = 4, hidden = 4, classes = 3, train_size = 16, test_size = 8 }
[[optimizers]]
label = "SGD"
name = "sgd"
lr = 0.1
[[optimizers]]
label = "Adam"
name = "adam"
"#;

/// The study text with the dotted `key` (list entries by number) set to
/// `value`: TOML where it parses, else a string.
fn edit(text: &str, key: &str, value: &str) -> String {
    let mut doc: toml::Table = toml::from_str(text).unwrap();
    let value = toml::from_str::<toml::Table>(&format!("x = {value}"))
        .ok()
        .and_then(|mut t| t.remove("x"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    set(&mut doc, &parts, value);
    toml::to_string(&doc).unwrap()
}

fn set(table: &mut toml::Table, parts: &[&str], value: toml::Value) {
    let (first, rest) = parts.split_first().unwrap();
    if rest.is_empty() {
        table.insert(first.to_string(), value);
        return;
    }
    let entry = table
        .entry(first.to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()));
    match entry {
        toml::Value::Array(items) => {
            let i: usize = rest[0].parse().unwrap();
            if let Some(toml::Value::Table(t)) = items.get_mut(i) {
                set(t, &rest[1..], value);
            }
        }
        toml::Value::Table(t) => set(t, rest, value),
        // An earlier edit replaced the table with a plain value: keep it.
        _ => {}
    }
}

/// Steps and epochs stay small: a study of 10^10 valid steps is not a
/// bug, only slow.
fn few_steps(key: &str, value: &str) -> String {
    let counts = key.ends_with("steps") || key.ends_with("epochs");
    match value.parse::<u64>() {
        Ok(n) if counts && n > 3 => "3".into(),
        _ => value.to_string(),
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Study files with one or two settings replaced by random values, run
    /// with `--exp`, some with a `--set` override on top.
    #[test]
    fn studies_never_panic(
        edits in prop::collection::vec(
            (prop::sample::select(STUDY_KEYS.to_vec()), number()),
            1..3,
        ),
        set in prop::option::of((prop::sample::select(STUDY_KEYS.to_vec()), number())),
    ) {
        let dir = scratch();
        let mut text = STUDY.to_string();
        for (k, v) in &edits {
            text = edit(&text, k, &few_steps(k, v));
        }
        let file = dir.join("fuzz.toml");
        std::fs::write(&file, &text).unwrap();
        let mut args = vec!["--exp".to_string(), file.to_str().unwrap().to_string()];
        if let Some((k, v)) = &set {
            args.push("--set".into());
            args.push(format!("{k}={}", few_steps(k, v)));
        }
        check(&args, &dir)?;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
