//! sparsity-lab: does the optimizer decide how sparse a trained network ends
//! up, and which remedies work?
//!
//! The parts, from the bottom up (each uses only parts listed before it):
//! - [`error`] (usage errors: the user's to fix, one line, exit code 2),
//!   [`io`] (files written atomically, JSON read back) and [`rng`] (the
//!   seeded random numbers everything draws from);
//! - [`data`] (MNIST-like images, character-level text, synthetic tasks),
//!   [`metrics`] (sparsity measures of plain numbers) and [`optim`]
//!   (optimizers equal to PyTorch's, with every regularisation mode);
//! - [`models`] (the MLP and the Transformer on a seeded parameter store)
//!   and [`provenance`] (the code, machine and data a number came from);
//! - [`train`] (one run: training, evaluation, every measure, its record)
//!   and [`trace`] (optimizer paths on test functions);
//! - [`experiment`] (studies: a grid of runs, one record per run, and the
//!   report built from the records alone);
//! - [`cli`], which the binary calls.

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

/// Training allocates and frees many large temporaries per step. glibc's
/// malloc maps each one over 128 KiB afresh and faults it in page by page,
/// which cost a third of a Transformer step here; mimalloc reuses them.
/// An allocation that fails ends the process with one line and status 1
/// ([`limits::OomExit`]).
#[global_allocator]
static ALLOC: limits::OomExit<mimalloc::MiMalloc> = limits::OomExit(mimalloc::MiMalloc);
