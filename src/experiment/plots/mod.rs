//! SVG plots of a study, per task: near-zero weights over training, accuracy
//! after pruning, and the distribution of weight magnitudes; for the CNN,
//! dead filters, dense dead units and the training loss over training.
//!
//! Each figure is a set of small multiples: one panel per optimizer family
//! (see [`family`]), at most [`MAX_LINES`] optimizers a panel, all panels on
//! the same axes. The task's baseline (its first optimizer in study order,
//! unless one is named) is drawn in every panel, black and dashed. A line is
//! the mean over an optimizer's finished seeds and its shaded band the 95 %
//! confidence interval of that mean ([`ci95`](super::stats::ci95); none for one seed). Colours
//! are Okabe and Ito's colour-blind-safe palette, and every line also has its
//! own dash pattern and marker, so that the lines stay apart in grey.
//!
//! [`pareto`] draws accuracy against a sparsity measure, one line per label;
//! [`lr_curve_svg`] a tuning study's criterion against the learning rate.
//!
//! The output is a function of the input alone: the same runs give
//! byte-identical SVG.

mod axis;
mod figures;
mod lines;
mod lr_curve;
mod panels;
mod render;
mod style;

pub use figures::{
    has_filter_history, pareto, pruning_methods, write_all, write_all_with_baseline,
};
pub use lr_curve::{lr_curve_svg, write_lr_curves};
pub use panels::{MAX_LINES, family};
