//! `sparsity-lab summary`: the committed FINDINGS.md block and forest plot
//! are what the command writes from the committed run records.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sparsity-lab-summary-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn summary(findings: &std::path::Path, svg: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .current_dir(root())
        .args(["summary", "--findings"])
        .arg(findings)
        .arg("--svg")
        .arg(svg)
        .output()
        .unwrap()
}

/// Run into a copy of FINDINGS.md: the copy must come back unchanged, and
/// the plot equal to the committed one.
#[test]
fn committed_summary_is_what_the_command_writes() {
    let d = tmp("same");
    let committed = std::fs::read_to_string(root().join("FINDINGS.md")).unwrap();
    let copy = d.join("FINDINGS.md");
    std::fs::write(&copy, &committed).unwrap();
    let svg = d.join("forest.svg");
    let o = summary(&copy, &svg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hint = "stale: run `cargo run --release -- summary` and commit FINDINGS.md and experiments/forest.svg";
    assert!(
        std::fs::read_to_string(&copy).unwrap() == committed,
        "FINDINGS.md's generated block is {hint}"
    );
    assert!(
        std::fs::read_to_string(&svg).unwrap()
            == std::fs::read_to_string(root().join("experiments/forest.svg")).unwrap(),
        "experiments/forest.svg is {hint}"
    );
    // The block names every declared hypothesis of the studies with runs.
    assert!(committed.contains("`sparsity:C1-mnist-adam-sgd-shrink`"));
    assert!(committed.contains("`cnn:C1-cnn-adam-dead`"));
    let _ = std::fs::remove_dir_all(&d);
}

/// The prose around the block is kept; a file without markers is refused
/// in one line, exit code 2, and left as it was.
#[test]
fn prose_is_kept_and_missing_markers_are_refused() {
    let d = tmp("prose");
    let f = d.join("F.md");
    std::fs::write(
        &f,
        "# Top\n\n<!-- summary:begin -->\nold\n<!-- summary:end -->\n\nProse after.\n",
    )
    .unwrap();
    let o = summary(&f, &d.join("plots/forest.svg"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.starts_with("# Top\n\n<!-- summary:begin"), "{text}");
    assert!(text.ends_with("<!-- summary:end -->\n\nProse after.\n"));
    assert!(!text.contains("\nold\n"));
    assert!(text.contains("| claim | setting | hypothesis |"));
    assert!(d.join("plots/forest.svg").is_file());
    std::fs::write(&f, "no markers\n").unwrap();
    let o = summary(&f, &d.join("x.svg"));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("has no generated block"), "{err}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "no markers\n");
    let _ = std::fs::remove_dir_all(&d);
}

/// A hypothesis counts as declared before its runs exactly when every run
/// it is tested on was trained while the study file declared it as it reads
/// now: editing its `why` keeps that, editing what it tests loses it, and a
/// hypothesis added after the runs is "after".
#[test]
fn declared_before_the_runs_is_read_from_the_records() {
    use sparsity_lab::experiment::summary;
    let d = tmp("declared");
    let exp = d.join("experiments");
    std::fs::create_dir_all(&exp).unwrap();
    let smoke = std::fs::read_to_string(root().join("experiments/smoke.toml")).unwrap();
    let toml = smoke
        .replace("name = \"smoke\"", "name = \"tiny\"")
        .replace("epochs = 3", "epochs = 1");
    std::fs::write(exp.join("tiny.toml"), &toml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .current_dir(root())
        .arg("--exp")
        .arg(exp.join("tiny.toml"))
        .arg("--out")
        .arg(exp.join("tiny"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = |toml: &str| {
        std::fs::write(exp.join("tiny.toml"), toml).unwrap();
        let all = summary::collect(&exp).unwrap();
        assert_eq!(all.len(), 1);
        all[0]
            .outcomes
            .iter()
            .map(|o| (o.hypothesis.id.clone(), o.declared_before))
            .collect::<Vec<_>>()
    };
    let id = "C3b-smoke-prox-zeros".to_string();
    assert_eq!(before(&toml), vec![(id.clone(), true)]);
    let reworded = toml.replace("why = \"The proximal", "why = \"Reworded: the proximal");
    assert_ne!(reworded, toml);
    assert_eq!(before(&reworded), vec![(id.clone(), true)]);
    let redirected = toml.replace("direction = \"greater\"", "direction = \"two-sided\"");
    assert_ne!(redirected, toml);
    assert_eq!(before(&redirected), vec![(id.clone(), false)]);
    let added = format!(
        "{toml}\n[[hypotheses]]\nid = \"later\"\nclaim = \"C1\"\ntask = \"teacher\"\nmeasure = \"weights_scale_rel_0.01\"\ncomparison = [\"Adam\"]\ndirection = \"less\"\nwhy = \"Written after the runs.\"\n"
    );
    assert_eq!(
        before(&added),
        vec![(id, true), ("later".to_string(), false)]
    );
    let _ = std::fs::remove_dir_all(&d);
}
