//! One training run: model, data, optimizer, schedule; evaluation on the
//! held-out split; every measure at the end. The result is a [`RunRecord`],
//! the JSON written per run (a study adds the run's place in it:
//! [`crate::experiment::record::StudyRecord`]).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::bail_usage;
use crate::data::{self, Batch, Batcher, DataConfig, Dataset, Split, Task};
use crate::io::nan_from_null;
use crate::metrics::{
    self, ActivityBucket, DeadUnits, DeadUnitsReport, GradBucket, LogHistogram, ModelMeasures,
};
use crate::models::{Model, ModelConfig};
use crate::optim::{self, OptimizerConfig};
use crate::provenance::{self, Provenance};
pub use crate::prune::PrunePoint;
use crate::prune::{self, PruneConfig, PruneScores};

use crate::limits::human_bytes;

/// The learning rate over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The optimizer's lr throughout.
    #[default]
    Constant,
    /// Linear warmup from lr/warmup_steps to lr, then cosine decay to
    /// lr * min_lr_frac at the last step.
    WarmupCosine {
        warmup_steps: usize,
        min_lr_frac: f64,
    },
}

impl Schedule {
    /// The learning rate of step `t` (0-based) of `total`.
    pub fn lr(&self, base: f64, t: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::WarmupCosine {
                warmup_steps,
                min_lr_frac,
            } => {
                if t < warmup_steps {
                    base * (t + 1) as f64 / warmup_steps as f64
                } else {
                    let span = total.saturating_sub(warmup_steps).max(1) as f64;
                    let progress = ((t - warmup_steps) as f64 / span).min(1.0);
                    let min = base * min_lr_frac;
                    min + 0.5 * (base - min) * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}

/// Everything that defines a run except the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub optimizer: OptimizerConfig,
    /// Passes over the training set; give this or `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Optimizer steps; give this or `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub schedule: Schedule,
    /// Evaluate every this many steps (default: once per epoch, or 10 times
    /// in a steps-based run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// At most this many context windows of held-out text per evaluation.
    #[serde(default = "default_eval_windows")]
    pub eval_windows: usize,
    /// Fractions of weights removed for accuracy-after-pruning.
    #[serde(default = "default_prune")]
    pub prune_fracs: Vec<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Accumulate, per weight element, the sum over steps of |g| and report
    /// the weights bucketed by it at the end ([`Final::gradient_buckets`]).
    /// Reads the gradients only: the training numbers are the same either
    /// way. Left out of the JSON when off, so that configs without it keep
    /// their run-file hashes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_gradients: bool,
    /// Pruning in training ([`crate::prune`]); left out of the JSON when
    /// absent, so that configs without it keep their run-file hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<PruneConfig>,
}

fn default_batch() -> usize {
    64
}
fn default_eval_windows() -> usize {
    200
}
pub fn default_prune() -> Vec<f64> {
    vec![0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
}

impl TrainConfig {
    pub fn new(model: ModelConfig, data: DataConfig, optimizer: OptimizerConfig) -> Self {
        Self {
            model,
            data,
            optimizer,
            epochs: None,
            steps: None,
            batch_size: default_batch(),
            schedule: Schedule::Constant,
            eval_every: None,
            eval_windows: default_eval_windows(),
            prune_fracs: default_prune(),
            seed: 0,
            track_gradients: false,
            pruning: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match (self.epochs, self.steps) {
            (Some(0), _) | (_, Some(0)) => bail_usage!("epochs and steps must be > 0"),
            (None, None) => bail_usage!("give either `epochs` or `steps`"),
            (Some(_), Some(_)) => bail_usage!("give either `epochs` or `steps`, not both"),
            _ => {}
        }
        if self.batch_size == 0 {
            bail_usage!("batch_size must be > 0");
        }
        if self.eval_every == Some(0) {
            bail_usage!("eval_every must be > 0");
        }
        if let Some(f) = self.prune_fracs.iter().find(|f| !(**f > 0.0 && **f < 1.0)) {
            bail_usage!("prune_fracs must lie in (0, 1), got {f}");
        }
        if let Schedule::WarmupCosine { min_lr_frac, .. } = self.schedule
            && !(0.0..=1.0).contains(&min_lr_frac)
        {
            bail_usage!("schedule.min_lr_frac must be in [0, 1], got {min_lr_frac}");
        }
        if self.eval_windows == 0 {
            bail_usage!("eval_windows must be > 0, got 0");
        }
        self.model.validate()?;
        self.data.validate()?;
        self.check_model_fits_data()?;
        self.optimizer.validate()?;
        if let Some(p) = &self.pruning {
            p.validate(&self.optimizer)?;
        }
        let (task, data_bytes) = self.data.estimate();
        self.check_memory(&task, data_bytes)
    }

    /// Checks the settings against the loaded data, before any training:
    /// both splits non-empty, a text window of `context + 1` tokens in each
    /// split, sequences that fit the context, and the memory the run needs
    /// with the data's real sizes. Every error is a usage error that names
    /// the setting to change. [`run_on`] calls it first; a sweep can call it
    /// as soon as the data is loaded.
    pub fn check_data(&self, ds: &Dataset) -> Result<()> {
        let name = &ds.name;
        let source = ds.location.as_deref().unwrap_or(&ds.description);
        if ds.train.is_empty() {
            bail_usage!("{name}: the training split is empty ({source}); nothing to train on");
        }
        if ds.test.is_empty() {
            bail_usage!(
                "{name}: the held-out split is empty ({source}); a run needs held-out data to report a result"
            );
        }
        if let (Split::Stream { tokens: train }, Split::Stream { tokens: test }) =
            (&ds.train, &ds.test)
        {
            let c = self.context();
            let need = c.saturating_add(1);
            if train.len() < need || test.len() < need {
                let most = train.len().min(test.len()).saturating_sub(1);
                bail_usage!(
                    "{name}: context {c} needs windows of {need} characters in each split, but {source} has {} for training and {} held out; use --context {most} or less, or a longer text",
                    train.len(),
                    test.len()
                );
            }
        }
        if let (Task::LastToken { len, .. }, ModelConfig::Transformer(t)) = (&ds.task, &self.model)
            && *len > t.context
        {
            bail_usage!(
                "transformer: context {} is shorter than the {name} sequences ({len}); use --context {len} or more",
                t.context
            );
        }
        crate::checks::check_with_data(self, ds)?;
        self.check_memory(&ds.task, 0.0)
    }

    /// The model's kind must suit the data's task.
    fn check_model_fits_data(&self) -> Result<()> {
        let ok = matches!(
            (&self.model, &self.data),
            (
                ModelConfig::Mlp(_),
                DataConfig::Mnist(_) | DataConfig::FashionMnist(_) | DataConfig::Teacher(_)
            ) | (
                ModelConfig::Cnn(_),
                DataConfig::Mnist(_) | DataConfig::FashionMnist(_)
            ) | (
                ModelConfig::Transformer(_),
                DataConfig::Modadd(_) | DataConfig::Text(_)
            )
        );
        if !ok {
            bail_usage!(
                "model `{}` cannot learn `{}`; use mlp for mnist, fashion-mnist and teacher, cnn for mnist and fashion-mnist, transformer for text and modadd",
                self.model.name(),
                self.data.name()
            );
        }
        Ok(())
    }

    /// Refuses a run whose parameters, gradients, optimizer state, final
    /// measures, activations and data would not fit in the memory the
    /// process may still take ([`crate::limits::available`]: the machine's
    /// MemAvailable, the rlimits, the cgroup; no check where none is known).
    fn check_memory(&self, task: &Task, data_bytes: f64) -> Result<()> {
        // The least of the machine's, the rlimits' and the cgroup's.
        let Some(crate::limits::Available {
            bytes: available,
            limit,
        }) = crate::limits::available()
        else {
            return Ok(());
        };
        let params = self.model.param_count(task);
        let eval_rows = 1000.max(self.batch_size);
        let eval_rows = if matches!(task, Task::NextToken { .. }) {
            eval_rows.min(self.eval_windows)
        } else {
            eval_rows
        };
        let rows = self.batch_size.max(eval_rows);
        // f32 parameters, gradients, up to three state tensors and the
        // pruning snapshot; the final measures hold four f64 copies; the
        // gradient tracker two more (accumulated |g| and the start).
        let tracker = if self.track_gradients { 8.0 * 2.0 } else { 0.0 };
        let bytes = params * (4.0 * 6.0 + 8.0 * 4.0 + tracker)
            + 4.0 * self.model.activation_count(task, rows)
            + data_bytes;
        if bytes > available {
            bail_usage!(
                "this run needs about {} of memory ({:.3e} parameters with gradients and optimizer state, plus activations and data) but {} is {limit}; use smaller sizes (--hidden, --d-model, --layers, --context, --batch-size or the data's size)",
                human_bytes(bytes),
                params,
                human_bytes(available)
            );
        }
        Ok(())
    }

    /// Whether one thread trains this run faster than all cores: the MLP at
    /// batch sizes up to 256, whose matrix products are too small to split
    /// (784-128-10, 2 epochs of MNIST at batch 64: 0.74 s on one thread,
    /// 0.87 s and twice the CPU time on two, with 65,000 context switches).
    /// The CNN at the same batch sizes too: its convolutions are single
    /// matrix products of a few million multiply-adds, and a study fills the
    /// cores with one run each (BENCHMARKS.md, cnn against cnn-2t).
    pub fn prefers_one_thread(&self) -> bool {
        matches!(self.model, ModelConfig::Mlp(_) | ModelConfig::Cnn(_)) && self.batch_size <= 256
    }

    /// The context length used to cut text into windows (0 for the MLP).
    pub fn context(&self) -> usize {
        match &self.model {
            ModelConfig::Transformer(t) => t.context,
            ModelConfig::Mlp(_) | ModelConfig::Cnn(_) => 0,
        }
    }
}

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
    /// Prunability scores of the final network over [`prune::GRID`] (when
    /// `prune_fracs` covers it), with the masks' sparsity after pruning in
    /// training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_scores: Option<PruneScores>,
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

/// Options of a run that do not change its numbers.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// A progress bar to drive (hidden when None).
    pub progress: Option<ProgressBar>,
}

/// A trained model, for saving.
pub struct Trained {
    pub record: RunRecord,
    pub model: Model,
}

/// Trains and measures. A non-finite loss ends the run as `diverged`; it is
/// not an error. Errors are for bad configuration or I/O.
pub fn run(cfg: &TrainConfig, device: &Device, opts: &RunOptions) -> Result<Trained> {
    cfg.validate()?;
    let dataset = cfg.data.load(cfg.seed)?;
    run_on(cfg, &dataset, device, opts)
}

/// As [`run`], on already loaded data (a sweep loads it once).
pub fn run_on(
    cfg: &TrainConfig,
    ds: &Dataset,
    device: &Device,
    opts: &RunOptions,
) -> Result<Trained> {
    cfg.validate()?;
    cfg.check_data(ds)?;
    let start = Instant::now();
    let model = cfg.model.build(&ds.task, cfg.seed, DType::F32, device)?;
    let mut opt = optim::build(&cfg.optimizer, model.named_params())?;
    let mut batcher = Batcher::new(&ds.train, cfg.batch_size, cfg.context(), cfg.seed, device)?;
    let per_epoch = batcher.steps_per_epoch(&ds.train);
    let train_steps = match (cfg.epochs, cfg.steps) {
        (Some(e), _) => e.saturating_mul(per_epoch),
        (_, Some(s)) => s,
        _ => unreachable!("validated"),
    };
    if train_steps == 0 {
        bail_usage!("the run has 0 steps to train; give --steps or --epochs of at least 1");
    }
    // Fine-tuning and IMP rounds add steps after the training proper.
    let mut plan = prune::Plan::new(cfg.pruning.as_ref(), train_steps, per_epoch)?;
    let total = plan.total_steps();
    plan.start(&model)?;
    let eval_every = cfg.eval_every.unwrap_or(if cfg.epochs.is_some() {
        per_epoch
    } else {
        total.div_ceil(10)
    });
    let evals = data::eval_batches(
        &ds.test,
        1000.max(cfg.batch_size),
        cfg.context(),
        cfg.eval_windows,
        device,
    )?;
    let base_lr = cfg.optimizer.lr();
    info!(
        "run: {} on {} ({} params), {}, {total} steps, seed {}",
        cfg.model.name(),
        ds.name,
        model.params().count(),
        cfg.optimizer.short(),
        cfg.seed
    );
    if let Some(pb) = &opts.progress {
        pb.set_length(total as u64);
        pb.set_position(0);
    }
    let mut history = vec![];
    let mut status = Status::Done;
    let mut loss_sum = 0.0;
    let mut loss_n = 0usize;
    let mut last_train_loss = f64::NAN;
    let mut steps_done = 0;
    // The starting point, so that curves show where training began.
    let point = |step: usize, lr: f64, train_loss: Option<f64>| -> Result<EvalPoint> {
        let (test_loss, test_acc) = evaluate(&model, &ds.task, &evals, None)?;
        let m = weight_measures(&model)?;
        debug!("step {step}: train {train_loss:?}, test {test_loss:.4}, acc {test_acc:.4}");
        Ok(EvalPoint {
            step,
            epoch: step as f64 / per_epoch as f64,
            lr,
            train_loss,
            test_loss,
            test_acc,
            weights_exact_zero_frac: m.exact_zero_frac,
            weights_near_zero_frac: m.near_zero_frac,
            weights_rel_near_zero_frac: m.rel_near_zero_frac,
            weights_scale_rel_near_zero_frac: m.scale_rel_near_zero_frac,
        })
    };
    let mut tracker = if cfg.track_gradients {
        Some(GradTracker::new(&model)?)
    } else {
        None
    };
    history.push(point(0, cfg.schedule.lr(base_lr, 0, train_steps), None)?);
    for t in 0..total {
        let lr = cfg.schedule.lr(base_lr, plan.schedule_step(t), train_steps);
        opt.set_learning_rate(lr);
        let batch = batcher.next(&ds.train)?;
        let (l, grads) = model.loss_and_grads(&ds.task, &batch)?;
        if !l.is_finite() {
            warn!(
                "{} on {}, {}, seed {}: step {}: loss is {l}; the run diverged",
                cfg.model.name(),
                ds.name,
                cfg.optimizer.short(),
                cfg.seed,
                t + 1
            );
            status = Status::Diverged;
            break;
        }
        if let Some(tr) = &mut tracker {
            tr.add(&grads)?;
        }
        opt.step(&grads)?;
        steps_done = t + 1;
        plan.after_step(steps_done, &model, opt.as_mut())?;
        loss_sum += l;
        loss_n += 1;
        if let Some(pb) = &opts.progress {
            pb.inc(1);
            if t % 20 == 0 {
                pb.set_message(format!("loss {l:.4}"));
            }
        }
        if steps_done % eval_every == 0 || steps_done == total {
            last_train_loss = loss_sum / loss_n as f64;
            let p = point(steps_done, lr, Some(last_train_loss))?;
            let finite = p.test_loss.is_finite();
            history.push(p);
            loss_sum = 0.0;
            loss_n = 0;
            if !finite {
                status = Status::Diverged;
                break;
            }
        }
    }
    let mut error = None;
    let final_ = if status == Status::Done {
        let mut f = final_measures(
            cfg,
            &model,
            ds,
            &evals,
            last_train_loss,
            &plan,
            opt.as_ref(),
        )?;
        if let Some(tr) = &tracker {
            f.gradient_buckets = Some(tr.buckets()?);
        }
        match f.first_non_finite() {
            None => Some(f),
            Some(what) => {
                warn!(
                    "{} on {}, {}, seed {}: the final {what} is not finite; the run is recorded as diverged",
                    cfg.model.name(),
                    ds.name,
                    cfg.optimizer.short(),
                    cfg.seed
                );
                status = Status::Diverged;
                error = Some(format!(
                    "the final {what} is not finite; no final result is recorded"
                ));
                None
            }
        }
    } else {
        None
    };
    let record = RunRecord {
        status,
        error,
        config: cfg.clone(),
        seed: cfg.seed,
        device: provenance::device_name(device),
        data: ds.description.clone(),
        params: model.params().count(),
        optimizer_state_bytes: opt.state_bytes(),
        steps_done,
        history,
        r#final: final_,
        wall_seconds: start.elapsed().as_secs_f64(),
        provenance: None,
        checkpoint: None,
    };
    Ok(Trained { record, model })
}

/// A run's final weights as a safetensors file: torch's parameter names,
/// and in the header's metadata the resolved config (`config`, JSON), the
/// seed, the status, the steps done, and `extra` (a study adds the run's
/// place in it).
pub fn checkpoint_bytes(
    model: &Model,
    record: &RunRecord,
    extra: &[(&str, String)],
) -> Result<Vec<u8>> {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(
        "format".to_string(),
        "sparsity-lab run checkpoint".to_string(),
    );
    meta.insert("config".to_string(), serde_json::to_string(&record.config)?);
    meta.insert("seed".to_string(), record.seed.to_string());
    meta.insert(
        "status".to_string(),
        serde_json::to_string(&record.status)?
            .trim_matches('"')
            .to_string(),
    );
    meta.insert("steps_done".to_string(), record.steps_done.to_string());
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    model.params().safetensors_bytes(meta)
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

/// Measures of the weights (tensors with two or more dimensions) alone.
fn weight_measures(model: &Model) -> Result<metrics::Measures> {
    let mut w = vec![];
    for (_, v) in model.named_params() {
        if v.rank() >= 2 {
            w.push(metrics::values(v.as_tensor())?);
        }
    }
    let parts: Vec<&[f64]> = w.iter().map(|v| v.as_slice()).collect();
    Ok(metrics::Measures::of_group(&parts))
}

/// The sum over steps of |g| of every weight element (tensors with two or
/// more dimensions), and the weights at the start, for
/// [`Final::gradient_buckets`]. Reads the gradients, never writes them.
struct GradTracker {
    weights: Vec<(candle_core::Var, Vec<f64>, Vec<f64>)>,
}

impl GradTracker {
    fn new(model: &Model) -> Result<Self> {
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
    fn add(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
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

    fn buckets(&self) -> Result<Vec<GradBucket>> {
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
fn input_activity(model: &Model, ds: &Dataset) -> Result<Option<Vec<ActivityBucket>>> {
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

fn final_measures(
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
    let named: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let (measures, weight_histogram) = weight_measures_of(&named)?;
    let conv = dead.split_first(model.conv_layers()).report();
    let filters = metrics::filter_measures(&named)?.map(|f| f.with_dead(&conv.per_layer));
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
    })
}

/// A progress bar in the project's style.
pub fn progress_bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher_cfg() -> TrainConfig {
        let mut c = TrainConfig::new(
            ModelConfig::by_name("mlp").unwrap(),
            DataConfig::Teacher(crate::data::synthetic::TeacherConfig {
                train_size: 50,
                test_size: 20,
                ..Default::default()
            }),
            OptimizerConfig::from_pairs("sgd", vec![]).unwrap(),
        );
        c.steps = Some(2);
        c
    }

    fn usage_msg(r: Result<()>) -> String {
        let e = r.unwrap_err();
        assert!(crate::error::is_usage(&e), "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn sizes_and_limits_are_refused_before_training() {
        let mut c = teacher_cfg();
        c.validate().unwrap();
        c.model = ModelConfig::Mlp(crate::models::MlpConfig { hidden: vec![0] });
        assert!(usage_msg(c.validate()).contains("hidden"));
        c.model = ModelConfig::Mlp(crate::models::MlpConfig {
            hidden: vec![100_000_000],
        });
        assert!(usage_msg(c.validate()).contains("memory"));
        let mut t = TrainConfig::new(
            ModelConfig::by_name("transformer").unwrap(),
            DataConfig::by_name("modadd").unwrap(),
            OptimizerConfig::from_pairs("adam", vec![]).unwrap(),
        );
        t.steps = Some(1);
        t.validate().unwrap();
        for (key, msg) in [
            ("d_model", "d_model"),
            ("heads", "heads"),
            ("layers", "layers"),
            ("context", "context"),
        ] {
            let mut bad = t.clone();
            let ModelConfig::Transformer(m) = &mut bad.model else {
                unreachable!()
            };
            match key {
                "d_model" => m.d_model = 0,
                "heads" => m.heads = 0,
                "layers" => m.layers = 0,
                _ => m.context = 0,
            }
            assert!(usage_msg(bad.validate()).contains(msg), "{key}");
        }
        let ModelConfig::Transformer(m) = &mut t.model else {
            unreachable!()
        };
        m.heads = 3;
        assert!(usage_msg(t.validate()).contains("multiple of heads"));
        let mut img = teacher_cfg();
        img.data = DataConfig::Mnist(crate::data::ImageConfig {
            train_limit: Some(0),
            ..Default::default()
        });
        assert!(usage_msg(img.validate()).contains("train_limit"));
        img.model = ModelConfig::by_name("transformer").unwrap();
        img.data = DataConfig::by_name("mnist").unwrap();
        assert!(usage_msg(img.validate()).contains("cannot learn"));
    }

    #[test]
    fn param_count_is_the_built_models() {
        let dev = Device::Cpu;
        for (model, data) in [("mlp", "teacher"), ("transformer", "modadd")] {
            let m = ModelConfig::by_name(model).unwrap();
            let (task, _) = DataConfig::by_name(data).unwrap().estimate();
            let built = m.build(&task, 0, DType::F32, &dev).unwrap();
            assert_eq!(
                m.param_count(&task),
                built.params().count() as f64,
                "{model}"
            );
        }
    }

    #[test]
    fn data_checks_need_a_window_in_each_split_and_held_out_data() {
        let mut c = teacher_cfg();
        c.model = ModelConfig::by_name("transformer").unwrap();
        c.data = DataConfig::by_name("text").unwrap();
        let ModelConfig::Transformer(m) = &mut c.model else {
            unreachable!()
        };
        m.context = 100;
        let ds = |train: usize, test: usize| Dataset {
            name: "text".into(),
            task: Task::NextToken { vocab: 5 },
            train: Split::Stream {
                tokens: vec![0; train],
            },
            test: Split::Stream {
                tokens: vec![0; test],
            },
            description: "text f: 1000 characters".into(),
            location: Some("f (1000 chars)".into()),
        };
        c.check_data(&ds(900, 101)).unwrap();
        let msg = usage_msg(c.check_data(&ds(900, 100)));
        assert!(msg.contains("--context 99"), "{msg}");
        assert!(usage_msg(c.check_data(&ds(100, 900))).contains("context 100"));
        assert!(usage_msg(c.check_data(&ds(900, 0))).contains("held-out"));
    }

    #[test]
    fn a_non_finite_final_measure_is_named() {
        let m = metrics::Measures::of(&[1.0, 2.0]);
        let mut f = Final {
            train_loss: 0.5,
            test_loss: 0.4,
            test_acc: 0.9,
            measures: ModelMeasures {
                tensors: Default::default(),
                weights: m.clone(),
                biases: m.clone(),
                total: m,
            },
            dead_units: None,
            filters: None,
            pruning: vec![PrunePoint {
                frac: 0.5,
                test_acc: 0.8,
                test_loss: 0.6,
            }],
            weight_histogram: LogHistogram::of(&[], -1.0, 1.0, 1.0),
            input_activity: None,
            gradient_buckets: None,
            prune_scores: None,
        };
        assert_eq!(f.first_non_finite(), None);
        f.pruning[0].test_loss = f64::INFINITY;
        assert_eq!(
            f.first_non_finite().as_deref(),
            Some("test loss at 50% pruned")
        );
        f.test_loss = f64::NAN;
        assert_eq!(f.first_non_finite().as_deref(), Some("test loss"));
        f.measures.weights = metrics::Measures::of(&[f64::NAN]);
        assert!(
            f.first_non_finite()
                .unwrap()
                .contains("values of the weights")
        );
    }

    #[test]
    fn records_with_non_finite_numbers_read_back() {
        let p = EvalPoint {
            step: 3,
            epoch: 0.5,
            lr: 0.1,
            train_loss: Some(f64::NAN),
            test_loss: f64::NAN,
            test_acc: 0.1,
            weights_exact_zero_frac: 0.0,
            weights_near_zero_frac: Default::default(),
            weights_rel_near_zero_frac: f64::INFINITY,
            weights_scale_rel_near_zero_frac: Default::default(),
        };
        let json = serde_json::to_string(&p).unwrap();
        let back: EvalPoint = serde_json::from_str(&json).unwrap();
        assert!(back.test_loss.is_nan() && back.train_loss.is_none());
    }

    #[test]
    fn warmup_cosine_schedule() {
        let s = Schedule::WarmupCosine {
            warmup_steps: 10,
            min_lr_frac: 0.1,
        };
        assert!((s.lr(1.0, 0, 110) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 9, 110) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 60, 110) - 0.55).abs() < 1e-12);
        assert!((s.lr(1.0, 110, 110) - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.3, 5, 10), 0.3);
    }
}
