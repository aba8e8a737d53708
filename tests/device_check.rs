//! The hidden commands of the device check (`scripts/gpu-check.sh`), run
//! here with `--device cpu`: `selfcheck` compares the fused CPU kernels with
//! the reference path as it compares the CUDA kernels on a GPU, and
//! `bench-steps` times a training step.

use std::process::{Command, Output};

use sparsity_lab::optim::OptimizerKind;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn selfcheck_covers_every_optimizer_and_block_and_passes_on_the_cpu() {
    let o = bin(&[
        "selfcheck",
        "--device",
        "cpu",
        "--size",
        "600",
        "--steps",
        "3",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}{}", out, text(&o.stderr));
    // A 2x255 parameter (600 rounded down to whole rows).
    assert!(out.contains("3 steps on a 2x255 parameter"), "{out}");
    // Every optimizer of the registry, again with every state buffer on
    // where that takes settings (the registry's `full_state`: SGD momentum
    // and Nesterov, centred RMSprop, AMSGrad for Adam and AdamW), and SGD
    // with momentum alone; 9 regularisation blocks each (6 for the rules
    // whose decay is always decoupled, AdamW and Lion), two dtypes: one
    // line each.
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" fused: ")).collect();
    let blocks = |k: OptimizerKind| {
        if k == OptimizerKind::Adamw || k.info().decoupled_only {
            6
        } else {
            9
        }
    };
    let variants = |k: OptimizerKind| {
        1 + usize::from(k == OptimizerKind::Sgd) + usize::from(!k.info().full_state.is_empty())
    };
    let expected: usize = OptimizerKind::ALL
        .iter()
        .map(|&k| variants(k) * blocks(k) * 2)
        .sum();
    assert_eq!(lines.len(), expected, "{out}");
    for kind in OptimizerKind::ALL {
        let name = kind.info().name;
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{name}("))),
            "{name} missing: {out}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("amsgrad=true") && l.contains("l1_prox=0.5"))
    );
    // On the CPU both paths are the CPU's own, bit for bit; two
    // comparisons (the fused and the tensor path) on each line.
    assert!(
        lines
            .iter()
            .all(|l| l.matches("(100.000% bit-identical) ok").count() == 2)
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "selfcheck cpu: {} comparisons, 0 outside tolerance",
            2 * expected
        )),
        "{last}"
    );
}

#[test]
fn bench_steps_prints_one_json_line_per_case() {
    let o = bin(&["bench-steps", "--device", "cpu", "--budget", "0", "mlp-64"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["case"], "mlp-64");
    assert_eq!(v["device"], "cpu");
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    assert!(v["runs"].as_u64().unwrap() >= 10);
}

#[test]
fn device_check_bad_input_is_one_line_and_exit_2() {
    for (args, needle) in [
        (
            &["selfcheck", "--device", "cpu", "--size", "10"][..],
            "--size",
        ),
        (&["selfcheck", "--device", "cpu", "--steps", "0"], "--steps"),
        (
            &["bench-steps", "--device", "cpu", "cnn"],
            "unknown case `cnn`",
        ),
        (
            &["bench-steps", "--device", "cpu", "--budget=-1"],
            "--budget",
        ),
        (&["selfcheck", "--device", "tpu"], "--device"),
    ] {
        let o = bin(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}
