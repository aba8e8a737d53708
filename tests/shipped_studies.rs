//! Every shipped study (experiments/*.toml) loads, full and quick: its
//! optimizers are known to the registry and their hyper-parameters valid,
//! without training anything.

use std::path::PathBuf;

use sparsity_lab::experiment::study::Study;
use sparsity_lab::optim::OptimizerKind;

#[test]
fn every_shipped_study_loads_full_and_quick() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for file in &files {
        for quick in [false, true] {
            let study = Study::load(file, quick, &[])
                .unwrap_or_else(|e| panic!("{} (quick {quick}): {e:#}", file.display()));
            assert!(!study.tasks.is_empty(), "{}", file.display());
        }
    }
    // The sparsity study and its tuning grid have Lion, without and with decay.
    for name in ["sparsity.toml", "sparsity-lr.toml"] {
        let study = Study::load(&dir.join(name), false, &[]).unwrap();
        let decays: Vec<f64> = study
            .optimizers
            .iter()
            .filter(|o| o.config.kind == OptimizerKind::Lion)
            .map(|o| o.config.get("weight_decay"))
            .collect();
        assert!(
            decays.contains(&0.0) && decays.contains(&1.0),
            "{name}: {decays:?}"
        );
    }
}
