//! sparsity-lab: does the optimizer decide how sparse a trained network ends
//! up, and which remedies work?
//!
//! The parts, from the bottom up: [`optim`] (optimizers equal to PyTorch's,
//! with every regularisation mode), [`trace`] (optimizer paths on test
//! functions), and [`cli`], which the binary calls.

pub mod cli;
pub mod data;
pub mod error;
pub mod experiment;
pub mod io;
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
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
