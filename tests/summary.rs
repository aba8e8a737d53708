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
