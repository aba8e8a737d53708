//! The binary's contracts: `trace` output and bad-input handling.

use std::process::{Command, Output};

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
    for opt in [
        "sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nadam", "radam", "adamax",
    ] {
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
    // The int64 BatchNorm counter is not a float tensor: skipped, as in the fixture.
    assert_eq!(
        ours["tensors"].as_object().unwrap().len(),
        expected["tensors"].as_object().unwrap().len()
    );
    let check = |a: &serde_json::Value, b: &serde_json::Value, at: &str| {
        let keys: Vec<_> = a.as_object().unwrap().keys().cloned().collect();
        let mut want: Vec<_> = b.as_object().unwrap().keys().cloned().collect();
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want, "{at}");
        for k in keys {
            let (x, y) = (&a[&k], &b[&k]);
            if k == "near_zero_frac" {
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
