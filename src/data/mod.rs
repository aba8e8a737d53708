//! Datasets: MNIST-like images (hf-hub or local IDX files), character-level
//! text, and synthetic tasks that need no download.
//!
//! Every dataset has a train and a held-out split; batches are drawn with the
//! project's seeded RNG, so a seed fixes the order.

pub mod mnist;
pub mod synthetic;
pub mod text;

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Which data to train on, as written in a study file or on the command line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum DataConfig {
    /// MNIST digits, 28x28, pixels scaled to [0, 1].
    Mnist(ImageConfig),
    /// Fashion-MNIST, the same format.
    FashionMnist(ImageConfig),
    /// A planted sparse teacher: a random sparse MLP labels Gaussian inputs.
    Teacher(synthetic::TeacherConfig),
    /// Modular addition `a + b = c (mod p)` as token sequences.
    Modadd(synthetic::ModAddConfig),
    /// Character-level text from a local file (tiny-shakespeare is the reference).
    Text(text::TextConfig),
}

impl DataConfig {
    pub fn name(&self) -> &'static str {
        match self {
            DataConfig::Mnist(_) => "mnist",
            DataConfig::FashionMnist(_) => "fashion-mnist",
            DataConfig::Teacher(_) => "teacher",
            DataConfig::Modadd(_) => "modadd",
            DataConfig::Text(_) => "text",
        }
    }

    /// The default configuration of a dataset by name.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "mnist" => DataConfig::Mnist(ImageConfig::default()),
            "fashion-mnist" => DataConfig::FashionMnist(ImageConfig::default()),
            "teacher" => DataConfig::Teacher(Default::default()),
            "modadd" => DataConfig::Modadd(Default::default()),
            "text" | "shakespeare" | "tiny-shakespeare" => DataConfig::Text(Default::default()),
            _ => crate::bail_usage!(
                "unknown dataset `{name}`; expected one of: mnist, fashion-mnist, teacher, modadd, text"
            ),
        })
    }

    /// Sets the local data location (`--data-dir`): the IDX folder for
    /// images, the text file for text.
    pub fn set_dir(&mut self, dir: PathBuf) -> Result<()> {
        match self {
            DataConfig::Mnist(c) | DataConfig::FashionMnist(c) => c.dir = Some(dir),
            DataConfig::Text(c) => c.path = Some(dir),
            _ => crate::bail_usage!(
                "--data-dir: dataset `{}` is synthetic and reads no files",
                self.name()
            ),
        }
        Ok(())
    }

    /// Checks the settings that need no data: sizes, fractions, limits.
    pub fn validate(&self) -> Result<()> {
        match self {
            DataConfig::Mnist(c) | DataConfig::FashionMnist(c) => {
                if c.train_limit == Some(0) {
                    crate::bail_usage!(
                        "{}: `train_limit` (--train-limit) must be at least 1, got 0; leave it out to train on every example",
                        self.name()
                    );
                }
                if c.validation == Some(0) {
                    crate::bail_usage!(
                        "{}: `validation` must be at least 1 held-out example, got 0; leave it out to evaluate on the test set",
                        self.name()
                    );
                }
                Ok(())
            }
            DataConfig::Teacher(c) => synthetic::check_teacher(c),
            DataConfig::Modadd(c) => synthetic::check_modadd(c),
            DataConfig::Text(c) => text::check(c),
        }
    }

    /// What the model will be asked to predict and roughly how many bytes
    /// the loaded data takes, before loading it (for the memory check). The
    /// text vocabulary is not known before the file is read: 256 stands in.
    pub fn estimate(&self) -> (Task, f64) {
        match self {
            DataConfig::Mnist(_) | DataConfig::FashionMnist(_) => (
                Task::Classify {
                    inputs: 784,
                    classes: 10,
                },
                70_000.0 * 785.0 * 4.0 * 2.0,
            ),
            DataConfig::Teacher(c) => (
                Task::Classify {
                    inputs: c.inputs,
                    classes: c.classes,
                },
                (c.train_size as f64 + c.test_size as f64) * (c.inputs as f64 + 1.0) * 4.0 * 2.0
                    + (c.hidden as f64 * (c.inputs as f64 + c.classes as f64)) * 8.0,
            ),
            DataConfig::Modadd(c) => {
                let p = c.modulus as f64;
                (
                    Task::LastToken {
                        vocab: c.modulus as usize + 2,
                        len: 4,
                    },
                    p * p * (8.0 + 5.0 * 4.0 * 2.0),
                )
            }
            DataConfig::Text(_) => (Task::NextToken { vocab: 256 }, 0.0),
        }
    }

    /// Loads both splits. Synthetic data is generated from `seed`.
    pub fn load(&self, seed: u64) -> Result<Dataset> {
        match self {
            DataConfig::Mnist(c) => mnist::load(mnist::Which::Mnist, c),
            DataConfig::FashionMnist(c) => mnist::load(mnist::Which::FashionMnist, c),
            DataConfig::Teacher(c) => synthetic::teacher(c, seed),
            DataConfig::Modadd(c) => synthetic::modadd(c, seed),
            DataConfig::Text(c) => text::load(c),
        }
    }
}

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

/// A batch on the training device: inputs and integer targets.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
}

/// Draws training batches: shuffled epochs over fixed examples, or random
/// windows of `context + 1` tokens from a stream.
pub struct Batcher {
    rng: Rng,
    order: Vec<u32>,
    pos: usize,
    batch_size: usize,
    context: usize,
    device: Device,
    /// Examples moved to the device once.
    on_device: Option<(Tensor, Tensor)>,
}

impl Batcher {
    pub fn new(
        split: &Split,
        batch_size: usize,
        context: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let on_device = match split {
            Split::Examples { x, y } => Some((x.to_device(device)?, y.to_device(device)?)),
            Split::Stream { .. } => None,
        };
        Ok(Self {
            rng: Rng::derive(seed, "batches"),
            order: vec![],
            pos: 0,
            batch_size,
            context,
            device: device.clone(),
            on_device,
        })
    }

    /// Steps in one pass over the examples (the last partial batch is kept).
    pub fn steps_per_epoch(&self, split: &Split) -> usize {
        match split {
            Split::Examples { .. } => split.len().div_ceil(self.batch_size),
            Split::Stream { tokens } => (tokens.len() / (self.batch_size * self.context)).max(1),
        }
    }

    /// The next batch; a new shuffled epoch starts when the last one is used up.
    pub fn next(&mut self, split: &Split) -> Result<Batch> {
        match split {
            Split::Examples { .. } => {
                let n = split.len();
                if self.pos >= self.order.len() {
                    self.order = (0..n as u32).collect();
                    self.rng.shuffle(&mut self.order);
                    self.pos = 0;
                }
                let end = (self.pos + self.batch_size).min(n);
                let idx = &self.order[self.pos..end];
                self.pos = end;
                let idx = Tensor::new(idx, &self.device)?;
                let (x, y) = self.on_device.as_ref().expect("examples are on the device");
                Ok(Batch {
                    x: x.index_select(&idx, 0)?,
                    y: y.index_select(&idx, 0)?,
                })
            }
            Split::Stream { tokens } => {
                let t = self.context;
                let max_start = tokens.len() - t - 1;
                let mut xs = Vec::with_capacity(self.batch_size * t);
                let mut ys = Vec::with_capacity(self.batch_size * t);
                for _ in 0..self.batch_size {
                    let s = self.rng.below(max_start + 1);
                    xs.extend_from_slice(&tokens[s..s + t]);
                    ys.extend_from_slice(&tokens[s + 1..s + t + 1]);
                }
                Ok(Batch {
                    x: Tensor::from_vec(xs, (self.batch_size, t), &self.device)?,
                    y: Tensor::from_vec(ys, (self.batch_size, t), &self.device)?,
                })
            }
        }
    }
}

/// Fixed evaluation batches over a split, in order: all examples, or
/// consecutive non-overlapping windows of a stream (at most `max_windows`).
pub fn eval_batches(
    split: &Split,
    batch_size: usize,
    context: usize,
    max_windows: usize,
    device: &Device,
) -> Result<Vec<Batch>> {
    let mut out = vec![];
    match split {
        Split::Examples { x, y } => {
            let n = split.len();
            let mut s = 0;
            while s < n {
                let len = batch_size.min(n - s);
                out.push(Batch {
                    x: x.narrow(0, s, len)?.to_device(device)?,
                    y: y.narrow(0, s, len)?.to_device(device)?,
                });
                s += len;
            }
        }
        Split::Stream { tokens } => {
            let windows = ((tokens.len() - 1) / context).min(max_windows);
            let starts: Vec<usize> = (0..windows).map(|w| w * context).collect();
            for chunk in starts.chunks(batch_size) {
                let mut xs = Vec::with_capacity(chunk.len() * context);
                let mut ys = Vec::with_capacity(chunk.len() * context);
                for &s in chunk {
                    xs.extend_from_slice(&tokens[s..s + context]);
                    ys.extend_from_slice(&tokens[s + 1..s + context + 1]);
                }
                out.push(Batch {
                    x: Tensor::from_vec(xs, (chunk.len(), context), device)?,
                    y: Tensor::from_vec(ys, (chunk.len(), context), device)?,
                });
            }
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_and_unknown_keys() {
        let c: DataConfig = toml::from_str("name = \"mnist\"\ntrain_limit = 100").unwrap();
        assert_eq!(
            c,
            DataConfig::Mnist(ImageConfig {
                dir: None,
                train_limit: Some(100),
                validation: None,
            })
        );
        let err = toml::from_str::<DataConfig>("name = \"mnist\"\ntrain_limt = 100").unwrap_err();
        assert!(err.to_string().contains("train_limt"), "{err}");
        let err = toml::from_str::<DataConfig>("name = \"mnst\"").unwrap_err();
        assert!(err.to_string().contains("fashion-mnist"), "{err}");
    }

    #[test]
    fn batcher_covers_every_example_once_per_epoch_deterministically() {
        let n = 10;
        let x = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape((n, 1))
            .unwrap();
        let y = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
        let split = Split::Examples { x, y };
        let epoch = |seed| {
            let mut b = Batcher::new(&split, 4, 0, seed, &Device::Cpu).unwrap();
            assert_eq!(b.steps_per_epoch(&split), 3);
            let mut seen = vec![];
            for _ in 0..3 {
                seen.extend(b.next(&split).unwrap().y.to_vec1::<u32>().unwrap());
            }
            seen
        };
        let a = epoch(1);
        assert_eq!(a, epoch(1));
        assert_ne!(a, epoch(2));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<u32>>());
    }

    #[test]
    fn stream_batches_are_shifted_windows() {
        let tokens: Vec<u32> = (0..100).collect();
        let split = Split::Stream { tokens };
        let mut b = Batcher::new(&split, 3, 8, 0, &Device::Cpu).unwrap();
        let batch = b.next(&split).unwrap();
        let x = batch.x.to_vec2::<u32>().unwrap();
        let y = batch.y.to_vec2::<u32>().unwrap();
        for (xr, yr) in x.iter().zip(&y) {
            assert_eq!(xr.len(), 8);
            for (a, b) in xr.iter().zip(yr) {
                assert_eq!(a + 1, *b);
            }
        }
        let evals = eval_batches(&split, 4, 8, 1000, &Device::Cpu).unwrap();
        let windows: usize = evals.iter().map(|b| b.x.dim(0).unwrap()).sum();
        assert_eq!(windows, 99 / 8);
    }
}
