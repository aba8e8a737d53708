//! Studies: a grid of runs described by a file, one JSON per run, and a
//! report built from those files alone (after DeepOBS).

pub mod claim;
pub mod compare;
pub mod hypotheses;
pub mod plots;
pub mod record;
pub mod report;
pub mod runner;
pub mod stats;
pub mod study;
pub mod summary;
pub mod tuning;

pub use report::{missing_runs, remeasure, write_report};
pub use runner::{SweepOptions, SweepSummary, folders, parse_shard, run_study, small_models_only};
pub use study::{Study, list, resolve};
