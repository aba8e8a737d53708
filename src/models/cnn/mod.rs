//! A small convolutional network for 1-channel square images:
//! per channel count `c` in `channels`, a block
//! `conv 3x3 (padding 1) -> BatchNorm2d -> ReLU`, followed by a 2 x 2
//! max-pool after every `pool_every`-th block, then
//! `linear -> ReLU -> linear`. With the defaults (`[32, 64]`, a pool after
//! every block, hidden 128) on 28 x 28 images: 1 -> 32 -> 64 channels,
//! 64 * 7 * 7 = 3136 -> 128 -> 10. With seven blocks and `pool_every = 2`
//! it is a BasicNet after Mehta, Kim & Theobalt (CVPR 2019): pools after
//! blocks 2, 4 and 6, 28 -> 14 -> 7 -> 3.
//!
//! Parameter names are those of torch's `state_dict` for the same module
//! (`conv1.weight`, `bn1.weight`, `fc1.weight`, ...), with torch's default
//! initialisation: kaiming_uniform(a = sqrt 5) for conv and linear weights,
//! which is U(+-1/sqrt(fan_in)), the same bound for the biases, and
//! BatchNorm's gamma = 1, beta = 0. BatchNorm's running mean and variance
//! (and `num_batches_tracked`) are buffers: saved in the checkpoint, never
//! optimized.
//!
//! BatchNorm works as torch's: in train mode ([`Cnn::forward`] with
//! `train = true`) it normalises by the batch's mean and biased variance and
//! moves the running statistics by momentum 0.1 towards the batch mean and
//! the *unbiased* variance; in eval mode it normalises by the running
//! statistics. Training steps use train mode, every evaluation eval mode.

use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::params::{Init, Params};
use crate::bail_usage;

mod first;
mod manual;
mod ops;
mod rows;

pub use ops::{BN_EPS, BN_MOMENTUM};
use ops::{BnReluTrain, ColStats, Conv3x3, Grid, MaxPool};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Output channels of each conv block.
    pub channels: Vec<usize>,
    /// A 2 x 2 max-pool (halving the image side) after blocks
    /// `pool_every`, `2 * pool_every`, ...: 1 pools after every block.
    /// Left out of the serialised config at 1, so that the records of runs
    /// from before the option keep their bytes.
    #[serde(skip_serializing_if = "is_one")]
    pub pool_every: usize,
    /// Width of the hidden linear layer.
    pub hidden: usize,
    /// BatchNorm2d after each convolution.
    pub batch_norm: bool,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            channels: vec![32, 64],
            pool_every: 1,
            hidden: 128,
            batch_norm: true,
        }
    }
}

impl CnnConfig {
    /// The image side for `inputs` pixels (a square), or a usage error.
    pub fn side(&self, inputs: usize) -> Result<usize> {
        let s = (inputs as f64).sqrt().round() as usize;
        if s * s != inputs {
            bail_usage!(
                "cnn: the inputs ({inputs} values) are not a square 1-channel image; use the cnn with mnist or fashion-mnist"
            );
        }
        Ok(s)
    }

    /// Whether block `i` (from 0) ends with a 2 x 2 max-pool.
    pub fn pools_after(&self, i: usize) -> bool {
        (i + 1).is_multiple_of(self.pool_every.max(1))
    }

    /// The number of max-pools.
    pub fn pools(&self) -> usize {
        (0..self.channels.len())
            .filter(|&i| self.pools_after(i))
            .count()
    }

    /// The side after the last block (each 2 x 2 max-pool floors, as torch).
    pub fn final_side(&self, side: usize) -> usize {
        (0..self.pools()).fold(side, |s, _| s / 2)
    }

    pub fn validate(&self) -> Result<()> {
        if self.channels.is_empty() || self.channels.contains(&0) {
            bail_usage!(
                "cnn: channels must be one or more counts > 0, got {:?}; e.g. --channels 32,64 or channels = [32, 64]",
                self.channels
            );
        }
        if self.hidden == 0 {
            bail_usage!("cnn: hidden must be > 0; e.g. --hidden 128 or hidden = 128");
        }
        if self.pool_every == 0 {
            bail_usage!(
                "cnn: pool_every must be >= 1 (1 pools after every block, 2 after every second); e.g. --pool-every 2 or pool_every = 2"
            );
        }
        Ok(())
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

struct BatchNorm {
    gamma: Var,
    beta: Var,
    running_mean: Var,
    running_var: Var,
    batches: Var,
}

struct Block {
    w: Var,
    b: Var,
    bn: Option<BatchNorm>,
    /// Ends with a 2 x 2 max-pool.
    pool: bool,
}

pub struct Cnn {
    pub params: Params,
    side: usize,
    blocks: Vec<Block>,
    fc1: (Var, Var),
    fc2: (Var, Var),
    /// Buffers of the hand-written CPU step, kept across steps.
    workspace: std::sync::Mutex<Option<Box<manual::Workspace>>>,
}

/// `[C]` as `[1, C, 1, 1]`, to broadcast over NCHW.
fn per_channel(t: &Tensor) -> Result<Tensor> {
    Ok(t.reshape((1, t.dim(0)?, 1, 1))?)
}

impl BatchNorm {
    /// Moves the running statistics towards a batch's mean and biased
    /// variance over `m` values per channel, as torch: the variance made
    /// unbiased first.
    fn update_running(&self, mean: &Tensor, var: &Tensor, m: usize) -> Result<()> {
        let c = self.gamma.dim(0)?;
        let (bm, bv) = (mean.detach().reshape(c)?, var.detach().reshape(c)?);
        let unbiased = if m > 1 {
            (bv * (m as f64 / (m as f64 - 1.0)))?
        } else {
            bv
        };
        let keep = 1.0 - BN_MOMENTUM;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * keep)? + (bm * BN_MOMENTUM)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * keep)? + (unbiased * BN_MOMENTUM)?)?)?;
        let done = self.batches.as_tensor().to_scalar::<i64>()?;
        self.batches
            .set(&Tensor::new(done + 1, self.batches.device())?)?;
        Ok(())
    }

    /// BatchNorm and ReLU on rows `[M, C]` (CPU, f32): in train mode the
    /// fused [`BnReluTrain`] (Candle's reductions over a leading dimension,
    /// which the backward of every broadcast op needs, were a fifth of the
    /// step); in eval mode plain tensor ops.
    fn forward_relu_rows(&self, z: &Tensor, train: bool) -> Result<Tensor> {
        let (m, c) = z.dims2()?;
        if train {
            let stats = z.apply_op1_no_bwd(&ColStats)?;
            self.update_running(&stats.get(0)?, &stats.get(1)?, m)?;
            let gb = Tensor::stack(&[self.gamma.as_tensor(), self.beta.as_tensor()], 0)?;
            return Ok(z.apply_op3(&gb, &stats, BnReluTrain)?);
        }
        let row = |t: &Tensor| t.reshape((1, c));
        let scale = row(self.gamma.as_tensor())?
            .broadcast_div(&(row(self.running_var.as_tensor())? + BN_EPS)?.sqrt()?)?;
        Ok(z.broadcast_sub(&row(self.running_mean.as_tensor())?)?
            .broadcast_mul(&scale)?
            .broadcast_add(&row(self.beta.as_tensor())?)?
            .relu()?)
    }

    /// On `[N, C, H, W]` (devices other than the CPU, dtypes other than f32).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mean, var) = if train {
            let (n, _, h, w) = x.dims4()?;
            let m = (n * h * w) as f64;
            let mean = (x.sum_keepdim((0, 2, 3))? / m)?;
            let centered = x.broadcast_sub(&mean)?;
            let var = (centered.sqr()?.sum_keepdim((0, 2, 3))? / m)?;
            self.update_running(&mean, &var, n * h * w)?;
            (mean, var)
        } else {
            (
                per_channel(self.running_mean.as_tensor())?,
                per_channel(self.running_var.as_tensor())?,
            )
        };
        let normed = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&per_channel(self.gamma.as_tensor())?)?
            .broadcast_add(&per_channel(self.beta.as_tensor())?)?)
    }
}

/// 2 x 2 max-pool of `[N, C, H, W]` as two max reductions. Not Candle's
/// `max_pool2d`: its backward in candle-core 0.11 scales the gradient of a
/// window's single maximum by 1/4 (it multiplies by the share of maxima in
/// the window where it should divide), which the PyTorch fixture caught.
fn max_pool_nchw(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    Ok(x.narrow(2, 0, 2 * oh)?
        .narrow(3, 0, 2 * ow)?
        .reshape((n, c, oh, 2, ow, 2))?
        .max(5)?
        .max(3)?)
}

impl Cnn {
    /// A CNN for `side x side` images and `classes` outputs.
    pub fn new(cfg: &CnnConfig, side: usize, classes: usize, mut params: Params) -> Result<Self> {
        cfg.validate()?;
        let mut blocks = vec![];
        let mut c_in = 1;
        for (i, &c) in cfg.channels.iter().enumerate() {
            let k = i + 1;
            let bound = 1.0 / ((c_in * 9) as f64).sqrt();
            let w = params.add(
                &format!("conv{k}.weight"),
                &[c, c_in, 3, 3],
                Init::Uniform(bound),
            )?;
            let b = params.add(&format!("conv{k}.bias"), &[c], Init::Uniform(bound))?;
            let bn = if cfg.batch_norm {
                Some(BatchNorm {
                    gamma: params.add(&format!("bn{k}.weight"), &[c], Init::Ones)?,
                    beta: params.add(&format!("bn{k}.bias"), &[c], Init::Zeros)?,
                    running_mean: params.add_buffer(
                        &format!("bn{k}.running_mean"),
                        Tensor::zeros(c, params.dtype(), params.device())?,
                    )?,
                    running_var: params.add_buffer(
                        &format!("bn{k}.running_var"),
                        Tensor::ones(c, params.dtype(), params.device())?,
                    )?,
                    batches: params.add_buffer(
                        &format!("bn{k}.num_batches_tracked"),
                        Tensor::new(0i64, params.device())?,
                    )?,
                })
            } else {
                None
            };
            blocks.push(Block {
                w,
                b,
                bn,
                pool: cfg.pools_after(i),
            });
            c_in = c;
        }
        let last = cfg.final_side(side);
        if last == 0 {
            bail_usage!(
                "cnn: {} max-pools shrink a {side} x {side} image to nothing; use fewer channels entries or a larger pool_every",
                cfg.pools()
            );
        }
        let flat = c_in * last * last;
        let linear = |p: &mut Params, name: &str, fan_in: usize, fan_out: usize| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Ok::<_, anyhow::Error>((
                p.add(
                    &format!("{name}.weight"),
                    &[fan_out, fan_in],
                    Init::Uniform(bound),
                )?,
                p.add(&format!("{name}.bias"), &[fan_out], Init::Uniform(bound))?,
            ))
        };
        let fc1 = linear(&mut params, "fc1", flat, cfg.hidden)?;
        let fc2 = linear(&mut params, "fc2", cfg.hidden, classes)?;
        Ok(Self {
            params,
            side,
            blocks,
            fc1,
            fc2,
            workspace: Default::default(),
        })
    }

    /// Whether [`loss_and_grads_cpu`](Self::loss_and_grads_cpu) applies:
    /// on the CPU in f32, with BatchNorm in every block (otherwise the
    /// step goes through autograd).
    pub fn manual_backward(&self) -> bool {
        let w = self.fc1.0.as_tensor();
        w.device().is_cpu() && w.dtype() == DType::F32 && self.blocks.iter().all(|b| b.bn.is_some())
    }

    /// The training loss (mean cross-entropy, train mode) of images `x`
    /// (`[N, side * side]`) with labels `y`, and every parameter's
    /// gradient, by the hand-written CPU step (`manual.rs`); moves
    /// BatchNorm's running statistics as [`forward`](Self::forward) in
    /// train mode does. Needs [`manual_backward`](Self::manual_backward).
    pub fn loss_and_grads_cpu(
        &self,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        let mut blocks = vec![];
        for b in &self.blocks {
            let Some(bn) = &b.bn else {
                anyhow::bail!("the hand-written CNN step needs BatchNorm in every block");
            };
            blocks.push(manual::BlockTensors {
                w: &b.w,
                b: &b.b,
                gamma: &bn.gamma,
                beta: &bn.beta,
            });
        }
        let pools: Vec<bool> = self.blocks.iter().map(|b| b.pool).collect();
        let vars = manual::ParamTensors {
            blocks,
            fc1: (&self.fc1.0, &self.fc1.1),
            fc2: (&self.fc2.0, &self.fc2.1),
        };
        let (loss, grads, stats) =
            manual::loss_and_grads(&vars, self.side, &pools, &self.workspace, x, y)?;
        let (n, mut side) = (x.dim(0)?, self.side);
        for (b, (mean, var)) in self.blocks.iter().zip(stats) {
            let bn = b.bn.as_ref().expect("checked above");
            let c = mean.len();
            let t = |v: Vec<f32>| Tensor::from_vec(v, c, bn.gamma.device());
            bn.update_running(&t(mean)?, &t(var)?, n * side * side)?;
            if b.pool {
                side /= 2;
            }
        }
        Ok((loss, grads))
    }

    /// The number of conv blocks.
    pub fn conv_layers(&self) -> usize {
        self.blocks.len()
    }

    fn linear(x: &Tensor, (w, b): &(Var, Var)) -> Result<Tensor> {
        Ok(x.matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?)
    }

    /// Logits `[N, classes]` of flat images `[N, side * side]`. In train
    /// mode BatchNorm uses the batch's statistics and updates its running
    /// ones; in eval mode it uses the running ones. With `hidden =
    /// Some(..)`, collects per conv block the per-image maximum of each
    /// channel's post-ReLU output (`[N, C]`: a filter is dead when this is
    /// 0 on every image), then the hidden linear layer's post-ReLU output.
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            self.forward_rows(x, train, hidden)
        } else {
            self.forward_nchw(x, train, hidden)
        }
    }

    /// [`forward`](Self::forward) on the CPU in f32, on rows `[N * H * W,
    /// C]` with the custom ops above: Candle's own CPU conv2d, its
    /// backward, max-pool and reductions over NCHW took 10 times PyTorch's
    /// step here.
    fn forward_rows(
        &self,
        x: &Tensor,
        train: bool,
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (mut side, mut c_in) = (self.side, 1);
        let mut a = x.reshape((n * side * side, 1))?;
        for block in &self.blocks {
            let grid = Grid {
                n,
                h: side,
                w: side,
            };
            let c = block.w.dim(0)?;
            // [weights | bias]: the bias multiplies im2col's ones column.
            let wb = Tensor::cat(
                &[
                    block.w.as_tensor().flatten_from(1)?,
                    block.b.as_tensor().reshape((c, 1))?,
                ],
                1,
            )?;
            let z = a.contiguous()?.apply_op2(
                &wb,
                Conv3x3 {
                    grid,
                    cols: Default::default(),
                },
            )?;
            let r = match &block.bn {
                Some(bn) => bn.forward_relu_rows(&z, train)?,
                None => z.relu()?,
            };
            if let Some(out) = hidden.as_deref_mut() {
                out.push(r.reshape((n, side * side, c))?.max(1)?);
            }
            if block.pool {
                a = r.apply_op1(MaxPool::new(grid))?;
                side /= 2;
            } else {
                a = r;
            }
            c_in = c;
        }
        // torch's flatten of NCHW: channel-major.
        let flat = a
            .reshape((n, side * side, c_in))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, c_in * side * side))?;
        let h = Self::linear(&flat, &self.fc1)?.relu()?;
        if let Some(out) = hidden {
            out.push(h.clone());
        }
        Self::linear(&h, &self.fc2)
    }

    /// [`forward`](Self::forward) with Candle's conv2d and max-pool on
    /// `[N, C, H, W]`.
    fn forward_nchw(
        &self,
        x: &Tensor,
        train: bool,
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut h = x.reshape((n, 1, self.side, self.side))?;
        for block in &self.blocks {
            h = h
                .conv2d(block.w.as_tensor(), 1, 1, 1, 1)?
                .broadcast_add(&per_channel(block.b.as_tensor())?)?;
            if let Some(bn) = &block.bn {
                h = bn.forward(&h, train)?;
            }
            h = h.relu()?;
            if let Some(out) = hidden.as_deref_mut() {
                out.push(h.max(3)?.max(2)?);
            }
            if block.pool {
                h = max_pool_nchw(&h)?;
            }
        }
        let h = Self::linear(&h.flatten_from(1)?, &self.fc1)?.relu()?;
        if let Some(out) = hidden {
            out.push(h.clone());
        }
        Self::linear(&h, &self.fc2)
    }
}
