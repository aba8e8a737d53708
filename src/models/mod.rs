//! The models: an MLP, a small CNN and a small decoder-only Transformer, all built on a
//! [`Params`] store whose initial values come from the project's seeded RNG.

pub mod cnn;
pub mod kernels;
pub(crate) mod linear;
pub mod matmul;
pub mod mlp;
pub mod ops;
pub mod params;
pub mod transformer;

use anyhow::Result;
use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::bail_usage;
use crate::data::{Batch, Task};
pub use cnn::{Cnn, CnnConfig};
pub use mlp::Mlp;
pub use params::{Init, Params};
pub use transformer::{Transformer, TransformerConfig};

/// Which model to train, as written in a study file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// An MLP; input and output sizes come from the data.
    Mlp(MlpConfig),
    /// A CNN for 1-channel square images (mnist, fashion-mnist).
    Cnn(CnnConfig),
    Transformer(TransformerConfig),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Hidden layer widths; [128] gives the source's 784-128-10 on MNIST.
    pub hidden: Vec<usize>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { hidden: vec![128] }
    }
}

impl ModelConfig {
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "mlp" => ModelConfig::Mlp(MlpConfig::default()),
            "cnn" => ModelConfig::Cnn(CnnConfig::default()),
            "transformer" => ModelConfig::Transformer(TransformerConfig::default()),
            _ => bail_usage!("unknown model `{name}`; expected mlp, cnn or transformer"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::Cnn(_) => "cnn",
            ModelConfig::Transformer(_) => "transformer",
        }
    }

    /// Checks the sizes on their own (the data is checked against them by
    /// [`TrainConfig::check_data`](crate::train::TrainConfig::check_data)).
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Mlp(c) => {
                if c.hidden.contains(&0) {
                    bail_usage!(
                        "mlp: hidden widths must be > 0, got {:?}; e.g. --hidden 128 or hidden = [128]",
                        c.hidden
                    );
                }
            }
            ModelConfig::Cnn(c) => c.validate()?,
            ModelConfig::Transformer(c) => {
                for (key, v) in [
                    ("layers", c.layers),
                    ("d_model", c.d_model),
                    ("heads", c.heads),
                    ("context", c.context),
                    ("mlp_ratio", c.mlp_ratio),
                ] {
                    if v == 0 {
                        bail_usage!(
                            "transformer: `{key}` must be > 0 (--{}), got 0",
                            key.replace('_', "-")
                        );
                    }
                }
                if !c.d_model.is_multiple_of(c.heads) {
                    bail_usage!(
                        "transformer: d_model ({}) must be a multiple of heads ({}); change --d-model or --heads",
                        c.d_model,
                        c.heads
                    );
                }
            }
        }
        Ok(())
    }

    /// The number of parameters for a task, computed in f64 so that absurd
    /// sizes cannot overflow (for the memory check before training).
    pub fn param_count(&self, task: &Task) -> f64 {
        match (self, task) {
            (ModelConfig::Mlp(c), Task::Classify { inputs, classes }) => {
                let mut sizes = vec![*inputs as f64];
                sizes.extend(c.hidden.iter().map(|h| *h as f64));
                sizes.push(*classes as f64);
                sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
            }
            (ModelConfig::Cnn(c), Task::Classify { inputs, classes }) => {
                let side = (*inputs as f64).sqrt().floor() as usize;
                let bn = if c.batch_norm { 2.0 } else { 0.0 };
                let mut c_in = 1.0;
                let mut n = 0.0;
                for &ch in &c.channels {
                    let ch = ch as f64;
                    n += ch * c_in * 9.0 + ch + bn * ch;
                    c_in = ch;
                }
                let s = c.final_side(side) as f64;
                let (flat, h) = (c_in * s * s, c.hidden as f64);
                n + flat * h + h + h * *classes as f64 + *classes as f64
            }
            (
                ModelConfig::Transformer(c),
                Task::LastToken { vocab, .. } | Task::NextToken { vocab },
            ) => {
                let (d, v) = (c.d_model as f64, *vocab as f64);
                let m = c.mlp_ratio as f64 * d;
                // Attention (qkv + out), MLP (two layers), two LayerNorms.
                let block = 4.0 * d * d + 4.0 * d + 2.0 * d * m + m + d + 4.0 * d;
                v * d + c.context as f64 * d + c.layers as f64 * block + 2.0 * d + d * v + v
            }
            _ => 0.0,
        }
    }

    /// A rough count of the f32 activations one forward and backward pass
    /// over `rows` examples keeps alive (an over-estimate is fine: it only
    /// guards against sizes that cannot fit).
    pub fn activation_count(&self, task: &Task, rows: usize) -> f64 {
        let b = rows as f64;
        match (self, task) {
            (ModelConfig::Mlp(c), Task::Classify { inputs, classes }) => {
                let widths: f64 = c.hidden.iter().map(|h| *h as f64).sum();
                b * (*inputs as f64 + 3.0 * widths + 3.0 * *classes as f64)
            }
            (ModelConfig::Cnn(c), Task::Classify { inputs, classes }) => {
                // Per block: the im2col columns (9 per input channel), the
                // conv output, BatchNorm's temporaries, ReLU and the pool,
                // at the block's input resolution.
                let mut pixels = *inputs as f64;
                let mut c_in = 1.0;
                let mut n = b * pixels;
                for (i, &ch) in c.channels.iter().enumerate() {
                    n += b * pixels * (9.0 * c_in + 8.0 * ch as f64);
                    c_in = ch as f64;
                    if c.pools_after(i) {
                        pixels /= 4.0;
                    }
                }
                n + b * (3.0 * c.hidden as f64 + 3.0 * *classes as f64)
            }
            (
                ModelConfig::Transformer(c),
                Task::LastToken { vocab, .. } | Task::NextToken { vocab },
            ) => {
                let t = match task {
                    Task::LastToken { len, .. } => *len as f64,
                    _ => c.context as f64,
                };
                let d = c.d_model as f64;
                let per_layer = b * t * d * (12.0 + 3.0 * c.mlp_ratio as f64)
                    + 3.0 * b * c.heads as f64 * t * t;
                c.layers as f64 * per_layer + 3.0 * b * t * *vocab as f64 + 2.0 * b * t * d
            }
            _ => 0.0,
        }
    }

    /// Builds the model for a task, with weights drawn from `seed`.
    pub fn build(&self, task: &Task, seed: u64, dtype: DType, device: &Device) -> Result<Model> {
        let params = Params::new(seed, dtype, device);
        Ok(match (self, task) {
            (ModelConfig::Mlp(c), Task::Classify { inputs, classes }) => {
                if c.hidden.contains(&0) {
                    bail_usage!("mlp: hidden widths must be > 0, got {:?}", c.hidden);
                }
                let mut sizes = vec![*inputs];
                sizes.extend(&c.hidden);
                sizes.push(*classes);
                Model::Mlp(Mlp::new(&sizes, params)?)
            }
            (ModelConfig::Cnn(c), Task::Classify { inputs, classes }) => {
                Model::Cnn(Cnn::new(c, c.side(*inputs)?, *classes, params)?)
            }
            (
                ModelConfig::Transformer(c),
                Task::LastToken { vocab, .. } | Task::NextToken { vocab },
            ) => {
                if let Task::LastToken { len, .. } = task
                    && *len > c.context
                {
                    bail_usage!(
                        "transformer: context {} is shorter than the sequences ({len})",
                        c.context
                    );
                }
                Model::Transformer(Box::new(Transformer::new(
                    c, *vocab, params, device, dtype,
                )?))
            }
            (m, t) => bail_usage!(
                "model `{}` cannot learn this task ({t:?}); use mlp for mnist, fashion-mnist and teacher, cnn for mnist and fashion-mnist, transformer for text and modadd",
                m.name()
            ),
        })
    }
}

pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
    Transformer(Box<Transformer>),
}

/// One batch's evaluation. The hidden activations, when asked for, go to
/// the `hidden` argument of [`Model::evaluate`], not here.
pub struct Eval {
    /// Mean cross-entropy over the predictions (a scalar tensor).
    pub loss: Tensor,
    /// Predictions whose argmax is the target.
    pub correct: usize,
    /// Predictions made (examples, or target tokens).
    pub count: usize,
}

impl Model {
    pub fn params(&self) -> &Params {
        match self {
            Model::Mlp(m) => &m.params,
            Model::Cnn(c) => &c.params,
            Model::Transformer(t) => &t.params,
        }
    }

    pub fn named_params(&self) -> Vec<(String, Var)> {
        self.params().named()
    }

    /// Whether the model has ReLU units (dead units are defined for those).
    pub fn has_relu_units(&self) -> bool {
        matches!(self, Model::Mlp(_) | Model::Cnn(_))
    }

    /// How many of the activations that [`logits`](Self::logits) collects
    /// come first and are conv filters (per-image channel maxima) rather
    /// than hidden units.
    pub fn conv_layers(&self) -> usize {
        match self {
            Model::Cnn(c) => c.conv_layers(),
            _ => 0,
        }
    }

    /// Logits `[N, C]` and targets `[N]` for a batch, flattening sequence
    /// positions where every position is predicted. The model is in eval
    /// mode (the CNN's BatchNorm uses its running statistics); `hidden`
    /// collects the post-ReLU activations of ReLU models (for the CNN, the
    /// conv blocks' per-image channel maxima first).
    pub fn logits(
        &self,
        task: &Task,
        batch: &Batch,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<(Tensor, Tensor)> {
        Ok(match (self, task) {
            (Model::Mlp(m), _) => (m.forward_collect(&batch.x, hidden)?, batch.y.clone()),
            (Model::Cnn(c), _) => (c.forward(&batch.x, false, hidden)?, batch.y.clone()),
            (Model::Transformer(t), Task::LastToken { .. }) => {
                let out = t.forward(&batch.x)?;
                let last = out.dim(1)? - 1;
                (out.narrow(1, last, 1)?.squeeze(1)?, batch.y.clone())
            }
            (Model::Transformer(t), _) => {
                let out = t.forward(&batch.x)?;
                let (b, s, v) = out.dims3()?;
                (out.reshape((b * s, v))?, batch.y.flatten_all()?)
            }
        })
    }

    /// Mean cross-entropy and the number of correct argmax predictions;
    /// with `hidden`, the hidden activations of ReLU models are pushed there.
    pub fn evaluate(
        &self,
        task: &Task,
        batch: &Batch,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Eval> {
        let (logits, y) = self.logits(task, batch, hidden)?;
        let loss = cross_entropy(&logits, &y)?;
        let pred = logits.argmax(D::Minus1)?;
        let correct = pred
            .eq(&y)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        Ok(Eval {
            loss,
            correct,
            count: y.dim(0)?,
        })
    }

    /// The training loss of a batch and the gradients of every parameter:
    /// the hand-written backward passes on the CPU in f32, autograd
    /// otherwise.
    pub fn loss_and_grads(
        &self,
        task: &Task,
        batch: &Batch,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        if let Model::Mlp(m) = self
            && Mlp::manual_backward(&batch.x)
        {
            return m.loss_and_grads(&batch.x, &batch.y);
        }
        if let Model::Cnn(c) = self
            && c.manual_backward()
        {
            return c.loss_and_grads_cpu(&batch.x, &batch.y);
        }
        if let Model::Transformer(t) = self
            && t.manual_backward()
        {
            let last_only = matches!(task, Task::LastToken { .. });
            return t.loss_and_grads_cpu(&batch.x, &batch.y, last_only);
        }
        self.loss_and_grads_autograd(task, batch)
    }

    /// As [`loss_and_grads`](Self::loss_and_grads), always through autograd
    /// (the reference).
    pub fn loss_and_grads_autograd(
        &self,
        task: &Task,
        batch: &Batch,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        let loss = self.loss(task, batch)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok((value, loss.backward()?))
    }

    /// The training loss of a batch (mean cross-entropy). The CNN runs in
    /// train mode, as torch's `model.train()`: BatchNorm uses the batch's
    /// statistics and moves its running statistics.
    pub fn loss(&self, task: &Task, batch: &Batch) -> Result<Tensor> {
        if let Model::Cnn(c) = self {
            return cross_entropy(&c.forward(&batch.x, true, None)?, &batch.y);
        }
        let (logits, y) = self.logits(task, batch, None)?;
        cross_entropy(&logits, &y)
    }
}

/// Mean softmax cross-entropy of logits `[N, C]` against targets `[N]`.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, y)?)
}
