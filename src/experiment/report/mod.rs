//! `sparsity-lab report DIR`: tables and plots from the run JSONs alone.
//!
//! Reads every `DIR/runs/*.json` (all shards), groups runs by task and
//! optimizer label, and writes `DIR/results.md`, `DIR/results.csv`,
//! `DIR/metrics.csv` (one row per run and evaluation, for pandas) and
//! `DIR/plots/*.svg` (the study's `[report]` may leave out `metrics.csv` and
//! the magnitude plots). The output depends only on the run files' measured
//! numbers (never on wall time, file order, the machine's paths or the
//! commit), so a study run twice gives byte-identical tables. A row never
//! averages runs whose configurations differ in anything but the seed: such
//! a folder is refused. With `--remeasure`, the weight measures are first
//! recomputed from each run's checkpoint.

mod columns;
mod csv;
mod filters;
mod history;
mod load;
mod matched;
mod paired;
mod sections;
mod transformer;

pub use csv::{csv, metrics_csv, paired_csv};
pub use load::{MANIFEST, Manifest, load_groups, manifest, missing_runs, record_paths, remeasure};
pub use matched::{Matched, MatchedRow, lr_grids, matched};
pub use paired::{PairedRow, PairedTable, paired_tables};
pub use sections::markdown;
pub use transformer::{TRANSFORMER_GROUPS, transformer_group};

use std::path::Path;

use anyhow::Result;

use super::hypotheses::{Hypothesis, test_family};
use super::plots;
use super::tuning;
use crate::io::{remove_stale, write_atomic};
use columns::by_task;
use matched::pareto_plots;

/// Writes results.md, results.csv and the plots. Returns the Markdown.
/// The study's `[report]` options (from the folder's manifest) may leave
/// out metrics.csv and the magnitude plots; a stale copy of either is
/// removed.
pub fn write_report(dir: &Path) -> Result<String> {
    let groups = load_groups(dir)?;
    let m = manifest(dir);
    let baselines = m.as_ref().map(|m| m.baselines.clone()).unwrap_or_default();
    let opts = m.as_ref().map(|m| m.report).unwrap_or_default();
    let paired = paired_tables(&groups, &baselines);
    let confirmatory = test_family(&declared_hypotheses(dir)?, &groups, &baselines);
    let mut md = markdown(&groups, &paired, &confirmatory, &opts);
    if let Some(t) = m.and_then(|m| m.tuning) {
        let choices = tuning::choose(
            &tuning::samples(&groups, t.criterion),
            t.criterion.higher_is_better(),
        );
        md = tuning::insert_section(&md, &tuning::markdown(&choices, t.criterion));
        write_atomic(
            &dir.join("tuning.csv"),
            tuning::csv(&choices, t.criterion.higher_is_better()).as_bytes(),
        )?;
        plots::write_lr_curves(dir, &choices)?;
    }
    write_atomic(&dir.join("results.md"), md.as_bytes())?;
    write_atomic(&dir.join("results.csv"), csv(&groups).as_bytes())?;
    if !paired.is_empty() {
        write_atomic(&dir.join("paired.csv"), paired_csv(&paired).as_bytes())?;
    }
    let metrics = dir.join("metrics.csv");
    if opts.metrics_csv {
        write_atomic(&metrics, metrics_csv(&groups).as_bytes())?;
    } else {
        // One an earlier report wrote would be stale: its runs are not these.
        remove_stale(&metrics)?;
    }
    plots::write_all_with_baseline(
        dir,
        &groups,
        baselines.first().map(|b| b.1.as_str()),
        opts.magnitude_plots,
    )?;
    plots::pruning_methods(dir, &groups)?;
    for (task, gs) in by_task(&groups) {
        if matched(&gs).is_some() {
            pareto_plots(dir, &task, &gs)?;
        }
    }
    Ok(md)
}

/// The hypotheses declared by the study the folder's runs belong to (its
/// manifest names it; the file is `experiments/<name>.toml`); none when the
/// folder has no manifest, holds a `--set` run, or the study file is not
/// there.
fn declared_hypotheses(dir: &Path) -> Result<Vec<Hypothesis>> {
    // A `--set` folder is not the declared study (see `Study::load`).
    let Some(m) = manifest(dir).filter(|m| m.set.is_empty()) else {
        return Ok(vec![]);
    };
    let file = super::study::experiments_dir().join(format!("{}.toml", m.study));
    if !file.is_file() {
        return Ok(vec![]);
    }
    Ok(super::study::Study::load(&file, false, &[])?.hypotheses)
}
