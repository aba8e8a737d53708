//! sparsity-lab: does the optimizer decide how sparse a trained network ends
//! up, and which remedies work?
//!
//! The parts, from the bottom up: [`optim`] (optimizers equal to PyTorch's,
//! with every regularisation mode), [`trace`] (optimizer paths on test
//! functions), and [`cli`], which the binary calls.

pub mod cli;
pub mod error;
pub mod optim;
pub mod rng;
pub mod trace;
