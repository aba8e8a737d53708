//! The CNN's custom ops for the autograd path on the CPU (f32, rows
//! `[N * H * W, C]`): the 3 x 3 convolution as im2col and one matrix
//! product, the 2 x 2 max-pool, the column statistics and the fused
//! train-mode BatchNorm + ReLU, each with its backward.

use candle_core::Tensor;

use crate::models::ops::f32_slice;
use crate::models::{kernels, matmul};

/// Activations of the CPU path are "rows": `[N * H * W, C]`, one row per
/// pixel (n, y, x), which is what a convolution as one matrix product
/// gives and takes. Channel reductions are then column sums.
#[derive(Clone, Copy)]
pub(super) struct Grid {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// BatchNorm's epsilon and momentum, torch's defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// A 3 x 3, padding 1 convolution of rows `[N * H * W, C_in]` by
/// `[weights | bias]` `[C, C_in * 9 + 1]` (torch's weight order, the bias
/// last) to rows `[N * H * W, C]`: the patches as a matrix
/// ([`im2col`]) times the weights transposed. One op, so that the
/// gradient of the patch matrix (9 times the input) never becomes a tensor
/// that autograd allocates, zeroes and adds; the products are Candle's
/// own (the same `gemm` calls, so the same bits).
pub(super) struct Conv3x3 {
    pub grid: Grid,
    /// The forward's patch matrix, for the weights' gradient.
    pub cols: std::sync::Mutex<Vec<f32>>,
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
fn matmul(m: usize, n: usize, k: usize, a: matmul::View, b: matmul::View) -> Vec<f32> {
    let mut dst = vec![0f32; m * n];
    let par = match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: `dst` holds m x n; the callers' views address k x (m or n)
    // elements of slices they hold, which do not overlap `dst`.
    unsafe { matmul::matmul(m, n, k, dst.as_mut_ptr(), n, false, a, b, par) };
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
            matmul::View::rows(&cols, k),
            matmul::View::rows(wb, k).t(),
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
            matmul::View::rows(&cols, k).t(),
            matmul::View::rows(&g, c),
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
            matmul::View::rows(&g, c),
            matmul::View::rows(&w, k),
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
pub(super) struct MaxPool {
    grid: Grid,
    winners: std::sync::Mutex<Vec<f32>>,
}

impl MaxPool {
    pub fn new(grid: Grid) -> Self {
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
pub(super) struct ColStats;

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
pub(super) struct BnReluTrain;

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
