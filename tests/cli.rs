//! The binary's contracts: `trace` output and bad-input handling.

use std::process::{Command, Output};

use sparsity_lab::optim::OptimizerKind;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every list of optimizers the binary prints comes from the registry: a
/// new optimizer appears in each, and in none by hand.
#[test]
fn every_optimizer_of_the_registry_is_in_every_help_text_and_list() {
    let long = stdout(&bin(&["--help"]));
    let train = stdout(&bin(&["train", "--help"]));
    let trace = stdout(&bin(&["trace", "--help"]));
    let o = bin(&["optimizers"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert_eq!(
        table.lines().count(),
        2 + OptimizerKind::ALL.len(),
        "{table}"
    );
    // clap wraps help lines: compare without line breaks.
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (long, train, trace) = (flat(&long), flat(&train), flat(&trace));
    for kind in OptimizerKind::ALL {
        let (name, label) = (kind.name(), kind.label());
        assert!(long.contains(label), "--help lacks {label}: {long}");
        for (what, help) in [("train", &train), ("trace", &trace)] {
            let mut words = help.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            assert!(
                words.any(|w| w == name),
                "{what} --help lacks {name}: {help}"
            );
        }
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("`optimizers` has no row for {name}"));
        assert!(row.contains(kind.info().reference), "{row}");
    }
    let unknown = bin(&[
        "trace",
        "--optimizer",
        "lamb",
        "--problem",
        "quadratic",
        "--steps",
        "1",
    ]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains(&OptimizerKind::names().join(", ")),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn trace_prints_one_json_object_per_step_from_step_zero() {
    let o = bin(&[
        "trace",
        "--optimizer",
        "adam",
        "--problem",
        "rosenbrock",
        "--steps",
        "5",
        "--set",
        "lr=0.1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for (t, l) in lines.iter().enumerate() {
        let obj = l.as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["loss", "params", "step"]);
        assert_eq!(l["step"].as_u64(), Some(t as u64));
        assert_eq!(l["params"].as_array().unwrap().len(), 2);
    }
    assert_eq!(lines[0]["params"], serde_json::json!([-1.5, 2.0]));
    // (1 + 1.5)^2 + 100 (2 - 2.25)^2 = 6.25 + 6.25
    assert_eq!(lines[0]["loss"].as_f64(), Some(12.5));
    // Adam's first step moves each coordinate by lr against its gradient sign:
    // d/dx = -2(1-x) - 400x(y-x^2) = -5 - 150 < 0, d/dy = 200(y-x^2) < 0.
    assert_eq!(lines[1]["params"], serde_json::json!([-1.4, 2.1]));
}

#[test]
fn trace_f64_and_f32_and_every_optimizer() {
    let o = bin(&[
        "trace",
        "--optimizer",
        "sgd",
        "--problem",
        "quadratic",
        "--steps",
        "2",
        "--dtype",
        "f64",
        "--set",
        "lr=0.25",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // theta <- theta - 0.25 * 2 theta = theta / 2
    assert_eq!(
        stdout(&o),
        "{\"step\":0,\"params\":[1.0],\"loss\":1.0}\n{\"step\":1,\"params\":[0.5],\"loss\":0.25}\n{\"step\":2,\"params\":[0.25],\"loss\":0.0625}\n"
    );
    for opt in OptimizerKind::names() {
        let o = bin(&[
            "trace",
            "--optimizer",
            opt,
            "--problem",
            "quadratic",
            "--steps",
            "3",
        ]);
        assert!(o.status.success(), "{opt}: {}", stderr(&o));
        assert_eq!(stdout(&o).lines().count(), 4, "{opt}");
    }
    let o = bin(&[
        "trace",
        "--optimizer",
        "adam",
        "--problem",
        "quadratic",
        "--steps",
        "1",
        "--set",
        "l1_prox=0.5",
        "--set",
        "exempt_1d=false",
        "--set",
        "decoupled_weight_decay=true",
        "--set",
        "weight_decay=0.1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Every bad input: exit code 2, one line on stderr that names the problem,
/// nothing on stdout, no panic, no backtrace.
#[test]
fn bad_input_gets_one_line_and_exit_code_2() {
    let base = ["trace", "--problem", "quadratic", "--steps", "3"];
    let cases: &[(&[&str], &str)] = &[
        (&["--optimizer", "adamm"], "unknown optimizer `adamm`"),
        (&["--optimizer", "adam", "--set", "lr=-1"], "`lr`"),
        (&["--optimizer", "adam", "--set", "beta1=1"], "`beta1`"),
        (&["--optimizer", "adam", "--set", "beta2=1.5"], "[0, 1)"),
        (&["--optimizer", "adam", "--set", "eps=-1e-8"], "`eps`"),
        (
            &["--optimizer", "adam", "--set", "momentum=0.9"],
            "allowed: lr",
        ),
        (&["--optimizer", "adam", "--set", "lr"], "KEY=VALUE"),
        (
            &["--optimizer", "adam", "--set", "amsgrad=maybe"],
            "true or false",
        ),
        (
            &["--optimizer", "sgd", "--set", "nesterov=true"],
            "nesterov",
        ),
        (
            &[
                "--optimizer",
                "sgd",
                "--set",
                "nesterov=true",
                "--set",
                "momentum=0.9",
                "--set",
                "dampening=0.1",
            ],
            "dampening",
        ),
        (&["--optimizer", "adam", "--dtype", "f16"], "--dtype"),
        (&["--optimizer", "adam", "--device", "tpu"], "--device"),
        (&["--optimizer", "adam", "--device", "cuda"], "cuda"),
        (
            &[
                "--optimizer",
                "adam",
                "--set",
                "l1=0.1",
                "--set",
                "l1_prox=0.1",
            ],
            "one L1 mode",
        ),
    ];
    for (extra, needle) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let o = bin(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        assert!(stdout(&o).is_empty());
    }
    let o = bin(&[
        "trace",
        "--optimizer",
        "adam",
        "--problem",
        "beale",
        "--steps",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("rosenbrock"));
    let o = bin(&["--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let o = bin(&[
        "trace",
        "--optimizer",
        "adam",
        "--problem",
        "quadratic",
        "--steps",
        "-3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn help_explains_the_commands() {
    let o = bin(&["--help"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.contains("trace") && text.contains("RUST_LOG"),
        "{text}"
    );
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sparsity-lab-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// `measure --json` on a checkpoint saved by PyTorch, against the same
/// measures computed with numpy by tests/golden/make_measure_fixture.py.
/// Both sides sum f64 values in different orders: 1e-12 relative.
#[test]
fn measure_json_matches_numpy_on_a_pytorch_checkpoint() {
    let o = bin(&[
        "measure",
        &format!("{GOLDEN}/torch_checkpoint.safetensors"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{GOLDEN}/torch_checkpoint_measures.json")).unwrap(),
    )
    .unwrap();
    let mut top: Vec<_> = ours.as_object().unwrap().keys().cloned().collect();
    top.sort();
    assert_eq!(top, ["tensors", "total"]);
    // The int64 BatchNorm counter is not a float tensor, and the running
    // statistics are buffers: skipped, as in the fixture.
    assert_eq!(
        ours["tensors"].as_object().unwrap().len(),
        expected["tensors"].as_object().unwrap().len()
    );
    let check = |a: &serde_json::Value, b: &serde_json::Value, at: &str| {
        // Our count of non-finite values, which numpy's fixture lacks: none here.
        assert_eq!(a["nonfinite"], 0, "{at}");
        // The scale-relative fractions were added to the fixture without
        // torch (tests/golden/add_scale_rel_to_fixture.py, numpy alone).
        let keys: Vec<_> = a
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "nonfinite")
            .cloned()
            .collect();
        let mut want: Vec<_> = b.as_object().unwrap().keys().cloned().collect();
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want, "{at}");
        for k in keys {
            let (x, y) = (&a[&k], &b[&k]);
            if k == "near_zero_frac" || k == "scale_rel_near_zero_frac" {
                assert_eq!(x, y, "{at}.{k}");
            } else {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                    "{at}.{k}: {x} vs numpy {y}"
                );
            }
        }
    };
    for (name, m) in expected["tensors"].as_object().unwrap() {
        check(&ours["tensors"][name], m, name);
    }
    check(&ours["total"], &expected["total"], "total");
    let o = bin(&["measure", &format!("{GOLDEN}/torch_checkpoint.safetensors")]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("0.weight") && stdout(&o).contains("[total]"));
}

#[test]
fn measure_bad_files_are_usage_errors() {
    for f in [
        "/nonexistent.safetensors",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ] {
        let o = bin(&["measure", f]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains(f));
    }
}

/// `train` writes run.json and a checkpoint that `measure` reads back with
/// the same numbers as the record.
#[test]
fn train_writes_a_record_and_a_checkpoint() {
    let out = tmpdir("train");
    let o = bin(&[
        "train",
        "--model",
        "mlp",
        "--hidden",
        "16",
        "--data",
        "teacher",
        "--optimizer",
        "sgd",
        "--set",
        "lr=0.1",
        "--set",
        "momentum=0.9",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("dead units"), "{}", stdout(&o));
    assert!(stdout(&o).contains("final: train acc"), "{}", stdout(&o));
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["status"], "done");
    assert_eq!(rec["seed"], 3);
    assert_eq!(rec["config"]["optimizer"]["name"], "sgd");
    assert_eq!(rec["config"]["optimizer"]["momentum"], 0.9);
    // Every hyper-parameter is written out, defaults included.
    assert_eq!(rec["config"]["optimizer"]["dampening"], 0.0);
    assert_eq!(rec["history"].as_array().unwrap().len(), 3);
    let m = bin(&[
        "measure",
        out.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    let m: serde_json::Value = serde_json::from_str(&stdout(&m)).unwrap();
    assert_eq!(m["total"], rec["final"]["measures"]["total"]);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn train_bad_input_and_missing_data() {
    let empty = tmpdir("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--data", "cifar"], "unknown dataset"),
        (&["train", "--model", "rnn"], "unknown model"),
        (
            &["train", "--model", "transformer", "--data", "teacher"],
            "cannot learn",
        ),
        (
            &[
                "train",
                "--data",
                "teacher",
                "--optimizer",
                "adam",
                "--set",
                "lr=-0.1",
            ],
            "`lr`",
        ),
        (&["train", "--data", "teacher", "--epochs", "0"], "epochs"),
        (
            &["train", "--data", "teacher", "--schedule", "linear"],
            "--schedule",
        ),
        (
            &["train", "--data", "mnist", "--data-dir", "/nonexistent/idx"],
            "/nonexistent/idx",
        ),
        (
            &[
                "train",
                "--data",
                "text",
                "--model",
                "transformer",
                "--data-dir",
                "/nonexistent.txt",
            ],
            "/nonexistent.txt",
        ),
        (&["train", "--data", "mnist"], "HF_HUB_CACHE"),
    ];
    for (args, needle) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
            .args(*args)
            .args(["--out", tmpdir("bad").to_str().unwrap()])
            .env("HF_HUB_CACHE", &empty)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("SPARSITY_LAB_DATA")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // The missing-data error names every place searched.
    let o = Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args(["train", "--data", "mnist"])
        .env("HF_HUB_CACHE", &empty)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("SPARSITY_LAB_DATA")
        .output()
        .unwrap();
    let err = stderr(&o);
    for place in [
        "SPARSITY_LAB_DATA",
        empty.to_str().unwrap(),
        "--data-dir",
        "HF_HUB_OFFLINE",
    ] {
        assert!(err.contains(place), "{place} missing from: {err}");
    }
}

/// Runs the binary and checks the error contract: `code`, one line on
/// stderr that starts with `error:` and contains `needle`, no panic.
fn refused(args: &[&str], code: i32, needle: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: {needle} missing from {err}"
    );
    assert!(!err.contains("internal error"), "{args:?}: {err}");
    err
}

/// `--exp` with a subcommand was silently ignored (`--exp smoke report DIR`
/// rebuilt DIR, whatever the study); now it is refused in one line, exit 2,
/// before anything is written.
#[test]
fn exp_with_a_subcommand_is_refused() {
    let dir = tmpdir("exp-report");
    let d = dir.to_str().unwrap();
    refused(
        &["--exp", "smoke", "report", d],
        2,
        "--exp runs a study and takes no subcommand",
    );
    assert!(!dir.join("results.md").exists());
    let trace: Vec<&str> = "--exp smoke trace --optimizer sgd --problem quadratic --steps 1"
        .split(' ')
        .collect();
    refused(&trace, 2, "sparsity-lab report DIR");
}

/// Each input of issue 12 that panicked or trained a meaningless run is
/// refused before training, in one line that names the setting.
#[test]
fn train_refuses_sizes_it_cannot_train() {
    let dir = tmpdir("refuse");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("small.txt");
    std::fs::write(&text, "abcdefghi\n".repeat(100)).unwrap();
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let t = text.to_str().unwrap();
    let tr = |ctx: &'static str| -> Vec<&str> {
        vec![
            "train",
            "--model",
            "transformer",
            "--data",
            "text",
            "--data-dir",
            t,
            "--context",
            ctx,
            "--layers",
            "1",
            "--d-model",
            "8",
            "--heads",
            "2",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--out",
            out,
        ]
    };
    // 1,000 characters: 900 to train on, 100 held out.
    refused(&tr("900"), 2, "context 900");
    refused(&tr("1000"), 2, "context 1000");
    let e = refused(&tr("100"), 2, "100 held out");
    assert!(e.contains("--context 99"), "{e}");
    let mut ok = tr("16");
    ok[16] = "1";
    let o = bin(&ok);
    assert!(o.status.success(), "{}", stderr(&o));
    refused(
        &[
            "train",
            "--model",
            "transformer",
            "--data",
            "modadd",
            "--d-model",
            "0",
            "--heads",
            "1",
            "--layers",
            "1",
            "--steps",
            "1",
            "--out",
            out,
        ],
        2,
        "`d_model` must be > 0",
    );
    refused(
        &[
            "train",
            "--model",
            "transformer",
            "--data",
            "modadd",
            "--d-model",
            "10",
            "--heads",
            "3",
            "--steps",
            "1",
            "--out",
            out,
        ],
        2,
        "multiple of heads",
    );
    refused(
        &[
            "train",
            "--data",
            "teacher",
            "--hidden",
            "100000000",
            "--out",
            out,
        ],
        2,
        "memory",
    );
    refused(
        &[
            "train",
            "--data",
            "mnist",
            "--train-limit",
            "0",
            "--out",
            out,
        ],
        2,
        "train_limit",
    );
    // An --out that cannot be created is found before training.
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let under = file.join("out");
    let under = under.to_str().unwrap();
    let e = refused(
        &[
            "train", "--data", "teacher", "--hidden", "4", "--out", under,
        ],
        2,
        under,
    );
    assert!(e.contains("--out"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn trace_flags_a_non_finite_loss() {
    let o = bin(&[
        "trace",
        "--optimizer",
        "sgd",
        "--problem",
        "rosenbrock",
        "--steps",
        "50",
        "--set",
        "lr=1e10",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: trace diverged at step "), "{err}");
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["diverged"], true);
    assert!(last["loss"].is_null());
    assert!(err.contains(&format!("step {}", last["step"])), "{err}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.get("diverged").is_none() && l["loss"].is_number())
    );
}

#[test]
fn measure_counts_non_finite_values() {
    use candle_core::{Device, Tensor};
    let dir = tmpdir("nan");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("nan.safetensors");
    let mut map = std::collections::HashMap::new();
    map.insert(
        "all_nan".to_string(),
        Tensor::new(&[[f32::NAN, f32::NAN], [f32::NAN, f32::NAN]], &Device::Cpu).unwrap(),
    );
    map.insert(
        "mixed".to_string(),
        Tensor::new(&[3f32, 0.0, -4.0, f32::INFINITY], &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&map, &f).unwrap();
    let o = bin(&["measure", f.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(m["tensors"]["all_nan"]["nonfinite"], 4);
    assert!(m["tensors"]["all_nan"]["hoyer"].is_null());
    assert!(m["tensors"]["all_nan"]["gini"].is_null());
    assert!(m["tensors"]["all_nan"]["l1"].is_null());
    assert_eq!(m["tensors"]["mixed"]["nonfinite"], 1);
    assert_eq!(m["tensors"]["mixed"]["l1"], 7.0);
    assert_eq!(m["total"]["nonfinite"], 5);
    let o = bin(&["measure", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("nonfinite"), "{table}");
    assert!(table.contains("5 NaN or infinite values"), "{table}");
    let row = table.lines().find(|l| l.starts_with("all_nan")).unwrap();
    assert!(
        row.trim_end().ends_with(" 4") && row.contains(" -"),
        "{row}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The scale-relative near-zero fractions through the binary, on a file
/// with f32 and f64 tensors, against hand-computed values: each tensor
/// uses its own RMS, and the groups pool the counts.
#[test]
fn measure_scale_relative_near_zero_on_mixed_dtypes() {
    use candle_core::{Device, Tensor};
    let dir = tmpdir("scale-rel");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("mixed.safetensors");
    let mut map = std::collections::HashMap::new();
    // RMS sqrt((3 + 0.005^2)/4) = 0.866: 0.005 is below 0.01, 0.03 and 0.1
    // of it, the ones are not.
    map.insert(
        "a.weight".to_string(),
        Tensor::new(&[[1f32, 1.0], [1.0, 0.005]], &Device::Cpu).unwrap(),
    );
    // RMS sqrt((3e-4 + 2.5e-9 + 2.5e-7)/6) = 0.007074: thresholds 7.07e-5,
    // 2.12e-4, 7.07e-4, below them 2 (5e-5, 0), 2 and 3 (+5e-4) of 6.
    map.insert(
        "b.weight".to_string(),
        Tensor::new(
            &[[0.01f64, 0.01, 0.01], [0.00005, 0.0005, 0.0]],
            &Device::Cpu,
        )
        .unwrap(),
    );
    // All zero: every value counts.
    map.insert(
        "b.bias".to_string(),
        Tensor::new(&[0f32, 0.0, 0.0], &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&map, &f).unwrap();
    let o = bin(&["measure", f.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let fracs = |m: &serde_json::Value| -> Vec<f64> {
        ["0.01", "0.03", "0.1"]
            .iter()
            .map(|k| m["scale_rel_near_zero_frac"][k].as_f64().unwrap())
            .collect()
    };
    assert_eq!(fracs(&m["tensors"]["a.weight"]), [0.25, 0.25, 0.25]);
    assert_eq!(
        fracs(&m["tensors"]["b.weight"]),
        [2.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]
    );
    assert_eq!(fracs(&m["tensors"]["b.bias"]), [1.0, 1.0, 1.0]);
    // Pooled: 1 + 2 + 3, 1 + 2 + 3, 1 + 3 + 3 of 13. One RMS over all 13
    // values (0.48) would put 9 below 0.1 of it.
    assert_eq!(fracs(&m["total"]), [6.0 / 13.0, 6.0 / 13.0, 7.0 / 13.0]);
    // The other keys are still there.
    assert_eq!(m["total"]["near_zero_frac"]["1e-3"], 6.0 / 13.0);
    assert_eq!(m["total"]["numel"], 13);
    // The table has a column per threshold; the weights group pools 3, 3, 4
    // of 10.
    let o = bin(&["measure", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("<.01rms") && header.contains("<.03rms") && header.contains("<.1rms"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("[weights]")).unwrap();
    assert!(row.contains("0.3000  0.3000  0.4000"), "{table}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn study_file_mistakes_are_refused_at_load() {
    let dir = tmpdir("study");
    std::fs::create_dir_all(&dir).unwrap();
    let study = |name: &str, seeds: &str, labels: (&str, &str), hidden: &str| {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\nseeds = {seeds}\n[[tasks]]\nlabel = \"t\"\nsteps = 1\n\
                 model = {{ name = \"mlp\", hidden = {hidden} }}\n\
                 data = {{ name = \"teacher\", train_size = 20, test_size = 10 }}\n\
                 [[optimizers]]\nlabel = \"{}\"\nname = \"sgd\"\n\
                 [[optimizers]]\nlabel = \"{}\"\nname = \"sgd\"\nlr = 0.1\n",
                labels.0, labels.1
            ),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let long = "L".repeat(300);
    for (file, needle) in [
        (study("seeds", "[0, 0]", ("a", "b"), "[4]"), "lists 0 twice"),
        (
            study("case", "[0]", ("Adam", "adam"), "[4]"),
            "same run file name",
        ),
        (
            study("long", "[0]", ("a", &long), "[4]"),
            "shorten the labels",
        ),
        (
            study("zero", "[0]", ("a", "b"), "[0]"),
            "hidden widths must be > 0",
        ),
    ] {
        let e = refused(&["--exp", &file], 2, needle);
        assert!(e.contains(&file), "{e}");
        assert!(e.len() < 400, "{e}");
    }
    // Nothing was trained or written.
    for name in ["seeds", "case", "long", "zero"] {
        assert!(!dir.join(name).join("runs").exists(), "{name}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
