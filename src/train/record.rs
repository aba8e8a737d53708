//! What a run records: its status, the evaluations during training, the
//! final measures and the whole [`RunRecord`] written as JSON.

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::io::nan_from_null;
use crate::metrics::{
    self, ActivityBucket, DeadUnitsReport, GradBucket, LogHistogram, ModelMeasures,
};
use crate::provenance::Provenance;
use crate::prune::{PrunePoint, PruneScores};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Done,
    Diverged,
    Failed,
}

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub epoch: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub lr: f64,
    /// Mean training loss since the previous evaluation (none at step 0).
    pub train_loss: Option<f64>,
    #[serde(deserialize_with = "nan_from_null")]
    pub test_loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub test_acc: f64,
    /// Weight-level sparsity of the weights (tensors with >= 2 dims) now.
    #[serde(deserialize_with = "nan_from_null")]
    pub weights_exact_zero_frac: f64,
    pub weights_near_zero_frac: std::collections::BTreeMap<String, f64>,
    #[serde(deserialize_with = "nan_from_null")]
    pub weights_rel_near_zero_frac: f64,
    /// Keys "0.01", "0.03", "0.1": |w| < c * RMS of its own tensor, pooled
    /// over the weights (empty in records written before it existed).
    #[serde(default)]
    pub weights_scale_rel_near_zero_frac: std::collections::BTreeMap<String, f64>,
    /// How far the weights are from their initialisation now:
    /// ||w − w_init|| / ||w_init|| pooled over the weights
    /// ([`crate::metrics::relative_distance`]); absent in records written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_dist_init: Option<f64>,
    /// Shrinkage now (keys of `SHRINK`, [`crate::metrics::Shrinkage`]): the
    /// fraction of weights with |w| <= c * |w_init|; empty in records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub weights_shrinkage: std::collections::BTreeMap<String, f64>,
    /// Models with conv layers (the CNN): the filter measures now, per conv
    /// layer and in total, dead filters from this evaluation's held-out pass
    /// (absent for other models and in records written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<metrics::FilterMeasures>,
    /// Models with conv layers: the dense hidden layers' dead units on this
    /// evaluation's held-out pass (as [`Final::dead_units`] at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_dead: Option<metrics::DeadUnitsReport>,
}

impl Final {
    /// The name of the first measure that is NaN or infinite, if any.
    pub fn first_non_finite(&self) -> Option<String> {
        let mut named: Vec<(String, f64)> = vec![
            ("train loss".into(), self.train_loss),
            ("test loss".into(), self.test_loss),
            ("test accuracy".into(), self.test_acc),
        ];
        for (group, m) in [
            ("weights", &self.measures.weights),
            ("biases", &self.measures.biases),
            ("total", &self.measures.total),
        ] {
            if m.nonfinite > 0 {
                return Some(format!(
                    "values of the {group} ({} NaN or infinite)",
                    m.nonfinite
                ));
            }
            for (k, v) in [("L1", m.l1), ("L2", m.l2)] {
                named.push((format!("{k} of the {group}"), v));
            }
        }
        for p in &self.pruning {
            named.push((
                format!("test loss at {}% pruned", 100.0 * p.frac),
                p.test_loss,
            ));
        }
        named
            .into_iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(k, _)| k)
    }
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Final {
    #[serde(deserialize_with = "nan_from_null")]
    pub train_loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub test_loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub test_acc: f64,
    pub measures: ModelMeasures,
    /// For ReLU models only (the CNN: its hidden linear layer's units).
    pub dead_units: Option<DeadUnitsReport>,
    /// For models with conv layers: filter-level sparsity per layer and in
    /// total (dead filters on the held-out set, small filter norms, small
    /// BatchNorm scales).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<metrics::FilterMeasures>,
    pub pruning: Vec<PrunePoint>,
    /// log10 |w| of the weights (tensors with >= 2 dims).
    pub weight_histogram: LogHistogram,
    /// The MLP on image data (mnist, fashion-mnist): the first layer's
    /// weights (`fc0.weight[:, j]`) by how often pixel j is > 0 in the
    /// training images: never, <=0.1%, <=3%, >3%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_activity: Option<Vec<ActivityBucket>>,
    /// With `track_gradients`: every weight (tensors with >= 2 dims),
    /// bucketed by its sum over steps of |g|: none, then quintiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_buckets: Option<Vec<GradBucket>>,
    /// Prunability scores of the final network over [`crate::prune::GRID`] (when
    /// `prune_fracs` covers it), with the masks' sparsity after pruning in
    /// training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_scores: Option<PruneScores>,
    /// The weights (tensors with >= 2 dims) against their values at step
    /// 0: the fraction with |w_end| <= c * |w_init| (none in records
    /// written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrinkage: Option<crate::metrics::ShrinkageReport>,
}

/// The record of one run: what ran, what it measured, how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub config: TrainConfig,
    pub seed: u64,
    pub device: String,
    /// The data by dataset and split, e.g. `mnist: 60000 training examples,
    /// held out: test split (10000 examples)`; never a path.
    #[serde(default)]
    pub data: String,
    pub params: usize,
    pub optimizer_state_bytes: usize,
    pub steps_done: usize,
    pub history: Vec<EvalPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#final: Option<Final>,
    /// Wall time of the whole run (training, evaluations, final measures).
    #[serde(deserialize_with = "nan_from_null")]
    pub wall_seconds: f64,
    /// The code, machine, overrides and data the numbers came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// The file, beside the record, that holds the final weights
    /// (safetensors, torch's names, the config in its metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}
