//! The measures taken at the end of a run (weights per tensor, dead units,
//! pixel activity) and the accumulated gradients tracked during it.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::config::TrainConfig;
use super::record::Final;
use crate::data::{Batch, Dataset, Split, Task};
use crate::metrics::{self, ActivityBucket, DeadUnits, GradBucket, LogHistogram, ModelMeasures};
use crate::models::Model;
use crate::optim;
use crate::prune;

/// The values of the weights (tensors with two or more dimensions) by
/// name: at step 0 for [`shrinkage`], and at each evaluation for the
/// weights' measures and their distance from step 0.
pub(super) fn weight_values(model: &Model) -> Result<Vec<(String, Vec<f64>)>> {
    model
        .named_params()
        .into_iter()
        .filter(|(_, v)| v.rank() >= 2)
        .map(|(k, v)| Ok((k, metrics::values(v.as_tensor())?)))
        .collect()
}

/// The weights now against `initial` ([`weight_values`] at step 0).
pub(super) fn shrinkage(
    model: &Model,
    initial: &[(String, Vec<f64>)],
) -> Result<metrics::ShrinkageReport> {
    let end = weight_values(model)?;
    let named: Vec<(String, Vec<f64>, Vec<f64>)> = initial
        .iter()
        .zip(end)
        .map(|((k, i), (k2, e))| {
            debug_assert_eq!(k, &k2);
            (k.clone(), i.clone(), e)
        })
        .collect();
    Ok(metrics::ShrinkageReport::of(&named))
}

/// The sum over steps of |g| of every weight element (tensors with two or
/// more dimensions), and the weights at the start, for
/// [`Final::gradient_buckets`]. Reads the gradients, never writes them.
pub(super) struct GradTracker {
    weights: Vec<(candle_core::Var, Vec<f64>, Vec<f64>)>,
}

impl GradTracker {
    pub(super) fn new(model: &Model) -> Result<Self> {
        let mut weights = vec![];
        for (_, v) in model.named_params() {
            if v.rank() >= 2 {
                let start = metrics::values(v.as_tensor())?;
                weights.push((v, vec![0.0; start.len()], start));
            }
        }
        Ok(Self { weights })
    }

    /// Adds one step's |g| (a weight without a gradient adds nothing).
    pub(super) fn add(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        for (v, sum, _) in &mut self.weights {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            // Read f32 gradients as they are (one copy, no f64 tensor per
            // step); f32 -> f64 is exact, so the sums are the same.
            if g.dtype() == DType::F32 {
                let g = g.flatten_all()?.to_vec1::<f32>()?;
                for (s, g) in sum.iter_mut().zip(g) {
                    *s += (g as f64).abs();
                }
            } else {
                for (s, g) in sum.iter_mut().zip(metrics::values(g)?) {
                    *s += g.abs();
                }
            }
        }
        Ok(())
    }

    pub(super) fn buckets(&self) -> Result<Vec<GradBucket>> {
        let end: Vec<Vec<f64>> = self
            .weights
            .iter()
            .map(|(v, _, _)| metrics::values(v.as_tensor()))
            .collect::<Result<_>>()?;
        let tensors: Vec<metrics::GradTensor> = self
            .weights
            .iter()
            .zip(&end)
            .map(|((_, sum, start), end)| metrics::GradTensor {
                grad_sum: sum,
                start,
                end,
            })
            .collect();
        Ok(metrics::gradient_buckets(&tensors))
    }
}

/// The first layer's weights by input-pixel activity, for the MLP on image
/// data (mnist, fashion-mnist); None otherwise.
pub(super) fn input_activity(model: &Model, ds: &Dataset) -> Result<Option<Vec<ActivityBucket>>> {
    let (Model::Mlp(_), Task::Classify { inputs, .. }, Split::Examples { x, .. }) =
        (model, &ds.task, &ds.train)
    else {
        return Ok(None);
    };
    if !matches!(ds.name.as_str(), "mnist" | "fashion-mnist") {
        return Ok(None);
    }
    let Some((_, w)) = model
        .named_params()
        .into_iter()
        .find(|(k, _)| k == "fc0.weight")
    else {
        return Ok(None);
    };
    if w.dims().get(1) != Some(inputs) {
        return Ok(None);
    }
    let active = metrics::active_counts(x)?;
    Ok(Some(metrics::activity_breakdown(
        &active,
        x.dim(0)? as u64,
        &metrics::values(w.as_tensor())?,
        *inputs,
    )))
}

/// The final weight measures of named tensors (in name order) and the
/// histogram of log10 |w| of the weights (tensors with two or more
/// dimensions). From a live model or a checkpoint alike.
pub fn weight_measures_of(named: &[(String, Tensor)]) -> Result<(ModelMeasures, LogHistogram)> {
    let measures = metrics::measure_tensors(named)?;
    let weights: Vec<f64> = named
        .iter()
        .filter(|(_, t)| t.rank() >= 2)
        .map(|(_, t)| metrics::values(t))
        .collect::<Result<Vec<_>>>()?
        .concat();
    Ok((measures, LogHistogram::of(&weights, -10.0, 1.0, 0.25)))
}

/// The model's parameters as named tensors, in name order.
pub(super) fn named_tensors(model: &Model) -> Vec<(String, Tensor)> {
    model
        .named_params()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect()
}

/// The filter measures of `named` (None without conv layers) with the dead
/// filters of a held-out pass: splits the conv layers off `dead`, so that
/// what remains is the dense hidden layers'.
pub(super) fn filters_with_dead(
    model: &Model,
    named: &[(String, Tensor)],
    dead: &mut DeadUnits,
) -> Result<Option<metrics::FilterMeasures>> {
    let conv = dead.split_first(model.conv_layers()).report();
    Ok(metrics::filter_measures(named)?.map(|f| f.with_dead(&conv.per_layer)))
}

pub(super) fn final_measures(
    cfg: &TrainConfig,
    model: &Model,
    ds: &Dataset,
    evals: &[Batch],
    train_loss: f64,
    plan: &prune::Plan,
    opt: &dyn optim::Optimizer,
) -> Result<Final> {
    let task = &ds.task;
    let mut dead = DeadUnits::default();
    let (test_loss, test_acc) = evaluate(model, task, evals, Some(&mut dead))?;
    let named = named_tensors(model);
    let (measures, weight_histogram) = weight_measures_of(&named)?;
    let filters = filters_with_dead(model, &named, &mut dead)?;
    let (criterion, scope) = plan.curve_settings();
    let pruning = prune::curve(
        model,
        || evaluate(model, task, evals, None),
        &cfg.prune_fracs,
        criterion,
        scope,
        opt,
    )?;
    let prune_scores = plan.scores(test_acc, &pruning, model, opt)?;
    Ok(Final {
        train_loss,
        test_loss,
        test_acc,
        measures,
        dead_units: model.has_relu_units().then(|| dead.report()),
        filters,
        pruning,
        weight_histogram,
        input_activity: input_activity(model, ds)?,
        gradient_buckets: None,
        prune_scores,
        shrinkage: None,
    })
}

/// Mean loss and accuracy over evaluation batches; collects dead units too.
pub fn evaluate(
    model: &Model,
    task: &Task,
    batches: &[Batch],
    mut dead: Option<&mut DeadUnits>,
) -> Result<(f64, f64)> {
    let (mut loss, mut correct, mut count) = (0.0, 0usize, 0usize);
    for b in batches {
        let mut hidden = vec![];
        let want_hidden = dead.is_some() && model.has_relu_units();
        let e = model.evaluate(task, b, want_hidden.then_some(&mut hidden))?;
        if let Some(d) = dead.as_deref_mut()
            && want_hidden
        {
            d.add(&hidden)?;
        }
        loss += e.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * e.count as f64;
        correct += e.correct;
        count += e.count;
    }
    Ok((
        loss / count.max(1) as f64,
        correct as f64 / count.max(1) as f64,
    ))
}
