//! A run's settings ([`TrainConfig`], its learning-rate [`Schedule`]) and
//! their checks before training: sizes, limits, the data, the memory.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bail_usage;
use crate::data::{DataConfig, Dataset, Split, Task};
use crate::limits::human_bytes;
use crate::models::ModelConfig;
use crate::optim::OptimizerConfig;
use crate::prune::PruneConfig;

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
    /// measures, activations and data would not fit in the memory available
    /// now ([`crate::limits::available`]: the machine's MemAvailable, the
    /// process's rlimits and its cgroup; no check where none is known).
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
