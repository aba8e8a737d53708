//! Datasets: MNIST-like images (hf-hub or local IDX files), character-level
//! text, and synthetic tasks that need no download.
//!
//! Every dataset has a train and a held-out split; batches are drawn with the
//! project's seeded RNG, so a seed fixes the order.

mod dataset;
pub mod mnist;
pub mod synthetic;
pub mod text;

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

pub use dataset::{Dataset, ImageConfig, Split, Task};

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
        steps_per_epoch(split, self.batch_size, self.context)
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

/// Steps in one pass over a split at `batch_size` (the last partial batch
/// is kept); for a stream, the windows of `context` tokens it holds.
pub fn steps_per_epoch(split: &Split, batch_size: usize, context: usize) -> usize {
    match split {
        Split::Examples { .. } => split.len().div_ceil(batch_size.max(1)),
        Split::Stream { tokens } => {
            (tokens.len() / batch_size.max(1).saturating_mul(context.max(1))).max(1)
        }
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
