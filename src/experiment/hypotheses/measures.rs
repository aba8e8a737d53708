//! The measures a hypothesis may name ([`measures`]): each a key in study
//! files, a name in tables, and how to read it from a finished run.

use crate::experiment::record::StudyRecord;

/// A measure a hypothesis can compare: its key in study files, its name in
/// tables, whether it is a fraction (shown in percent, differences in
/// percentage points), and how to read it from a finished run.
pub struct Measure {
    pub key: &'static str,
    pub name: &'static str,
    pub percent: bool,
    pub get: fn(&StudyRecord) -> Option<f64>,
}

fn fin(r: &StudyRecord) -> Option<&crate::train::Final> {
    r.r#final.as_ref()
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The highest one-shot sparsity of [`crate::prune::GRID`] whose accuracy
/// is within 1 point of the network as it is (functional sparsity), from the
/// run's one-shot curve; None when the curve does not cover the grid.
pub fn functional_sparsity(r: &StudyRecord) -> Option<f64> {
    let f = fin(r)?;
    if let Some(s) = &f.prune_scores {
        return finite(s.max_sparsity_within_1pt);
    }
    crate::prune::prune_scores(f.test_acc, &f.pruning)
        .and_then(|s| finite(s.max_sparsity_within_1pt))
}

/// Every measure a hypothesis may name.
pub fn measures() -> Vec<Measure> {
    vec![
        Measure {
            key: "test_acc",
            name: "test accuracy",
            percent: true,
            get: |r| finite(fin(r)?.test_acc),
        },
        Measure {
            key: "test_loss",
            name: "held-out loss",
            percent: false,
            get: |r| finite(fin(r)?.test_loss),
        },
        Measure {
            key: "weights_exact_zero",
            name: "w = 0",
            percent: true,
            get: |r| finite(fin(r)?.measures.weights.exact_zero_frac),
        },
        Measure {
            key: "weights_near_zero_1e-3",
            name: "|w| < 1e-3",
            percent: true,
            get: |r| finite(fin(r)?.measures.weights.near("1e-3")),
        },
        Measure {
            key: "weights_near_zero_1e-2",
            name: "|w| < 1e-2",
            percent: true,
            get: |r| finite(fin(r)?.measures.weights.near("1e-2")),
        },
        Measure {
            key: "weights_scale_rel_0.01",
            name: "|w| < 0.01 RMS",
            percent: true,
            get: |r| finite(fin(r)?.measures.weights.scale_rel("0.01")),
        },
        Measure {
            key: "weights_scale_rel_0.1",
            name: "|w| < 0.1 RMS",
            percent: true,
            get: |r| finite(fin(r)?.measures.weights.scale_rel("0.1")),
        },
        Measure {
            key: "weights_gini",
            name: "Gini",
            percent: false,
            get: |r| finite(fin(r)?.measures.weights.gini),
        },
        Measure {
            key: "weights_hoyer",
            name: "Hoyer",
            percent: false,
            get: |r| finite(fin(r)?.measures.weights.hoyer),
        },
        Measure {
            key: "dead_units",
            name: "dead units",
            percent: true,
            get: |r| fin(r)?.dead_units.as_ref().map(|d| d.frac),
        },
        Measure {
            key: "dead_filters",
            name: "dead filters (all conv layers)",
            percent: true,
            get: |r| finite(fin(r)?.filters.as_ref()?.total.dead_frac()),
        },
        Measure {
            key: "filters_gamma_small",
            name: "filters with BatchNorm |γ| < 1e-3",
            percent: true,
            get: |r| finite(fin(r)?.filters.as_ref()?.total.gamma_small_frac()),
        },
        Measure {
            key: "filters_norm_0.1",
            name: "filters with norm < 0.1 × layer median",
            percent: true,
            get: |r| finite(fin(r)?.filters.as_ref()?.total.small_norm_frac("0.1")),
        },
        Measure {
            key: "shrinkage_0.1",
            name: "shrunk to ≤ 0.1 |w_init|",
            percent: true,
            get: |r| finite(fin(r)?.shrinkage.as_ref()?.weights.at("0.1")),
        },
        Measure {
            key: "shrinkage_0.01",
            name: "shrunk to ≤ 0.01 |w_init|",
            percent: true,
            get: |r| finite(fin(r)?.shrinkage.as_ref()?.weights.at("0.01")),
        },
        Measure {
            key: "functional_sparsity",
            name: "functional sparsity (one-shot)",
            percent: true,
            get: functional_sparsity,
        },
        Measure {
            key: "pruned_90_acc",
            name: "accuracy at 90 % pruned",
            percent: true,
            get: |r| {
                fin(r)?
                    .pruning
                    .iter()
                    .find(|p| (p.frac - 0.9).abs() < 1e-9)
                    .and_then(|p| finite(p.test_acc))
            },
        },
        Measure {
            key: "q1_drift",
            name: "bottom-gradient-quintile mean |w_end − w_start|",
            percent: false,
            get: |r| {
                fin(r)?
                    .gradient_buckets
                    .as_ref()?
                    .iter()
                    .find(|b| b.bucket == "q1")
                    .and_then(|b| finite(b.mean_abs_change))
            },
        },
        Measure {
            key: "prune_auc",
            name: "prunability AUC",
            percent: true,
            get: |r| finite(fin(r)?.prune_scores.as_ref()?.auc),
        },
    ]
}

/// The measure with key `key`.
pub fn measure(key: &str) -> Option<Measure> {
    measures().into_iter().find(|m| m.key == key)
}
