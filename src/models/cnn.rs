//! A small convolutional network for 1-channel square images:
//! per channel count `c` in `channels`, a block
//! `conv 3x3 (padding 1) -> BatchNorm2d -> ReLU -> max-pool 2`, then
//! `linear -> ReLU -> linear`. With the defaults (`[32, 64]`, hidden 128) on
//! 28 x 28 images: 1 -> 32 -> 64 channels, 64 * 7 * 7 = 3136 -> 128 -> 10.
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

use super::kernels;
use super::ops::f32_slice;
use super::params::{Init, Params};
use crate::bail_usage;

/// Activations of the CPU path are "rows": `[N * H * W, C]`, one row per
/// pixel (n, y, x), which is what a convolution as one matrix product
/// gives and takes. Channel reductions are then column sums.
#[derive(Clone, Copy)]
struct Grid {
    n: usize,
    h: usize,
    w: usize,
}

/// A 3 x 3, padding 1 convolution of rows `[N * H * W, C_in]` by
/// `[weights | bias]` `[C, C_in * 9 + 1]` (torch's weight order, the bias
/// last) to rows `[N * H * W, C]`: the patches as a matrix
/// ([`im2col`]) times the weights transposed. One op, so that the
/// gradient of the patch matrix (9 times the input) never becomes a tensor
/// that autograd allocates, zeroes and adds; the products are Candle's
/// own (the same `gemm` calls, so the same bits).
struct Conv3x3 {
    grid: Grid,
    /// The forward's patch matrix, for the weights' gradient.
    cols: std::sync::Mutex<Vec<f32>>,
}

/// The 3 x 3, padding 1 patches of rows `[N * H * W, C]` as `[N * H * W,
/// C * 9 + 1]` (column `(c, ky, kx)`, torch's weight order), zero outside
/// the image, and a last column of ones, which multiplies the bias.
fn im2col(x: &[f32], g: Grid, c: usize) -> Vec<f32> {
    let k = c * 9 + 1;
    let mut out = vec![0f32; g.n * g.h * g.w * k];
    patches(g, c, |row, col, src| out[row * k + col] = x[src]);
    for row in out.chunks_exact_mut(k) {
        row[k - 1] = 1.0;
    }
    out
}

/// The adjoint of [`im2col`]: sums each patch entry back onto its pixel
/// (the ones column has no input).
fn col2im(cols: &[f32], g: Grid, c: usize) -> Vec<f32> {
    let k = c * 9 + 1;
    let mut out = vec![0f32; g.n * g.h * g.w * c];
    patches(g, c, |row, col, src| out[src] += cols[row * k + col]);
    out
}

/// `[m, k] x [k, n]` as Candle's CPU matmul does it for operands with
/// these strides (`View`s), into a new row-major `[m, n]`.
fn matmul(m: usize, n: usize, k: usize, a: kernels::View, b: kernels::View) -> Vec<f32> {
    let mut dst = vec![0f32; m * n];
    let par = match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: `dst` holds m x n; the callers' views address k x (m or n)
    // elements of slices they hold, which do not overlap `dst`.
    unsafe { kernels::matmul(m, n, k, dst.as_mut_ptr(), n, false, a, b, par) };
    dst
}

/// Calls `f(row, col, src_row)` for every in-image patch entry: output row
/// `row`, column `col`, source pixel row `src_row`, channel `col / 9`.
fn patches(g: Grid, c: usize, mut f: impl FnMut(usize, usize, usize)) {
    let Grid { n, h, w } = g;
    for img in 0..n {
        for y in 0..h {
            for x in 0..w {
                let row = (img * h + y) * w + x;
                for ky in 0..3 {
                    let sy = y + ky;
                    if sy == 0 || sy > h {
                        continue;
                    }
                    for kx in 0..3 {
                        let sx = x + kx;
                        if sx == 0 || sx > w {
                            continue;
                        }
                        let src = (img * h + sy - 1) * w + sx - 1;
                        for ci in 0..c {
                            f(row, ci * 9 + ky * 3 + kx, src * c + ci);
                        }
                    }
                }
            }
        }
    }
}

impl candle_core::CustomOp2 for Conv3x3 {
    fn name(&self) -> &'static str {
        "conv-3x3"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let wb = f32_slice(s2, l2, self.name())?;
        let (rows, c_in) = l1.shape().dims2()?;
        let (c, k) = l2.shape().dims2()?;
        if k != c_in * 9 + 1 {
            candle_core::bail!("conv-3x3: weights [{c}, {k}] for {c_in} input channels");
        }
        let cols = im2col(x, self.grid, c_in);
        // cols · wbᵀ, as Candle's `cols.matmul(&wb.t())`.
        let z = matmul(
            rows,
            c,
            k,
            kernels::View::rows(&cols, k),
            kernels::View::rows(wb, k).t(),
        );
        *self.cols.lock().expect("conv patches") = cols;
        Ok((
            candle_core::CpuStorage::F32(z),
            candle_core::Shape::from((rows, c)),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _z: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, c_in) = x.dims2()?;
        let (c, k) = wb.dims2()?;
        let mut cols = std::mem::take(&mut *self.cols.lock().expect("conv patches"));
        if cols.len() != rows * k {
            // Not from this op's forward (a second backward): recompute.
            cols = im2col(&x.flatten_all()?.to_vec1::<f32>()?, self.grid, c_in);
        }
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let w = wb.flatten_all()?.to_vec1::<f32>()?;
        // The weights' gradient as Candle's matmul backward gives it,
        // colsᵀ · grad ([k, c]), then transposed.
        let dwt = matmul(
            k,
            c,
            rows,
            kernels::View::rows(&cols, k).t(),
            kernels::View::rows(&g, c),
        );
        let mut dw = vec![0f32; c * k];
        for (i, row) in dwt.chunks_exact(c).enumerate() {
            for (j, v) in row.iter().enumerate() {
                dw[j * k + i] = *v;
            }
        }
        let dw = Tensor::from_vec(dw, (c, k), wb.device())?;
        if !x.track_op() {
            return Ok((None, Some(dw)));
        }
        // The patches' gradient, grad · wb, summed back onto the pixels.
        let dcols = matmul(
            rows,
            k,
            c,
            kernels::View::rows(&g, c),
            kernels::View::rows(&w, k),
        );
        let dx = col2im(&dcols, self.grid, c_in);
        Ok((
            Some(Tensor::from_vec(dx, (rows, c_in), x.device())?),
            Some(dw),
        ))
    }
}

/// 2 x 2 max-pool, stride 2, of rows `[N * H * W, C]` to `[N * (H / 2) *
/// (W / 2), C]` ([`kernels::max_pool_2x2`]: odd last rows and columns
/// dropped, and the gradient to the first maximum of each window, as
/// torch). The forward keeps each output's winner for the backward.
struct MaxPool {
    grid: Grid,
    winners: std::sync::Mutex<Vec<f32>>,
}

impl MaxPool {
    fn new(grid: Grid) -> Self {
        Self {
            grid,
            winners: Default::default(),
        }
    }

    fn pixels(&self, c: usize) -> kernels::Pixels {
        let Grid { n, h, w } = self.grid;
        kernels::Pixels { n, h, w, c }
    }

    /// The pooled rows and each output's winner.
    fn pool(&self, x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
        let Grid { n, h, w } = self.grid;
        let len = n * (h / 2) * (w / 2) * c;
        let (mut out, mut winners) = (vec![0f32; len], vec![0f32; len]);
        kernels::max_pool_2x2(x, self.pixels(c), &mut out, &mut winners);
        (out, winners)
    }
}

impl candle_core::CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let c = l.shape().dims2()?.1;
        let (out, winners) = self.pool(x, c);
        *self.winners.lock().expect("max-pool winners") = winners;
        let rows = out.len() / c.max(1);
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((rows, c)),
        ))
    }
    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut winners = std::mem::take(&mut *self.winners.lock().expect("max-pool winners"));
        if winners.len() != res.elem_count() {
            // Not from this op's forward (a second backward): recompute.
            let x = arg.flatten_all()?.to_vec1::<f32>()?;
            winners = self.pool(&x, arg.dim(1)?).1;
        }
        let pixels = self.pixels(arg.dim(1)?);
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&MaxPoolBwd { pixels, winners })?,
        ))
    }
}

/// Gradient of the output -> gradient of the input, by the forward's
/// winners.
struct MaxPoolBwd {
    pixels: kernels::Pixels,
    winners: Vec<f32>,
}

impl candle_core::CustomOp1 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "max-pool-2x2-bwd"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let kernels::Pixels { n, h, w, c } = self.pixels;
        let mut dx = vec![0f32; n * h * w * c];
        kernels::max_pool_2x2_bwd(g, &self.winners, self.pixels, &mut dx);
        Ok((
            candle_core::CpuStorage::F32(dx),
            candle_core::Shape::from((n * h * w, c)),
        ))
    }
}

/// Per column of rows `[M, C]`: the mean and the biased variance, `[2, C]`
/// (sums in f64).
struct ColStats;

impl candle_core::CustomOp1 for ColStats {
    fn name(&self) -> &'static str {
        "column-stats"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let z = f32_slice(s, l, self.name())?;
        let (m, c) = l.shape().dims2()?;
        let mut sum = vec![0f64; c];
        for row in z.chunks_exact(c) {
            for (a, v) in sum.iter_mut().zip(row) {
                *a += *v as f64;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|v| v / m as f64).collect();
        let mut sq = vec![0f64; c];
        for row in z.chunks_exact(c) {
            for ((a, v), mu) in sq.iter_mut().zip(row).zip(&mean) {
                let d = *v as f64 - mu;
                *a += d * d;
            }
        }
        let mut out: Vec<f32> = mean.iter().map(|v| *v as f32).collect();
        out.extend(sq.iter().map(|v| (v / m as f64) as f32));
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((2, c)),
        ))
    }
}

/// Train-mode BatchNorm and ReLU in one pass over rows `[M, C]`:
/// `relu(gamma * (z - mean) / sqrt(var + eps) + beta)`, with arguments `z`,
/// `[gamma; beta]` `[2, C]` and the batch's [`ColStats`]. Its backward is
/// the usual closed form (the statistics depend on `z`):
/// `dz = gamma / (M sqrt(var + eps)) * (M dy - sum dy - xhat * sum(dy xhat))`
/// with `dy` the output gradient masked by the ReLU.
struct BnReluTrain;

impl BnReluTrain {
    /// Per column: gamma * inv_std, beta - mean * gamma * inv_std, inv_std.
    fn coefficients(gb: &[f32], stats: &[f32], c: usize) -> Vec<(f32, f32, f32, f32)> {
        (0..c)
            .map(|j| {
                let inv = 1.0 / ((stats[c + j] as f64) + BN_EPS).sqrt();
                let a = gb[j] as f64 * inv;
                (
                    a as f32,
                    (gb[c + j] as f64 - stats[j] as f64 * a) as f32,
                    inv as f32,
                    stats[j],
                )
            })
            .collect()
    }
}

impl candle_core::CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "batch-norm-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let z = f32_slice(s1, l1, self.name())?;
        let gb = f32_slice(s2, l2, self.name())?;
        let stats = f32_slice(s3, l3, self.name())?;
        let c = l1.shape().dims2()?.1;
        let k = Self::coefficients(gb, stats, c);
        let mut out = Vec::with_capacity(z.len());
        for row in z.chunks_exact(c) {
            out.extend(row.iter().zip(&k).map(|(v, k)| (k.0 * v + k.1).max(0.0)));
        }
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        z: &Tensor,
        gb: &Tensor,
        stats: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, c) = z.dims2()?;
        let zv = z.flatten_all()?.to_vec1::<f32>()?;
        let ov = out.flatten_all()?.to_vec1::<f32>()?;
        let gv = grad.flatten_all()?.to_vec1::<f32>()?;
        let gbv = gb.flatten_all()?.to_vec1::<f32>()?;
        let k = Self::coefficients(&gbv, &stats.flatten_all()?.to_vec1::<f32>()?, c);
        // Per column, as separate arrays so that the row loops vectorise.
        let mean: Vec<f32> = k.iter().map(|k| k.3).collect();
        let inv: Vec<f32> = k.iter().map(|k| k.2).collect();
        let gain: Vec<f32> = gbv[..c].iter().zip(&inv).map(|(g, i)| g * i).collect();
        let cols = kernels::BnColumns {
            mean: &mean,
            inv: &inv,
            gain: &gain,
        };
        let (mut sdy, mut sdyx) = (vec![0f64; c], vec![0f64; c]);
        kernels::bn_relu_bwd_sums(&zv, &ov, &gv, &cols, &mut sdy, &mut sdyx);
        let (sdy32, sdyx32): (Vec<f32>, Vec<f32>) = sdy
            .iter()
            .zip(&sdyx)
            .map(|(a, b)| (*a as f32, *b as f32))
            .unzip();
        let mut dz = vec![0f32; zv.len()];
        let inv_m = 1.0 / m as f32;
        kernels::bn_relu_bwd_dz(&zv, &ov, &gv, &cols, &sdy32, &sdyx32, inv_m, &mut dz);
        let mut dgb: Vec<f32> = sdyx.iter().map(|v| *v as f32).collect();
        dgb.extend(sdy.iter().map(|v| *v as f32));
        Ok((
            Some(Tensor::from_vec(dz, (m, c), z.device())?),
            Some(Tensor::from_vec(dgb, (2, c), z.device())?),
            None,
        ))
    }
}

/// BatchNorm's epsilon and momentum, torch's defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Output channels of each conv block; each block halves the image side.
    pub channels: Vec<usize>,
    /// Width of the hidden linear layer.
    pub hidden: usize,
    /// BatchNorm2d after each convolution.
    pub batch_norm: bool,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            channels: vec![32, 64],
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

    /// The side after every block's 2 x 2 max-pool (floor, as torch).
    pub fn final_side(&self, side: usize) -> usize {
        self.channels.iter().fold(side, |s, _| s / 2)
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
        Ok(())
    }
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
}

pub struct Cnn {
    pub params: Params,
    side: usize,
    blocks: Vec<Block>,
    fc1: (Var, Var),
    fc2: (Var, Var),
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
            blocks.push(Block { w, b, bn });
            c_in = c;
        }
        let last = cfg.final_side(side);
        if last == 0 {
            bail_usage!(
                "cnn: {} pooling blocks shrink a {side} x {side} image to nothing; use fewer channels entries",
                cfg.channels.len()
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
        })
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
            a = r.apply_op1(MaxPool::new(grid))?;
            side /= 2;
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
            h = max_pool_nchw(&h)?;
        }
        let h = Self::linear(&h.flatten_from(1)?, &self.fc1)?.relu()?;
        if let Some(out) = hidden {
            out.push(h.clone());
        }
        Self::linear(&h, &self.fc2)
    }
}
