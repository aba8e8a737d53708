//! No input makes the binary panic: random study files, `--set` values and
//! command-line sizes, each run through the real binary. Every run must end
//! with status 0, 1 or 2 (never a panic's 101 or a signal), and a failure
//! must say why in one short line that starts with `error:`.
//!
//! Inputs are tiny or refused before training, so each case takes
//! milliseconds to a fraction of a second (320 cases: about 6 s here).
//! Every case runs under a timeout: a hang fails the test.
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
    // Under a timeout: a hang fails the case.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sparsity-lab"));
    cmd.args(args);
    let o = run_timed(cmd, dir);
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
        // A study's header line may come first (see `expect`).
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("study ")).collect();
        prop_assert_eq!(lines.len(), 1, "{:?}: {}", args, err);
        let err = lines[0];
        prop_assert!(err.starts_with("error: "), "{args:?}: {err}");
        prop_assert!(err.len() < 700, "{args:?}: {} bytes: {err}", err.len());
        prop_assert!(!err.contains("internal error"), "{args:?}: {err}");
        prop_assert!(!err.contains("panicked"), "{args:?}: {err}");
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

// ---------------------------------------------------------------------------
// Classes of bad input found by the second probe: each case is one command,
// run under a timeout (a hang fails the test), and must end with the given
// status (2: the user's mistake, 1: a failure), one line on stderr that
// names the flag, key or file and the value, and no panic or backtrace.

/// Seconds a case may take before it counts as a hang.
const TIMEOUT_S: u64 = 60;

/// Runs `cmd` with the fuzz environment, killing it after `TIMEOUT_S`.
fn run_timed(mut cmd: Command, dir: &Path) -> std::process::Output {
    use std::time::{Duration, Instant};
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.join("no-cache"))
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Read the pipes on threads so that a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = vec![];
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = vec![];
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(TIMEOUT_S) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: still running after {TIMEOUT_S} s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
}

/// The binary under `ulimit -v KB`, through sh.
fn bin_ulimit(kb: u64, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {kb} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args(args);
    c
}

/// Runs a case and checks the contract: `code`, one line on stderr that
/// contains every needle, no panic, no backtrace. Returns stdout.
fn expect(cmd: Command, dir: &Path, code: i32, needles: &[&str]) -> String {
    let shown = format!("{cmd:?}");
    let o = run_timed(cmd, dir);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(code),
        "{shown}: {:?}, stderr: {err}",
        o.status
    );
    if code != 0 {
        // One line, after a study's header line where the data had to be
        // loaded before the error could be found.
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("study ")).collect();
        assert_eq!(lines.len(), 1, "{shown}: {err}");
        let err = lines[0];
        assert!(err.starts_with("error: "), "{shown}: {err}");
        for n in needles {
            assert!(err.contains(n), "{shown}: `{n}` not in: {err}");
        }
    }
    for bad in ["panicked", "backtrace", "internal error", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{shown}: {err}");
    }
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn with_args(args: &[&str]) -> Command {
    let mut c = bin();
    c.args(args);
    c
}

/// Writes `text` as the study `s.toml` in `dir`, runs `--exp s.toml` with
/// `extra`, and checks that it is refused (exit 2, one line holding every
/// needle) before any run trains. Returns stdout.
fn expect_refused_study(dir: &Path, text: &str, extra: &[&str], needles: &[&str]) -> String {
    std::fs::write(dir.join("s.toml"), text).unwrap();
    let mut args = vec!["--exp", "s.toml"];
    args.extend(extra);
    let out = expect(with_args(&args), dir, 2, needles);
    let runs = dir.join("results/s/runs");
    assert!(
        !runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(),
        "{args:?}: a run trained"
    );
    out
}

/// A safetensors file from (name, dtype, shape, raw bytes).
fn safetensors(path: &Path, tensors: &[(&str, &str, &[usize], &[u8])]) {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, dtype, shape, raw) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape,
                "data_offsets": [data.len(), data.len() + raw.len()]}),
        );
        data.extend_from_slice(raw);
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Tensors in dtypes `measure` cannot read exactly are refused from the
/// header, naming the file, the tensor and the dtype (F8_E4M3 used to spin
/// forever, F4 to fail without naming the file).
#[test]
fn exotic_dtypes_are_refused_before_reading() {
    let dir = scratch();
    for (dtype, shape, raw) in [
        ("F8_E4M3", &[1usize][..], &[0x38u8][..]),
        ("F8_E4M3", &[4096], &[0x38; 4096]),
        ("F8_E5M2", &[1], &[0x3c]),
        ("F6_E2M3", &[4], &[0; 3]),
        ("F6_E3M2", &[4], &[0; 3]),
        ("F4", &[2], &[0x11]),
        ("F8_E8M0", &[1], &[0x7f]),
        ("C64", &[1], &[0; 8]),
    ] {
        let f = dir.join(format!("{dtype}.safetensors"));
        safetensors(
            &f,
            &[
                ("ok", "F32", &[1], &[0; 4]),
                ("odd.weight", dtype, shape, raw),
            ],
        );
        let name = format!("{dtype}.safetensors");
        expect(
            with_args(&["measure", &name]),
            &dir,
            2,
            &[&name, "odd.weight", dtype, "F16, BF16, F32 and F64"],
        );
    }
    // An unknown dtype is named too.
    safetensors(&dir.join("q.safetensors"), &[("w", "Q4_K", &[1], &[0])]);
    expect(
        with_args(&["measure", "q.safetensors"]),
        &dir,
        2,
        &["q.safetensors", "Q4_K"],
    );
    // Integer and boolean tensors beside the weights are skipped, not refused.
    let one = 1f32.to_le_bytes();
    safetensors(
        &dir.join("mask.safetensors"),
        &[
            ("mask", "BOOL", &[2], &[1, 0]),
            ("steps", "I64", &[1], &[0; 8]),
            ("w", "F32", &[1, 1], &one),
        ],
    );
    let out = expect(
        with_args(&["measure", "mask.safetensors", "--json"]),
        &dir,
        0,
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<_> = v["tensors"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(names, ["w"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A tensor with no elements has no Hoyer or Gini value (null), instead of
/// 1, "maximally sparse"; the other tensors are measured as usual.
#[test]
fn zero_sized_tensors_have_no_sparsity_value() {
    let dir = scratch();
    let vals: Vec<u8> = [1f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    safetensors(
        &dir.join("z.safetensors"),
        &[
            ("empty.weight", "F32", &[0, 3], &[]),
            ("w", "F32", &[2, 1], &vals),
        ],
    );
    let out = expect(
        with_args(&["measure", "z.safetensors", "--json"]),
        &dir,
        0,
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["tensors"]["empty.weight"];
    assert_eq!(e["numel"], 0);
    assert!(e["hoyer"].is_null() && e["gini"].is_null(), "{e}");
    assert_eq!(v["tensors"]["w"]["gini"], 0.5);
    safetensors(&dir.join("only.safetensors"), &[("w", "F32", &[0], &[])]);
    let out = expect(
        with_args(&["measure", "only.safetensors", "--json"]),
        &dir,
        0,
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["total"]["hoyer"].is_null(), "{v}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A key or flag given twice is refused, naming it: the last no longer
/// silently wins.
#[test]
fn repeated_flags_are_refused() {
    let dir = scratch();
    std::fs::write(dir.join("s.toml"), STUDY).unwrap();
    let trace = [
        "trace",
        "--optimizer",
        "sgd",
        "--problem",
        "quadratic",
        "--steps",
        "2",
    ];
    for args in [
        &[&trace[..], &["--set", "lr=0.1", "--set", "lr=0.2"]].concat(),
        &[&trace[..], &["--set", "lr=0.1", "--set", " lr = 0.1"]].concat(),
        &[
            "train", "--data", "teacher", "--steps", "1", "--set", "lr=1", "--set", "lr=2",
        ][..],
        &["--exp", "s.toml", "--set", "steps=1", "--set", "steps=2"][..],
    ] {
        expect(with_args(args), &dir, 2, &["--set", "given twice"]);
    }
    for (args, flag) in [
        ([&trace[..], &["--steps", "3"]].concat(), "--steps"),
        (vec!["train", "--epochs", "1", "--epochs", "2"], "--epochs"),
        (vec!["--exp", "s.toml", "--exp", "s.toml"], "--exp"),
        (
            vec!["--exp", "s.toml", "--jobs", "1", "--jobs", "2"],
            "--jobs",
        ),
    ] {
        expect(with_args(&args), &dir, 2, &[flag]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Under a process memory limit (`ulimit -v`, as on a cluster) an
/// allocation the process cannot have ends with one line and status 1,
/// not Rust's abort (`memory allocation of N bytes failed`, SIGABRT).
#[test]
fn memory_limits_give_a_clean_error() {
    let dir = scratch();
    // A 1 GB tensor (a sparse file) that `measure` must read into memory.
    let h = serde_json::to_vec(&serde_json::json!({"w": {"dtype": "F32",
        "shape": [250_000_000], "data_offsets": [0, 1_000_000_000]}}))
    .unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    let f = dir.join("big.safetensors");
    std::fs::write(&f, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(bytes.len() as u64 + 1_000_000_000)
        .unwrap();
    expect(
        bin_ulimit(600_000, &["measure", "big.safetensors"]),
        &dir,
        1,
        &["out of memory", "1000000", "ulimit -v"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Study settings that could only fail later, or silently do nothing, are
/// refused when the study is read, naming the key and the value.
#[test]
fn nonsensical_study_settings_are_refused() {
    let dir = scratch();
    let cases: Vec<(String, Vec<&str>, Vec<&str>)> = vec![
        (
            edit(STUDY, "optimizers.1.lrs", "[]"),
            vec![],
            vec!["`lrs` is empty", "Adam"],
        ),
        (
            edit(STUDY, "optimizers.1.lrs", "[0.1, 0.1]"),
            vec![],
            vec!["lrs", "0.1 twice"],
        ),
        (
            edit(STUDY, "optimizers.1.lrs", "[0.01, 0.0, -0.0]"),
            vec![],
            vec!["lrs", "twice"],
        ),
        (
            edit(STUDY, "tasks.0.prune_fracs", "[0.5, 0.5]"),
            vec![],
            vec!["prune_fracs", "0.5 twice"],
        ),
        (edit(STUDY, "name", "\"\""), vec![], vec!["`name` is empty"]),
        (
            edit(
                STUDY,
                "tasks.0.schedule",
                "{ name = \"warmup_cosine\", warmup_steps = 2, min_lr_frac = 0.1 }",
            ),
            vec![],
            vec!["warmup_steps = 2", "2 steps"],
        ),
        (
            edit(
                STUDY,
                "tasks.0.pruning",
                "{ method = \"imp\", rounds = 1, rate = 0.5, rewind_step = 5 }",
            ),
            vec![],
            vec!["rewind_step = 5", "2 steps"],
        ),
        (
            edit(
                &edit(
                    STUDY,
                    "tasks.0.model",
                    "{ name = \"cnn\", channels = [1, 1, 1, 1, 1, 1] }",
                ),
                "tasks.0.data",
                "{ name = \"mnist\" }",
            ),
            vec![],
            vec!["channels", "6 max-pools", "28 x 28", "at most 4"],
        ),
        (
            edit(
                &edit(
                    STUDY,
                    "tasks.0.model",
                    "{ name = \"cnn\", channels = [4, 4], pool_every = 0 }",
                ),
                "tasks.0.data",
                "{ name = \"mnist\" }",
            ),
            vec![],
            vec!["pool_every must be >= 1", "pool_every = 2"],
        ),
        (
            STUDY.to_string(),
            vec!["--quick"],
            vec!["--quick", "no [quick] table"],
        ),
        (
            STUDY.to_string(),
            vec!["--set", "quick.epochs=0"],
            vec!["quick.epochs=0", "changes nothing"],
        ),
        (
            format!("{STUDY}\n[quick]\nepocs = 1\n"),
            vec!["--quick"],
            vec!["[quick]", "epocs"],
        ),
        (STUDY.to_string(), vec!["--list"], vec!["--list", "--exp"]),
    ];
    for (text, extra, needles) in cases {
        let out = expect_refused_study(&dir, &text, &extra, &needles);
        assert!(out.is_empty(), "{extra:?}: {out}");
        assert!(!dir.join("results").exists(), "{extra:?}: a run started");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `train`'s settings that could only fail later or do nothing.
#[test]
fn nonsensical_train_settings_are_refused() {
    let dir = scratch();
    std::fs::write(dir.join("one.txt"), "a".repeat(2000)).unwrap();
    write_idx(&dir.join("idx"), 20);
    let teacher = ["train", "--data", "teacher", "--steps", "5", "--out", "o"];
    for (args, needles) in [
        (
            vec!["--warmup-steps", "10"],
            vec!["--warmup-steps", "warmup-cosine"],
        ),
        (
            vec!["--min-lr-frac", "0.5"],
            vec!["--min-lr-frac", "warmup-cosine"],
        ),
        (
            vec!["--schedule", "warmup-cosine"],
            vec!["warmup_steps = 100", "5 steps", "--warmup-steps"],
        ),
    ] {
        let mut all = teacher.to_vec();
        all.extend(args);
        expect(with_args(&all), &dir, 2, &needles);
    }
    expect(
        with_args(&[
            "train",
            "--model",
            "transformer",
            "--data",
            "text",
            "--data-dir",
            "one.txt",
            "--steps",
            "1",
            "--out",
            "o",
        ]),
        &dir,
        2,
        &["one.txt", "one distinct character"],
    );
    let mnist = [
        "train",
        "--data",
        "mnist",
        "--data-dir",
        "idx",
        "--steps",
        "1",
        "--out",
        "o",
        "--train-limit",
    ];
    expect(
        with_args(&[&mnist[..], &["21"]].concat()),
        &dir,
        2,
        &["train_limit = 21", "20 training examples"],
    );
    expect(with_args(&[&mnist[..], &["20"]].concat()), &dir, 0, &[]);
    expect(
        with_args(&[
            "train",
            "--model",
            "cnn",
            "--channels",
            "1,1,1,1,1",
            "--data",
            "mnist",
            "--data-dir",
            "idx",
            "--steps",
            "1",
        ]),
        &dir,
        2,
        &["5 max-pools", "at most 4"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Tiny MNIST-format files: `n` 28 x 28 images in each split.
fn write_idx(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = vec![];
    for v in [2051u32, n as u32, 28, 28] {
        images.extend(v.to_be_bytes());
    }
    images.extend((0..n * 784).map(|i| (i * 17 % 256) as u8));
    let mut labels = vec![];
    for v in [2049u32, n as u32] {
        labels.extend(v.to_be_bytes());
    }
    labels.extend((0..n).map(|i| (i % 10) as u8));
    for (stem, bytes) in [
        ("train-images-idx3-ubyte", &images),
        ("train-labels-idx1-ubyte", &labels),
        ("t10k-images-idx3-ubyte", &images),
        ("t10k-labels-idx1-ubyte", &labels),
    ] {
        std::fs::write(dir.join(stem), bytes).unwrap();
    }
}

/// Labels with control characters would break results.md's tables and the
/// SVG plots: refused, naming the label.
#[test]
fn labels_with_control_characters_are_refused() {
    let dir = scratch();
    for (key, value) in [
        ("tasks.0.label", "\"two\\nlines\""),
        ("tasks.0.label", "\"tab\\there\""),
        ("optimizers.0.label", "\"red\\u001b[31m\""),
        ("optimizers.1.label", "\"nul\\u0000\""),
        ("name", "\"bell\\u0007\""),
    ] {
        let text = edit(STUDY, key, value);
        expect_refused_study(&dir, &text, &[], &["s.toml", "control character"]);
        assert!(!dir.join("results").exists());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Messages that name the problem: the missing argument, a folder or FIFO
/// given as a study file.
#[test]
fn messages_name_what_is_wrong() {
    let dir = scratch();
    expect(
        with_args(&["trace", "--optimizer", "sgd", "--problem", "quadratic"]),
        &dir,
        2,
        &["required", "--steps"],
    );
    expect(
        with_args(&["--shard", "0/2"]),
        &dir,
        2,
        &["required", "--exp"],
    );
    std::fs::create_dir_all(dir.join("folder.toml")).unwrap();
    expect(
        with_args(&["--exp", "folder.toml"]),
        &dir,
        2,
        &["folder.toml", "is a folder"],
    );
    std::fs::create_dir_all(dir.join("plain")).unwrap();
    expect(
        with_args(&["--exp", "plain"]),
        &dir,
        2,
        &["plain", "is a folder"],
    );
    let fifo = dir.join("pipe.toml");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        expect(
            with_args(&["--exp", "pipe.toml"]),
            &dir,
            2,
            &["pipe.toml", "not a regular file"],
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A `train` run that diverges is recorded (run.json, status diverged) and
/// exits with status 1, as `trace` does (it used to warn and exit 0).
#[test]
fn a_diverged_train_exits_non_zero() {
    let dir = scratch();
    let args = [
        "train",
        "--data",
        "teacher",
        "--optimizer",
        "sgd",
        "--set",
        "lr=1e30",
        "--steps",
        "5",
        "--out",
        "dv",
    ];
    expect(with_args(&args), &dir, 1, &["diverged", "dv/run.json"]);
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dv/run.json")).unwrap()).unwrap();
    assert_eq!(rec["status"], "diverged");
    // A loss that turns NaN mid-run (Adam with eps = 0 on a one-wide
    // Transformer): the same one line, not a log warning before it (the
    // case the property test `train_never_panics` once drew).
    let args = [
        "train",
        "--model",
        "transformer",
        "--data",
        "modadd",
        "--d-model",
        "1",
        "--heads",
        "1",
        "--layers",
        "1",
        "--context",
        "4",
        "--batch-size",
        "1",
        "--steps",
        "2",
        "--set",
        "eps=0",
        "--out",
        "nan",
    ];
    expect(
        with_args(&args),
        &dir,
        1,
        &["diverged after 1 steps", "nan/run.json"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Warmup or an IMP rewind as long as a run given in epochs: refused once
/// the data's size is known, before any run trains.
#[test]
fn settings_longer_than_an_epoch_run_are_refused() {
    let dir = scratch();
    let epochs = |text: String| text.replace("steps = 2\n", "epochs = 2\n");
    for (text, needles) in [
        (
            epochs(edit(
                STUDY,
                "tasks.0.schedule",
                "{ name = \"warmup_cosine\", warmup_steps = 4, min_lr_frac = 0.1 }",
            )),
            ["warmup_steps = 4", "2 epochs of 2 steps = 4 steps"],
        ),
        (
            epochs(edit(
                STUDY,
                "tasks.0.pruning",
                "{ method = \"imp\", rounds = 1, rate = 0.5, rewind_step = 4 }",
            )),
            ["rewind_step = 4", "2 epochs of 2 steps = 4 steps"],
        ),
    ] {
        assert!(text.contains("epochs = 2"), "{text}");
        expect_refused_study(&dir, &text, &[], &needles);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// The up-front memory check reads the process's own limit (`ulimit -v`),
/// not only the machine's available memory: a model that fits the machine
/// but not the limit is refused before training, naming the limit.
#[test]
fn the_memory_check_reads_the_process_limit() {
    let dir = scratch();
    // About 3 GB for parameters, state and activations.
    let args = [
        "train", "--data", "teacher", "--hidden", "200000", "--steps", "1", "--out", "o",
    ];
    let mem_available_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let l = t
                .lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .to_string();
            l.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    let needles: &[&str] = if mem_available_kb > 8_000_000 {
        &["memory", "ulimit -v", "--hidden"]
    } else {
        &["memory", "--hidden"]
    };
    expect(bin_ulimit(1_500_000, &args), &dir, 2, needles);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A claim held by a live process that is not this program, or an empty
/// claim file, no longer blocks its run: both are stale and taken over,
/// and every run of the study is trained.
#[test]
fn foreign_and_empty_claims_are_taken_over() {
    let dir = scratch();
    std::fs::write(dir.join("s.toml"), STUDY).unwrap();
    expect(with_args(&["--exp", "s.toml"]), &dir, 0, &[]);
    let runs = dir.join("results/s/runs");
    let mut names: Vec<String> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    for e in std::fs::read_dir(&runs).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let claim = |n: &str| runs.join(n.replace(".json", ".claim"));
    std::fs::write(claim(&names[0]), format!("{host} {}\n", sleeper.id())).unwrap();
    std::fs::write(claim(&names[1]), "").unwrap();
    let out = expect(with_args(&["--exp", "s.toml"]), &dir, 0, &[]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(out.contains("2 done"), "{out}");
    assert!(!out.contains("other processes"), "{out}");
    for n in &names {
        assert!(runs.join(n).is_file(), "{n} not trained");
        assert!(!claim(n).exists(), "{n}: claim left behind");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `report` on a damaged folder says so: a record that lost its `final`
/// measures is left out with a warning naming it (the row counts only the
/// seeds it averages), a truncated study.json is named in a warning, and a
/// label's `|` is escaped in results.md.
#[test]
fn report_names_damaged_records_and_escapes_labels() {
    let dir = scratch();
    let text = edit(
        &edit(STUDY, "seeds", "[0, 1]"),
        "optimizers.0.label",
        "\"SGD | plain <&>\"",
    );
    std::fs::write(dir.join("s.toml"), text).unwrap();
    expect(with_args(&["--exp", "s.toml"]), &dir, 0, &[]);
    let out = dir.join("results/s");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| SGD \\| plain <&> |"), "{md}");
    for e in std::fs::read_dir(out.join("plots")).unwrap() {
        let svg = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!svg.contains("plain <&>"), "raw label in an SVG");
    }
    // Take `final` out of one record, and cut study.json short.
    let runs = out.join("runs");
    let victim = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let mut rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&victim).unwrap()).unwrap();
    assert_eq!(rec["status"], "done");
    rec.as_object_mut().unwrap().remove("final");
    std::fs::write(&victim, serde_json::to_string(&rec).unwrap()).unwrap();
    let manifest = std::fs::read_to_string(out.join("study.json")).unwrap();
    std::fs::write(out.join("study.json"), &manifest[..manifest.len() / 2]).unwrap();
    let o = run_timed(with_args(&["report", "results/s"]), &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning") && l.contains(&name) && l.contains("final")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning") && l.contains("study.json")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
