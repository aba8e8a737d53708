//! The training loop: data, model and optimizer, evaluations, pruning,
//! the checkpoint, and the record at the end.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{debug, info};

use super::config::TrainConfig;
use super::measures::{
    GradTracker, evaluate, filters_with_dead, final_measures, named_tensors, shrinkage,
    weight_values,
};
use super::record::{EvalPoint, Final, RunRecord, Status};
use crate::bail_usage;
use crate::data::{self, Batch, Batcher, Dataset, Task};
use crate::metrics::{self, DeadUnits};
use crate::models::Model;
use crate::optim;
use crate::provenance;
use crate::prune;

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
///
/// The run trains on the worker threads of a rayon pool of its own, as
/// many as the global pool's (`RAYON_NUM_THREADS`): its parallel loops then
/// start on a worker of that pool instead of being handed to the global
/// pool from outside it and waited for (two context switches a loop), and
/// the runs a sweep trains at once (`--jobs`, one thread each) do not
/// share the global pool's one thread. The threads' number, and so every
/// result, is the same.
pub fn run_on(
    cfg: &TrainConfig,
    ds: &Dataset,
    device: &Device,
    opts: &RunOptions,
) -> Result<Trained> {
    let threads = rayon::current_num_threads();
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| train_on(cfg, ds, device, opts)),
        // No threads to be had: the calling thread and the global pool.
        Err(_) => train_on(cfg, ds, device, opts),
    }
}

/// [`run_on`]'s training, on whichever threads it is called from.
fn train_on(
    cfg: &TrainConfig,
    ds: &Dataset,
    device: &Device,
    opts: &RunOptions,
) -> Result<Trained> {
    cfg.validate()?;
    cfg.check_data(ds)?;
    super::checks::check_with_data(cfg, ds)?;
    let start = Instant::now();
    let model = cfg.model.build(&ds.task, cfg.seed, DType::F32, device)?;
    let mut opt = optim::build(&cfg.optimizer, model.named_params())?;
    let mut batcher = Batcher::new(&ds.train, cfg.batch_size, cfg.context(), cfg.seed, device)?;
    let per_epoch = batcher.steps_per_epoch(&ds.train);
    let train_steps = train_steps(cfg, per_epoch)?;
    // Fine-tuning and IMP rounds add steps after the training proper.
    let mut plan = prune::Plan::new(cfg.pruning.as_ref(), train_steps, per_epoch)?;
    let total = plan.total_steps();
    plan.start(&model)?;
    let initial = weight_values(&model)?;
    let eval_every = eval_every(cfg, per_epoch, total);
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
    let point = |step: usize, lr: f64, train_loss: Option<f64>| {
        let at = Step {
            step,
            per_epoch,
            lr,
            train_loss,
        };
        eval_point(&model, &ds.task, &evals, &initial, at)
    };
    let mut tracker = cfg
        .track_gradients
        .then(|| GradTracker::new(&model))
        .transpose()?;
    history.push(point(0, cfg.schedule.lr(base_lr, 0, train_steps), None)?);
    for t in 0..total {
        let lr = cfg.schedule.lr(base_lr, plan.schedule_step(t), train_steps);
        opt.set_learning_rate(lr);
        let batch = batcher.next(&ds.train)?;
        let (l, grads) = model.loss_and_grads(&ds.task, &batch)?;
        if !l.is_finite() {
            // Logged at info: the caller reports a diverged run in its own
            // one line (`train`'s error, a study's line per run), so a warning
            // here would say it twice.
            info!(
                "{}: step {}: loss is {l}; the run diverged",
                who(cfg, ds),
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
    let (status, error, final_) = if status == Status::Done {
        let mut f = final_measures(
            cfg,
            &model,
            ds,
            &evals,
            last_train_loss,
            &plan,
            opt.as_ref(),
        )?;
        f.shrinkage = Some(shrinkage(&model, &initial)?);
        checked_final(cfg, ds, f, tracker.as_ref())?
    } else {
        (status, None, None)
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

/// Where an evaluation falls in training.
struct Step {
    step: usize,
    per_epoch: usize,
    lr: f64,
    train_loss: Option<f64>,
}

/// An evaluation during training: held-out loss and accuracy, the
/// weights' sparsity, and how far they are from `initial` (the weights at
/// step 0, [`weight_values`]), at `step`.
fn eval_point(
    model: &Model,
    task: &Task,
    evals: &[Batch],
    initial: &[(String, Vec<f64>)],
    at: Step,
) -> Result<EvalPoint> {
    let Step {
        step,
        per_epoch,
        lr,
        train_loss,
    } = at;
    // With conv layers, the pass also collects which filters and dense
    // units fire, for the filter measures over training.
    let convs = model.conv_layers();
    let mut dead = DeadUnits::default();
    let (test_loss, test_acc) = evaluate(model, task, evals, (convs > 0).then_some(&mut dead))?;
    let (filters, dense_dead) = if convs > 0 {
        let f = filters_with_dead(model, &named_tensors(model), &mut dead)?;
        (f, Some(dead.report()))
    } else {
        (None, None)
    };
    // One copy of the weights serves the measures and the distance.
    let now = weight_values(model)?;
    let m = metrics::Measures::of_group(&now.iter().map(|(_, v)| v.as_slice()).collect::<Vec<_>>());
    let parts: Vec<(&[f64], &[f64])> = initial
        .iter()
        .zip(&now)
        .map(|((_, i), (_, e))| (i.as_slice(), e.as_slice()))
        .collect();
    let dist = metrics::relative_distance(&parts);
    let shrunk = metrics::Shrinkage::of_group(&parts).frac;
    debug!(
        "step {step}: train {train_loss:?}, test {test_loss:.4}, acc {test_acc:.4}, |w - w0|/|w0| {dist:.4}, |w| < 0.01 RMS {:?}, shrunk {:?}",
        m.scale_rel_near_zero_frac.get("0.01"),
        shrunk.get("0.1")
    );
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
        weights_dist_init: dist.is_finite().then_some(dist),
        weights_shrinkage: shrunk,
        filters,
        dense_dead,
    })
}

/// The steps of the training proper (pruning's fine-tuning comes after).
fn train_steps(cfg: &TrainConfig, per_epoch: usize) -> Result<usize> {
    let train_steps = match (cfg.epochs, cfg.steps) {
        (Some(e), _) => e.saturating_mul(per_epoch),
        (_, Some(s)) => s,
        _ => unreachable!("validated"),
    };
    if train_steps == 0 {
        bail_usage!("the run has 0 steps to train; give --steps or --epochs of at least 1");
    }
    Ok(train_steps)
}

/// The steps between evaluations: as set, else every epoch, or ten times
/// in a run given in steps.
fn eval_every(cfg: &TrainConfig, per_epoch: usize, total: usize) -> usize {
    cfg.eval_every.unwrap_or(if cfg.epochs.is_some() {
        per_epoch
    } else {
        total.div_ceil(10)
    })
}

/// The run in a log line: model, data, optimizer and seed.
fn who(cfg: &TrainConfig, ds: &Dataset) -> String {
    format!(
        "{} on {}, {}, seed {}",
        cfg.model.name(),
        ds.name,
        cfg.optimizer.short(),
        cfg.seed
    )
}

/// A finished run's final measures, with the accumulated gradients when
/// they were tracked: (status, error, final), the run recorded as diverged
/// when a final measure is not finite.
fn checked_final(
    cfg: &TrainConfig,
    ds: &Dataset,
    mut f: Final,
    tracker: Option<&GradTracker>,
) -> Result<(Status, Option<String>, Option<Final>)> {
    if let Some(tr) = tracker {
        f.gradient_buckets = Some(tr.buckets()?);
    }
    Ok(match f.first_non_finite() {
        None => (Status::Done, None, Some(f)),
        Some(what) => {
            info!(
                "{}: the final {what} is not finite; the run is recorded as diverged",
                who(cfg, ds)
            );
            (
                Status::Diverged,
                Some(format!(
                    "the final {what} is not finite; no final result is recorded"
                )),
                None,
            )
        }
    })
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
