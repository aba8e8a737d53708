//! sparsity-lab: does the optimizer decide how sparse a trained network ends
//! up, and which remedies work?
//!
//! The parts, from the bottom up (each uses only parts listed before it):
//! - [`error`] (usage errors: the user's to fix, one line, exit code 2),
//!   [`io`] (files written atomically, JSON read back), [`rng`] (the
//!   seeded random numbers everything draws from) and [`limits`] (the
//!   memory the process may still take, and the allocator wrapper that
//!   turns running out into one line and exit status 1);
//! - [`data`] (MNIST-like images, character-level text, synthetic tasks),
//!   [`metrics`] (sparsity measures of plain numbers) and [`optim`]
//!   (optimizers equal to PyTorch's, with every regularisation mode);
//! - [`models`] (the MLP, the CNN and the Transformer on a seeded
//!   parameter store) and [`provenance`] (the code, machine and data a
//!   number came from);
//! - [`prune`] (magnitude and w²·v̂ pruning: one-shot curves, gradual and
//!   iterative schedules, their masks and the prunability scores);
//! - [`train`] (one run: training, evaluation, every measure, its record)
//!   and [`trace`] (optimizer paths on test functions);
//! - [`experiment`] (studies: a grid of runs, one record per run, and the
//!   report built from the records alone);
//! - [`cli`], which the binary calls.
//!
//! The binary also picks the allocator (mimalloc); the library leaves that
//! to whoever uses it.

pub mod cli;
pub mod data;
pub mod error;
pub mod experiment;
pub mod io;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod provenance;
pub mod prune;
pub mod rng;
pub mod trace;
pub mod train;
