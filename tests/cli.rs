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
