//! Checks of a run's settings against each other and against its data,
//! made before anything trains, for settings that would otherwise fail in
//! the middle of a study or silently do nothing: a learning-rate warmup
//! longer than the run, an IMP rewind step at or after the run's last step,
//! a CNN with more max-pools than its image has halvings.
//!
//! [`check_config`] needs only the config (the study file's and `train`'s
//! flags are checked at load); [`check_with_data`] needs the loaded data,
//! for runs given in epochs. Every error is a usage error naming the key.

use anyhow::Result;

use super::config::{Schedule, TrainConfig};
use crate::bail_usage;
use crate::data::{Dataset, Task, steps_per_epoch};
use crate::models::ModelConfig;

/// The checks that need no data.
pub fn check_config(cfg: &TrainConfig) -> Result<()> {
    if let ModelConfig::Cnn(c) = &cfg.model
        && let (Task::Classify { inputs, .. }, _) = cfg.data.estimate()
        && let Ok(side) = c.side(inputs)
        && c.final_side(side) == 0
    {
        let most = (usize::BITS - 1 - side.leading_zeros()) as usize;
        bail_usage!(
            "cnn: channels = {:?} with pool_every = {} gives {} max-pools, which shrink a {side} x {side} image to nothing; give at most {most} pools (fewer channels entries or a larger pool_every)",
            c.channels,
            c.pool_every,
            c.pools()
        );
    }
    let mut seen = Vec::<f64>::new();
    for &f in &cfg.prune_fracs {
        if seen.contains(&f) {
            bail_usage!("prune_fracs lists {f} twice; give each fraction once");
        }
        seen.push(f);
    }
    if let Some(steps) = cfg.steps {
        check_length(cfg, steps, None)?;
    }
    Ok(())
}

/// The checks that need the run's length in steps, for runs given in
/// epochs (the steps per epoch depend on the data).
pub fn check_with_data(cfg: &TrainConfig, ds: &Dataset) -> Result<()> {
    let per_epoch = steps_per_epoch(&ds.train, cfg.batch_size, cfg.context());
    let steps = match (cfg.epochs, cfg.steps) {
        (Some(e), _) => e.saturating_mul(per_epoch),
        (_, Some(s)) => s,
        _ => return Ok(()),
    };
    check_length(cfg, steps, Some(per_epoch))
}

/// `steps`: the training proper's length; `per_epoch` when known.
fn check_length(cfg: &TrainConfig, steps: usize, per_epoch: Option<usize>) -> Result<()> {
    let of = match (cfg.epochs, per_epoch) {
        (Some(e), Some(p)) => format!("{e} epochs of {p} steps = {steps} steps"),
        _ => format!("{steps} steps"),
    };
    if let Schedule::WarmupCosine { warmup_steps, .. } = cfg.schedule
        && warmup_steps >= steps
    {
        bail_usage!(
            "schedule.warmup_steps = {warmup_steps} is not shorter than the run ({of}): the learning rate would never reach its value; use at most {} (--warmup-steps)",
            steps.saturating_sub(1)
        );
    }
    if let Some(p) = &cfg.pruning
        && let Some(k) = p.rewind_step
        && k >= steps
    {
        bail_usage!(
            "pruning.rewind_step = {k} is not before the run's last step ({of}); use at most {}",
            steps.saturating_sub(1)
        );
    }
    if let Some(per_epoch) = per_epoch {
        crate::prune::Plan::new(cfg.pruning.as_ref(), steps, per_epoch)?;
    }
    Ok(())
}
