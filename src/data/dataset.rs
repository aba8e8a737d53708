//! A loaded dataset (its splits and what to predict), and the helpers the
//! loaders share.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Options of the image datasets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// A folder of the four IDX files (plain or .gz). Without it, the data
    /// comes from the hf-hub cache or is downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Use only the first N training examples (for quick runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Hold out the last N training examples and evaluate on them instead of
    /// the test set (for tuning without touching the test set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
}

/// What the model must predict.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Classify feature vectors `[N, inputs]` (f32) into `classes`.
    Classify { inputs: usize, classes: usize },
    /// Predict the last token of each sequence `[N, len]` (u32).
    LastToken { vocab: usize, len: usize },
    /// Predict every next token of windows of a token stream.
    NextToken { vocab: usize },
}

/// One split of a dataset.
#[derive(Clone, Debug)]
pub enum Split {
    /// Fixed examples: `x` is `[N, D]` f32 features or `[N, T]` u32 tokens,
    /// `y` is `[N]` u32 targets.
    Examples { x: Tensor, y: Tensor },
    /// A token stream, batched as random windows (text).
    Stream { tokens: Vec<u32> },
}

impl Split {
    pub fn len(&self) -> usize {
        match self {
            Split::Examples { y, .. } => y.dim(0).unwrap_or(0),
            Split::Stream { tokens } => tokens.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded dataset: both splits on the CPU, plus what to predict.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub task: Task,
    pub train: Split,
    pub test: Split,
    /// What the data is, by dataset and split (no path): it goes into run
    /// records and tables, which must read the same on every machine.
    pub description: String,
    /// Where it was read from (a folder, a file or the hf-hub cache); for
    /// logs only, never recorded.
    pub location: Option<String>,
}

/// Features `[N, D]` from bytes scaled by 1/255, as f32.
pub(crate) fn pixels_to_tensor(bytes: Vec<u8>, n: usize, d: usize) -> Result<Tensor> {
    let scaled: Vec<f32> = bytes.into_iter().map(|b| b as f32 / 255.0).collect();
    Ok(Tensor::from_vec(scaled, (n, d), &Device::Cpu)?)
}

/// Labels `[N]` as u32.
pub(crate) fn labels_to_tensor(labels: Vec<u8>) -> Result<Tensor> {
    let n = labels.len();
    let v: Vec<u32> = labels.into_iter().map(u32::from).collect();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

/// Keeps the first `limit` examples of a split.
pub(crate) fn limit_examples(split: Split, limit: Option<usize>) -> Result<Split> {
    // A limit beyond the data would be recorded but not used: refuse it.
    if let (Split::Examples { y, .. }, Some(n)) = (&split, limit)
        && n > y.dim(0)?
    {
        crate::bail_usage!(
            "train_limit = {n} is more than the {} training examples there are; use at most {} (--train-limit or data.train_limit), or leave it out to use them all",
            y.dim(0)?,
            y.dim(0)?
        );
    }
    match (split, limit) {
        (Split::Examples { x, y }, Some(n)) if n < y.dim(0)? => Ok(Split::Examples {
            x: x.narrow(0, 0, n)?,
            y: y.narrow(0, 0, n)?,
        }),
        (s, _) => Ok(s),
    }
}

/// Splits the last `n` examples off a split: (rest, last n).
pub(crate) fn split_off_last(split: Split, n: usize) -> Result<(Split, Split)> {
    match split {
        Split::Examples { x, y } => {
            let total = y.dim(0)?;
            if n == 0 || n >= total {
                crate::bail_usage!(
                    "validation: need 0 < N < {total} (the training examples), got {n}"
                );
            }
            let k = total - n;
            Ok((
                Split::Examples {
                    x: x.narrow(0, 0, k)?,
                    y: y.narrow(0, 0, k)?,
                },
                Split::Examples {
                    x: x.narrow(0, k, n)?,
                    y: y.narrow(0, k, n)?,
                },
            ))
        }
        Split::Stream { .. } => crate::bail_usage!("validation splits are for example datasets"),
    }
}
