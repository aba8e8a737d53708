//! `sparsity-lab report DIR`: tables and plots from the run JSONs alone.
//!
//! Reads every `DIR/runs/*.json` (all shards), groups runs by task and
//! optimizer label, and writes `DIR/results.md`, `DIR/results.csv`,
//! `DIR/metrics.csv` (one row per run and evaluation, for pandas) and
//! `DIR/plots/*.svg`. The output depends only on the run files' measured
//! numbers (never on wall time, file order, the machine's paths or the
//! commit), so a study run twice gives byte-identical tables. A row never
//! averages runs whose configurations differ in anything but the seed: such
//! a folder is refused. With `--remeasure`, the weight measures are first
//! recomputed from each run's checkpoint.

mod columns;
mod csv;
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

use super::plots;
use crate::io::write_atomic;
use columns::by_task;
use matched::pareto_plots;

/// Writes results.md, results.csv and the plots. Returns the Markdown.
pub fn write_report(dir: &Path) -> Result<String> {
    let groups = load_groups(dir)?;
    let baselines = manifest(dir).map(|m| m.baselines).unwrap_or_default();
    let paired = paired_tables(&groups, &baselines);
    let md = markdown(&groups, &paired);
    write_atomic(&dir.join("results.md"), md.as_bytes())?;
    write_atomic(&dir.join("results.csv"), csv(&groups).as_bytes())?;
    if !paired.is_empty() {
        write_atomic(&dir.join("paired.csv"), paired_csv(&paired).as_bytes())?;
    }
    write_atomic(&dir.join("metrics.csv"), metrics_csv(&groups).as_bytes())?;
    plots::write_all_with_baseline(dir, &groups, baselines.first().map(|b| b.1.as_str()))?;
    plots::pruning_methods(dir, &groups)?;
    for (task, gs) in by_task(&groups) {
        if matched(&gs).is_some() {
            pareto_plots(dir, &task, &gs)?;
        }
    }
    Ok(md)
}
