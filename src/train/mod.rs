//! One training run: model, data, optimizer, schedule; evaluation on the
//! held-out split; every measure at the end. The result is a [`RunRecord`],
//! the JSON written per run (a study adds the run's place in it:
//! [`crate::experiment::record::StudyRecord`]).

pub mod checks;
mod config;
mod measures;
mod record;
mod run;
#[cfg(test)]
mod tests;

pub use crate::prune::PrunePoint;
pub use config::{Schedule, TrainConfig, default_prune};
pub use measures::evaluate;
pub use measures::weight_measures_of;
pub use record::{EvalPoint, Final, RunRecord, Status};
pub use run::{RunOptions, Trained, checkpoint_bytes, progress_bar, run, run_on};
