//! The filter-level section of a report, for models with conv layers (the
//! CNN): per conv layer, the filters that never fire on the held-out set,
//! BatchNorm scales |γ| < 1e-3 and small filter norms
//! ([`crate::metrics::filters`]); the dense layer's dead units beside them;
//! and, where the records carry them per evaluation, the same over training
//! with the training loss, so the tables show *when* filters die and that
//! the loss has flattened.

use std::fmt::Write as _;

use super::columns::{finite, md_table, pct, stat};
use super::history::{Series, history_tables};
use crate::experiment::record::{Group, StudyRecord};
use crate::metrics::{FilterCounts, FilterMeasures};

fn final_filters(r: &StudyRecord) -> Option<&FilterMeasures> {
    r.r#final.as_ref()?.filters.as_ref()
}

/// A layer's fraction of filters with some property.
type LayerFrac = fn(&FilterCounts) -> f64;

/// The three filter measures of a table, as (header, fraction of a layer).
const MEASURES: [(&str, LayerFrac); 3] = [
    ("dead %", FilterCounts::dead_frac),
    ("\\|γ\\| < 1e-3 %", FilterCounts::gamma_small_frac),
    ("norm < 0.1 median %", |c| c.small_norm_frac("0.1")),
];

/// The conv layers' names, from the first finished run that has them.
fn layer_names(gs: &[&Group]) -> Vec<String> {
    gs.iter()
        .flat_map(|g| g.done())
        .find_map(final_filters)
        .map(|f| f.layers.keys().cloned().collect())
        .unwrap_or_default()
}

/// The filter measures of one layer (None: all conv layers) of a run.
fn counts<'a>(f: &'a FilterMeasures, layer: Option<&str>) -> Option<&'a FilterCounts> {
    match layer {
        Some(l) => f.layers.get(l),
        None => Some(&f.total),
    }
}

/// Writes the section when the task's runs have filter measures.
pub(super) fn filter_markdown(out: &mut String, gs: &[&Group]) {
    let layers = layer_names(gs);
    if layers.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### Filter-level sparsity\n\nPer conv layer and over all of them, at the end of training: filters whose post-ReLU output is 0 on every held-out image (dead), whose BatchNorm scale has \\|γ\\| < 1e-3, and whose L2 norm is below 0.1 × their layer's median filter norm; then the dense hidden layer's dead units (no positive activation on any held-out image). Mean ± sd over seeds, in %.\n"
    );
    let mut header = vec!["optimizer".to_string()];
    let mut scopes: Vec<Option<&str>> = layers.iter().map(|l| Some(l.as_str())).collect();
    scopes.push(None);
    for s in &scopes {
        for (h, _) in MEASURES {
            header.push(format!("{} {h}", s.unwrap_or("all conv")));
        }
    }
    header.push("dense dead units %".into());
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut row = vec![g.label.clone()];
            for s in &scopes {
                for (_, f) in MEASURES {
                    row.push(pct(stat(g, |r| finite(f(counts(final_filters(r)?, *s)?)))));
                }
            }
            row.push(pct(stat(g, |r| {
                r.r#final.as_ref()?.dead_units.as_ref().map(|d| d.frac)
            })));
            row
        })
        .collect();
    md_table(out, &header, &rows);
    over_training(out, gs);
}

/// The evaluation epochs of the task's runs that record filters per
/// evaluation (the first such run's), or none.
fn eval_epochs(gs: &[&Group]) -> Vec<f64> {
    gs.iter()
        .flat_map(|g| g.done())
        .find(|r| r.history.iter().any(|h| h.filters.is_some()))
        .map(|r| r.history.iter().map(|h| h.epoch).collect())
        .unwrap_or_default()
}

/// The over-training tables: one per measure, a row per optimizer, a
/// column per evaluation.
fn over_training(out: &mut String, gs: &[&Group]) {
    let epochs = eval_epochs(gs);
    if epochs.is_empty() {
        return;
    }
    let tables: [Series; 4] = [
        (
            "Dead filters, all conv layers (%)",
            |r, i| finite(r.history.get(i)?.filters.as_ref()?.total.dead_frac()),
            true,
        ),
        (
            "Filters with BatchNorm \\|γ\\| < 1e-3, all conv layers (%)",
            |r, i| finite(r.history.get(i)?.filters.as_ref()?.total.gamma_small_frac()),
            true,
        ),
        (
            "Dense dead units (%)",
            |r, i| r.history.get(i)?.dense_dead.as_ref().map(|d| d.frac),
            true,
        ),
        (
            "Training loss, mean over the steps since the previous evaluation",
            |r, i| r.history.get(i)?.train_loss.and_then(finite),
            false,
        ),
    ];
    let _ = writeln!(
        out,
        "#### Over training\n\nAt each evaluation (columns: epoch), mean ± sd over seeds. The held-out pass of every evaluation decides which filters and units are dead at that point.\n"
    );
    let columns: Vec<(usize, String)> = epochs
        .iter()
        .enumerate()
        .map(|(i, e)| (i, format!("{e:.2}")))
        .collect();
    history_tables(out, gs, &columns, &tables);
}
