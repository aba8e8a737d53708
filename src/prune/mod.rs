//! Pruning in training: criteria, thresholds, the cubic schedule of Zhu &
//! Gupta (2017), iterative magnitude pruning with rewinding (Frankle &
//! Carbin 2019), and the prunability scores of a run.
//!
//! Only weights are pruned: tensors with two or more dimensions, the same
//! set as the one-shot pruning measure ([`curve`]);
//! biases and norm gains never are. Masks live in the optimizer
//! ([`crate::optim::Optimizer::set_masks`]), which keeps masked weights at
//! exactly zero on every backend.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::bail_usage;
use crate::metrics;
use crate::models::Model;
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind, StatePolicy};

/// The fixed grid of one-shot sparsities of the prunability scores. The
/// first point is the network as it is.
pub const GRID: [f64; 8] = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99];

/// How a run prunes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No pruning in training; the criterion and scope only choose how the
    /// final one-shot curve ([`GRID`]) prunes.
    None,
    /// Prune once to `sparsity` at the end of training, then train
    /// `finetune_epochs` more epochs with the mask.
    Oneshot,
    /// Gradual pruning with the cubic schedule from `start` to `end` of the
    /// training (fractions of its steps), every `frequency` steps, to
    /// `sparsity`.
    Gradual,
    /// Iterative magnitude pruning: train, prune `rate` of the remaining
    /// weights, rewind the weights to step `rewind_step`, train the rest of
    /// the run again; `rounds` times.
    Imp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One threshold over all weights.
    #[default]
    Global,
    /// Each weight tensor pruned to the same fraction.
    Layer,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// |w|.
    #[default]
    Magnitude,
    /// w^2 * v_hat: Optimal Brain Damage's saliency with the optimizer's
    /// second moment as the diagonal empirical Fisher (Adam family:
    /// exp_avg_sq / (1 - beta2^t); AdaGrad: sum; RMSprop and Adadelta:
    /// square_avg).
    Wv,
}

/// The `pruning` table of a run or study task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    pub method: Method,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub criterion: Criterion,
    /// The optimizer's state when masks are set (not for `imp`, which
    /// always restarts it, as a new optimizer at the rewound weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StatePolicy>,
    /// Target sparsity of the weights (oneshot, gradual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// Epochs of training with the mask after one-shot pruning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune_epochs: Option<usize>,
    /// Gradual: the first and last pruning steps as fractions of the
    /// training's steps (so that `--quick` keeps the schedule's shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<f64>,
    /// Gradual: steps between pruning steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<usize>,
    /// Gradual: the sparsity at `start` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_sparsity: Option<f64>,
    /// IMP: rounds of prune-and-rewind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<usize>,
    /// IMP: fraction of the remaining weights pruned per round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// IMP: the step whose weights each round rewinds to (0: the
    /// initialisation, the original lottery ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_step: Option<usize>,
}

/// Whether an optimizer keeps a second-moment state for the `wv` criterion.
pub fn has_second_moment(kind: OptimizerKind) -> bool {
    kind.info().second_moment
}

fn frac_ok(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

impl PruneConfig {
    /// Checks the keys the method needs and refuses those it does not use;
    /// every message names the key (`pruning.<key>`).
    pub fn validate(&self, opt: &OptimizerConfig) -> Result<()> {
        let m = match self.method {
            Method::None => "none",
            Method::Oneshot => "oneshot",
            Method::Gradual => "gradual",
            Method::Imp => "imp",
        };
        let given: [(&str, bool); 10] = [
            ("state", self.state.is_some()),
            ("sparsity", self.sparsity.is_some()),
            ("finetune_epochs", self.finetune_epochs.is_some()),
            ("start", self.start.is_some()),
            ("end", self.end.is_some()),
            ("frequency", self.frequency.is_some()),
            ("initial_sparsity", self.initial_sparsity.is_some()),
            ("rounds", self.rounds.is_some()),
            ("rate", self.rate.is_some()),
            ("rewind_step", self.rewind_step.is_some()),
        ];
        let (needed, optional): (&[&str], &[&str]) = match self.method {
            Method::None => (&[], &[]),
            Method::Oneshot => (&["sparsity", "finetune_epochs"], &["state"]),
            Method::Gradual => (
                &["sparsity", "start", "end", "frequency"],
                &["state", "initial_sparsity"],
            ),
            Method::Imp => (&["rounds", "rate", "rewind_step"], &[]),
        };
        for (key, is) in given {
            if needed.contains(&key) && !is {
                bail_usage!("pruning.{key} is needed by method = \"{m}\"; give it");
            }
            if is && !needed.contains(&key) && !optional.contains(&key) {
                bail_usage!("pruning.{key} does not apply to method = \"{m}\"; remove it");
            }
        }
        if let Some(s) = self.sparsity
            && !frac_ok(s)
        {
            bail_usage!("pruning.sparsity must lie in (0, 1), got {s}");
        }
        if let Some(s) = self.initial_sparsity
            && !(0.0..1.0).contains(&s)
        {
            bail_usage!("pruning.initial_sparsity must lie in [0, 1), got {s}");
        }
        if let (Some(si), Some(sf)) = (self.initial_sparsity, self.sparsity)
            && si > sf
        {
            bail_usage!("pruning.initial_sparsity {si} is above pruning.sparsity {sf}");
        }
        if let (Some(a), Some(b)) = (self.start, self.end)
            && !(0.0 <= a && a < b && b <= 1.0)
        {
            bail_usage!(
                "pruning.start and pruning.end must satisfy 0 <= start < end <= 1, got {a} and {b}"
            );
        }
        if self.frequency == Some(0) {
            bail_usage!("pruning.frequency must be > 0");
        }
        if self.rounds == Some(0) {
            bail_usage!("pruning.rounds must be > 0");
        }
        if let Some(r) = self.rate
            && !frac_ok(r)
        {
            bail_usage!("pruning.rate must lie in (0, 1), got {r}");
        }
        if self.criterion == Criterion::Wv && !has_second_moment(opt.kind) {
            bail_usage!(
                "pruning.criterion = \"wv\" needs a second-moment state (Adam's exp_avg_sq, AdaGrad's sum, RMSprop's or Adadelta's square_avg), which `{}` does not keep; use criterion = \"magnitude\"",
                opt.kind
            );
        }
        Ok(())
    }

    /// Steps trained after the run's `train_steps`.
    pub fn extra_steps(&self, train_steps: usize, per_epoch: usize) -> usize {
        match self.method {
            Method::Oneshot => self.finetune_epochs.unwrap_or(0) * per_epoch,
            Method::Imp => {
                self.rounds.unwrap_or(0) * train_steps.saturating_sub(self.rewind_step.unwrap_or(0))
            }
            _ => 0,
        }
    }
}

/// Zhu & Gupta's cubic schedule: the sparsity at step `t` when pruning from
/// `si` at step `t0` to `sf` at step `t1`:
/// `s_t = sf + (si - sf) (1 - (t - t0)/(t1 - t0))^3`, `si` before `t0` and
/// `sf` from `t1` on (their `t1 = t0 + n dt`).
pub fn cubic(t: usize, t0: usize, t1: usize, si: f64, sf: f64) -> f64 {
    if t <= t0 {
        return si;
    }
    if t >= t1 {
        return sf;
    }
    let x = 1.0 - (t - t0) as f64 / (t1 - t0) as f64;
    sf + (si - sf) * x * x * x
}

/// The weights (tensors with two or more dimensions), in name order.
pub fn weights(model: &Model) -> Vec<(String, Var)> {
    model
        .named_params()
        .into_iter()
        .filter(|(_, v)| v.rank() >= 2)
        .collect()
}

/// The second moment an optimizer keeps for a parameter, bias-corrected
/// where the optimizer corrects it (Adam family: v / (1 - beta2^t)).
fn second_moment(opt: &dyn Optimizer, name: &str) -> Result<Vec<f64>> {
    let Some(state) = opt.state(name) else {
        bail!("the optimizer has no state for `{name}`");
    };
    let get = |k: &str| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone());
    if let Some(v) = get("exp_avg_sq") {
        let t = get("step")
            .map(|s| s.to_dtype(DType::F64)?.to_scalar::<f64>())
            .transpose()?
            .unwrap_or(0.0);
        let b2 = opt.config().get("beta2");
        let corr = if t > 0.0 { 1.0 - b2.powf(t) } else { 1.0 };
        return Ok(metrics::values(&v)?.into_iter().map(|x| x / corr).collect());
    }
    for k in ["sum", "square_avg"] {
        if let Some(v) = get(k) {
            return metrics::values(&v);
        }
    }
    bail!(
        "criterion `wv`: `{}` keeps no second-moment state; use criterion = \"magnitude\"",
        opt.config().kind
    )
}

/// The saliency of every weight element, per tensor of `weights`.
pub fn scores(
    weights: &[(String, Var)],
    criterion: Criterion,
    opt: &dyn Optimizer,
) -> Result<Vec<Vec<f64>>> {
    weights
        .iter()
        .map(|(name, v)| {
            let w = metrics::values(v.as_tensor())?;
            Ok(match criterion {
                Criterion::Magnitude => w.into_iter().map(f64::abs).collect(),
                Criterion::Wv => {
                    let s = second_moment(opt, name)?;
                    w.into_iter().zip(s).map(|(w, s)| w * w * s).collect()
                }
            })
        })
        .collect()
}

/// Which elements to keep to prune `frac` of them by score: every element
/// whose score is at or below the `frac`-quantile goes (as the one-shot
/// measure: ties at the threshold all go).
pub fn keep_flags(scores: &[Vec<f64>], frac: f64, scope: Scope) -> Vec<Vec<bool>> {
    let threshold = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        metrics::prune_threshold(xs, frac)
    };
    match scope {
        Scope::Global => {
            let mut all: Vec<f64> = scores.concat();
            let thr = threshold(&mut all);
            scores
                .iter()
                .map(|s| s.iter().map(|x| thr.is_none_or(|t| *x > t)).collect())
                .collect()
        }
        Scope::Layer => scores
            .iter()
            .map(|s| {
                let thr = threshold(&mut s.clone());
                s.iter().map(|x| thr.is_none_or(|t| *x > t)).collect()
            })
            .collect(),
    }
}

/// 0/1 tensors of the weights' shapes and dtypes from keep flags, each
/// AND-ed with the weight's mask so far (masks only grow).
fn mask_tensors(
    weights: &[(String, Var)],
    keep: &[Vec<bool>],
    before: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for ((name, v), k) in weights.iter().zip(keep) {
        let flags: Vec<f32> = k.iter().map(|b| if *b { 1.0 } else { 0.0 }).collect();
        let mut m = Tensor::from_vec(flags, v.dims(), v.device())?.to_dtype(v.dtype())?;
        if let Some(b) = before.get(name) {
            m = (m * b)?;
        }
        out.insert(name.clone(), m);
    }
    Ok(out)
}

/// Prunes the model's weights to `frac` by the criterion (masked weights
/// stay masked) and hands the masks to the optimizer with `policy`.
pub fn prune_to(
    model: &Model,
    opt: &mut dyn Optimizer,
    frac: f64,
    criterion: Criterion,
    scope: Scope,
    policy: StatePolicy,
) -> Result<()> {
    let w = weights(model);
    let s = scores(&w, criterion, opt)?;
    let masks = mask_tensors(&w, &keep_flags(&s, frac, scope), &opt.masks())?;
    opt.set_masks(masks, policy)
}

/// The fraction of weight elements the optimizer's masks remove (0 with no
/// masks).
pub fn mask_sparsity(model: &Model, opt: &dyn Optimizer) -> Result<f64> {
    let masks = opt.masks();
    let (mut zeros, mut n) = (0usize, 0usize);
    for (name, v) in weights(model) {
        n += v.elem_count();
        if let Some(m) = masks.get(&name) {
            zeros += metrics::values(m)?.iter().filter(|x| **x == 0.0).count();
        }
    }
    Ok(zeros as f64 / n.max(1) as f64)
}

/// Held-out accuracy (`evaluate` gives the model's held-out loss and
/// accuracy) after one-shot pruning of the weights to each of
/// `fracs` by the criterion and scope, without retraining; the model is
/// restored after each.
pub fn curve(
    model: &Model,
    mut evaluate: impl FnMut() -> Result<(f64, f64)>,
    fracs: &[f64],
    criterion: Criterion,
    scope: Scope,
    opt: &dyn Optimizer,
) -> Result<Vec<PrunePoint>> {
    let params = model.params();
    let snapshot = params.snapshot()?;
    let w = weights(model);
    let s = scores(&w, criterion, opt)?;
    let mut out = vec![];
    for &frac in fracs {
        let masks = mask_tensors(&w, &keep_flags(&s, frac, scope), &BTreeMap::new())?;
        for (name, v) in &w {
            v.set(&(&snapshot[name] * &masks[name])?)?;
        }
        let (test_loss, test_acc) = evaluate()?;
        out.push(PrunePoint {
            frac,
            test_acc,
            test_loss,
        });
        params.restore(&snapshot)?;
    }
    Ok(out)
}

/// The prunability of a run's final network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneScores {
    /// Mean accuracy over [`GRID`], by the trapezoid rule on the axis
    /// x = log10(1 / (1 - s)) (orders of magnitude of compression),
    /// normalised to [0, 1]: each tenfold cut of the remaining weights
    /// weighs the same.
    #[serde(deserialize_with = "crate::io::nan_from_null")]
    pub auc: f64,
    /// The highest sparsity of the grid whose accuracy is within 1
    /// percentage point of the network as it is (grid point 0).
    #[serde(deserialize_with = "crate::io::nan_from_null")]
    pub max_sparsity_within_1pt: f64,
    /// With pruning in training: the fraction of weights the masks remove
    /// at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_sparsity: Option<f64>,
}

/// The scores from the accuracy of the network (`acc0`) and its one-shot
/// curve; `None` unless the curve covers every point of [`GRID`] after 0.
pub fn prune_scores(acc0: f64, points: &[PrunePoint]) -> Option<PruneScores> {
    let mut acc = vec![acc0];
    for s in &GRID[1..] {
        acc.push(points.iter().find(|p| (p.frac - s).abs() < 1e-12)?.test_acc);
    }
    let x: Vec<f64> = GRID.iter().map(|s| -(1.0 - s).log10()).collect();
    let span = x[x.len() - 1] - x[0];
    let area: f64 = (1..GRID.len())
        .map(|i| 0.5 * (acc[i] + acc[i - 1]) * (x[i] - x[i - 1]))
        .sum();
    let max_sparsity_within_1pt = GRID
        .iter()
        .zip(&acc)
        .filter(|(_, a)| **a >= acc0 - 0.01)
        .map(|(s, _)| *s)
        .fold(0.0, f64::max);
    Some(PruneScores {
        auc: area / span,
        max_sparsity_within_1pt,
        mask_sparsity: None,
    })
}

/// A run's pruning, step by step: which steps prune, to what, and the
/// rewinding of IMP. The training loop runs [`Plan::total_steps`] steps and
/// calls [`Plan::after_step`] after each optimizer step.
pub struct Plan {
    cfg: Option<PruneConfig>,
    /// Steps of the training proper (before fine-tuning or IMP rounds).
    train: usize,
    total: usize,
    /// Gradual: (t0, t1).
    span: (usize, usize),
    /// IMP: the weights at `rewind_step`.
    rewind: Option<BTreeMap<String, Tensor>>,
}

impl Plan {
    pub fn new(cfg: Option<&PruneConfig>, train: usize, per_epoch: usize) -> Result<Self> {
        let mut span = (0, 0);
        if let Some(c) = cfg {
            match c.method {
                Method::Gradual => {
                    let at = |f: Option<f64>| (f.unwrap_or(0.0) * train as f64).round() as usize;
                    span = (at(c.start), at(c.end));
                    if span.1 <= span.0 {
                        bail_usage!(
                            "pruning.start and pruning.end fall on the same step ({}) of this {train}-step run; widen them or train longer",
                            span.0
                        );
                    }
                }
                Method::Imp => {
                    let k = c.rewind_step.unwrap_or(0);
                    if k >= train {
                        bail_usage!(
                            "pruning.rewind_step {k} is not before the run's last step ({train}); use a smaller one"
                        );
                    }
                }
                _ => {}
            }
        }
        let extra = cfg.map_or(0, |c| c.extra_steps(train, per_epoch));
        Ok(Self {
            cfg: cfg.cloned(),
            train,
            total: train + extra,
            span,
            rewind: None,
        })
    }

    /// Steps the whole run takes.
    pub fn total_steps(&self) -> usize {
        self.total
    }

    /// The step `t` (0-based, of [`Plan::total_steps`]) as a step of the
    /// learning-rate schedule of the training proper: fine-tuning stays at
    /// the last step's rate; each IMP round replays the steps after the
    /// rewind step.
    pub fn schedule_step(&self, t: usize) -> usize {
        if t < self.train {
            return t;
        }
        match &self.cfg {
            Some(c) if c.method == Method::Imp => {
                let k = c.rewind_step.unwrap_or(0);
                k + (t - self.train) % (self.train - k)
            }
            _ => self.train - 1,
        }
    }

    /// The sparsity a gradual run prunes to after step `done`, if it
    /// prunes then: steps t0, t0 + frequency, ... before t1, and t1.
    pub fn gradual_target(&self, done: usize) -> Option<f64> {
        let c = self.cfg.as_ref()?;
        if c.method != Method::Gradual {
            return None;
        }
        let (t0, t1) = self.span;
        let on =
            done == t1 || (done >= t0 && done < t1 && (done - t0).is_multiple_of(c.frequency?));
        on.then(|| {
            cubic(
                done,
                t0,
                t1,
                c.initial_sparsity.unwrap_or(0.0),
                c.sparsity.unwrap_or(0.0),
            )
        })
    }

    /// Called after optimizer step number `done` (1-based): prunes, takes
    /// or restores the rewind point, as the method says.
    pub fn after_step(
        &mut self,
        done: usize,
        model: &Model,
        opt: &mut dyn Optimizer,
    ) -> Result<()> {
        let Some(c) = self.cfg.clone() else {
            return Ok(());
        };
        let policy = c.state.unwrap_or_default();
        match c.method {
            Method::None => {}
            Method::Oneshot => {
                if done == self.train {
                    let s = c.sparsity.unwrap_or(0.0);
                    prune_to(model, opt, s, c.criterion, c.scope, policy)?;
                }
            }
            Method::Gradual => {
                if let Some(s) = self.gradual_target(done)
                    && s > 0.0
                {
                    prune_to(model, opt, s, c.criterion, c.scope, policy)?;
                }
            }
            Method::Imp => {
                let k = c.rewind_step.unwrap_or(0);
                // Step 0, the initialisation, is taken by `start`.
                if k > 0 && done == k {
                    self.rewind = Some(model.params().snapshot()?);
                }
                let round_len = self.train - k;
                if done >= self.train && (done - self.train).is_multiple_of(round_len) {
                    let round = (done - self.train) / round_len + 1;
                    if round <= c.rounds.unwrap_or(0) {
                        let rate = c.rate.unwrap_or(0.0);
                        let s = 1.0 - (1.0 - rate).powi(round as i32);
                        let w = weights(model);
                        let sc = scores(&w, c.criterion, opt)?;
                        let masks = mask_tensors(&w, &keep_flags(&sc, s, c.scope), &opt.masks())?;
                        let snap = self.rewind.as_ref().expect("taken at the rewind step");
                        rewind(model, snap)?;
                        opt.set_masks(masks, StatePolicy::Reset)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Called once before the first step: IMP with `rewind_step = 0` takes
    /// the initial weights as its rewind point.
    pub fn start(&mut self, model: &Model) -> Result<()> {
        if let Some(c) = &self.cfg
            && c.method == Method::Imp
            && c.rewind_step == Some(0)
        {
            self.rewind = Some(model.params().snapshot()?);
        }
        Ok(())
    }

    /// The scores of the final network with its one-shot curve, and the
    /// masks' sparsity when the run pruned in training.
    pub fn scores(
        &self,
        acc: f64,
        points: &[PrunePoint],
        model: &Model,
        opt: &dyn Optimizer,
    ) -> Result<Option<PruneScores>> {
        let Some(mut s) = prune_scores(acc, points) else {
            return Ok(None);
        };
        if self.cfg.as_ref().is_some_and(|c| c.method != Method::None) {
            s.mask_sparsity = Some(mask_sparsity(model, opt)?);
        }
        Ok(Some(s))
    }

    /// The criterion and scope of the final one-shot curve.
    pub fn curve_settings(&self) -> (Criterion, Scope) {
        self.cfg
            .as_ref()
            .map_or((Criterion::Magnitude, Scope::Global), |c| {
                (c.criterion, c.scope)
            })
    }
}

/// How a run's final one-shot curve prunes, for headings: "magnitude
/// pruning" without a `pruning` setting (as before it existed).
pub fn curve_name(cfg: Option<&PruneConfig>) -> String {
    let Some(c) = cfg else {
        return "magnitude pruning".into();
    };
    let what = match c.criterion {
        Criterion::Magnitude => "magnitude pruning",
        Criterion::Wv => "w²·v̂ pruning",
    };
    let scope = match c.scope {
        Scope::Global => "",
        Scope::Layer => ", per layer",
    };
    let of = if c.method == Method::None {
        ""
    } else {
        " of the final, pruned network"
    };
    format!("{what}{scope}{of}")
}

/// Restores every parameter to a snapshot (weights and biases), bit for bit.
pub fn rewind(model: &Model, snapshot: &BTreeMap<String, Tensor>) -> Result<()> {
    model.params().restore(snapshot)
}

/// Held-out accuracy with a fraction of the weights removed in one shot
/// (by the run's criterion and scope), without retraining.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrunePoint {
    #[serde(deserialize_with = "crate::io::nan_from_null")]
    pub frac: f64,
    #[serde(deserialize_with = "crate::io::nan_from_null")]
    pub test_acc: f64,
    #[serde(deserialize_with = "crate::io::nan_from_null")]
    pub test_loss: f64,
}
