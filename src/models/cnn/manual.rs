//! The CNN's training step on the CPU in f32, written by hand (as the
//! Transformer's `transformer/manual.rs`): forward and backward without
//! autograd, into buffers kept from step to step, every buffer written
//! whole (no zero fill), and every row pass split across rayon's threads
//! in fixed blocks of rows (one image each), so that the numbers do not
//! depend on the number of threads.
//!
//! The patch matrix here is ordered `(ky, kx, c_in)` per row (the
//! autograd path's is torch's `(c_in, ky, kx)`), so that im2col copies,
//! and col2im adds, whole pixel rows of `c_in` channels; the weights are
//! permuted to match once per step (a few thousand values).
//!
//! Autograd over the same model (`Model::loss_and_grads_autograd`) is the
//! reference; `tests/training.rs` checks that both give the same loss and
//! gradients on fresh random batches, on one and on two threads.

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};
use rayon::prelude::*;

use super::ops::BN_EPS;
use super::rows;
use crate::models::kernels::{self as k, View, matmul};

/// The parameters of one conv block, or their gradients.
pub(super) struct BlockTensors<T> {
    pub w: T,
    pub b: T,
    pub gamma: T,
    pub beta: T,
}

/// Every parameter by name, or every gradient (after llm.c's
/// `ParameterTensors`).
pub(super) struct ParamTensors<T> {
    pub blocks: Vec<BlockTensors<T>>,
    pub fc1: (T, T),
    pub fc2: (T, T),
}

impl<T> ParamTensors<T> {
    fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> ParamTensors<U> {
        ParamTensors {
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockTensors {
                    w: f(&b.w),
                    b: f(&b.b),
                    gamma: f(&b.gamma),
                    beta: f(&b.beta),
                })
                .collect(),
            fc1: (f(&self.fc1.0), f(&self.fc1.1)),
            fc2: (f(&self.fc2.0), f(&self.fc2.1)),
        }
    }

    fn try_map<U>(&self, mut f: impl FnMut(&T) -> Result<U>) -> Result<ParamTensors<U>> {
        let mut blocks = vec![];
        for b in &self.blocks {
            blocks.push(BlockTensors {
                w: f(&b.w)?,
                b: f(&b.b)?,
                gamma: f(&b.gamma)?,
                beta: f(&b.beta)?,
            });
        }
        Ok(ParamTensors {
            blocks,
            fc1: (f(&self.fc1.0)?, f(&self.fc1.1)?),
            fc2: (f(&self.fc2.0)?, f(&self.fc2.1)?),
        })
    }

    fn into_list(self) -> Vec<T> {
        let mut out = vec![];
        for b in self.blocks {
            out.extend([b.w, b.b, b.gamma, b.beta]);
        }
        out.extend([self.fc1.0, self.fc1.1, self.fc2.0, self.fc2.1]);
        out
    }
}

/// The sizes one workspace is for.
#[derive(Clone, PartialEq, Debug)]
struct Dims {
    /// Images in the batch.
    n: usize,
    /// The input side.
    side: usize,
    /// Output channels per block.
    channels: Vec<usize>,
    hidden: usize,
    classes: usize,
}

impl Dims {
    /// Per block: the side of its input, its input and output channels.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let mut side = self.side;
        let mut c_in = 1;
        self.channels.iter().map(move |&c| {
            let out = (side, c_in, c);
            side /= 2;
            c_in = c;
            out
        })
    }

    fn last_side(&self) -> usize {
        self.channels.iter().fold(self.side, |s, _| s / 2)
    }

    fn flat(&self) -> usize {
        self.channels.last().copied().unwrap_or(1) * self.last_side().pow(2)
    }
}

/// What one block's forward keeps, and its backward buffers.
struct BlockActs {
    side: usize,
    c_in: usize,
    c: usize,
    /// `[N * S * S, 9 * c_in + 1]`: the patches, `(ky, kx, c_in)`, and 1.
    cols: Vec<f32>,
    /// `[c, 9 * c_in + 1]`: the weights in the patches' order, and the bias.
    wb: Vec<f32>,
    /// `[N * S * S, c]`: the convolution's output, BatchNorm + ReLU's.
    z: Vec<f32>,
    r: Vec<f32>,
    /// `[N * (S/2)^2, c]`: the max-pool's output and each output's winner.
    pooled: Vec<f32>,
    winners: Vec<f32>,
    /// BatchNorm per channel: batch mean, biased variance, 1/sqrt(var +
    /// eps), gamma / sqrt(var + eps), the shift.
    mean: Vec<f32>,
    var: Vec<f32>,
    inv: Vec<f32>,
    gain: Vec<f32>,
    shift: Vec<f32>,
    /// Backward: the gradients of `r`, of `z`, and of the patches (`[N * S
    /// * S, 9 * c_in]`, not for the first block).
    dr: Vec<f32>,
    dz: Vec<f32>,
    dcols: Vec<f32>,
}

/// Buffers for one batch shape, kept across steps.
pub(super) struct Workspace {
    dims: Dims,
    blocks: Vec<BlockActs>,
    /// `[N, flat]`: the last block's output in torch's (channel-major)
    /// flattening, then its gradient.
    flat: Vec<f32>,
    dflat: Vec<f32>,
    /// `[N, hidden]`: the hidden layer's post-ReLU output and its gradient.
    h: Vec<f32>,
    dh: Vec<f32>,
    /// `[N, classes]`: logits, then their gradient.
    logits: Vec<f32>,
    row_loss: Vec<f64>,
    /// Per-image partial sums (f64), for the BatchNorm reductions.
    parts: Vec<f64>,
}

impl Workspace {
    fn new(d: Dims) -> Self {
        let n = d.n;
        let blocks = d
            .blocks()
            .enumerate()
            .map(|(i, (side, c_in, c))| {
                let (rows, kk) = (n * side * side, 9 * c_in + 1);
                let pooled = n * (side / 2) * (side / 2) * c;
                BlockActs {
                    side,
                    c_in,
                    c,
                    cols: vec![0.0; rows * kk],
                    wb: vec![0.0; c * kk],
                    z: vec![0.0; rows * c],
                    r: vec![0.0; rows * c],
                    pooled: vec![0.0; pooled],
                    winners: vec![0.0; pooled],
                    mean: vec![0.0; c],
                    var: vec![0.0; c],
                    inv: vec![0.0; c],
                    gain: vec![0.0; c],
                    shift: vec![0.0; c],
                    dr: vec![0.0; rows * c],
                    dz: vec![0.0; rows * c],
                    dcols: if i == 0 {
                        vec![]
                    } else {
                        vec![0.0; rows * 9 * c_in]
                    },
                }
            })
            .collect();
        Self {
            flat: vec![0.0; n * d.flat()],
            dflat: vec![0.0; n * d.flat()],
            h: vec![0.0; n * d.hidden],
            dh: vec![0.0; n * d.hidden],
            logits: vec![0.0; n * d.classes],
            row_loss: vec![0.0; n],
            parts: vec![],
            blocks,
            dims: d,
        }
    }
}

/// The 3 x 3, padding 1 patches of one image's rows `x` (`[S * S, c]`)
/// into `out` (`[S * S, 9 c + 1]`, `(ky, kx, c)` then a 1), every entry
/// written.
fn im2col_image(x: &[f32], side: usize, c: usize, out: &mut [f32]) {
    let kk = 9 * c + 1;
    for (row, o) in out.chunks_exact_mut(kk).enumerate() {
        let (y, x0) = (row / side, row % side);
        for ky in 0..3 {
            for kx in 0..3 {
                let dst = &mut o[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                let (sy, sx) = (y + ky, x0 + kx);
                if sy == 0 || sy > side || sx == 0 || sx > side {
                    dst.fill(0.0);
                } else {
                    let src = (sy - 1) * side + sx - 1;
                    dst.copy_from_slice(&x[src * c..(src + 1) * c]);
                }
            }
        }
        o[kk - 1] = 1.0;
    }
}

/// The adjoint of [`im2col_image`] for one image: each pixel's gradient
/// `dx` (`[S * S, c]`) is the sum of its patch entries in `dcols` (`[S *
/// S, 9 c]`, no ones column), every entry written.
fn col2im_image(dcols: &[f32], side: usize, c: usize, dx: &mut [f32]) {
    let kk = 9 * c;
    for (src, d) in dx.chunks_exact_mut(c).enumerate() {
        let (sy, sx) = (src / side, src % side);
        let mut first = true;
        // Output pixel (y, x) reads source (y + ky - 1, x + kx - 1).
        for ky in 0..3 {
            let y = sy + 1;
            if y < ky || y - ky >= side {
                continue;
            }
            for kx in 0..3 {
                let x = sx + 1;
                if x < kx || x - kx >= side {
                    continue;
                }
                let row = (y - ky) * side + (x - kx);
                let at = row * kk + (ky * 3 + kx) * c;
                let part = &dcols[at..at + c];
                if first {
                    d.copy_from_slice(part);
                    first = false;
                } else {
                    rows::add_rows(d, part);
                }
            }
        }
        if first {
            d.fill(0.0);
        }
    }
}

/// `out[rows, fout] = b + x[rows, fin] · wᵀ`, `w` as torch's `[fout, fin]`.
fn linear(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32]) {
    let fout = b.len();
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(out.len() == rows * fout && x.len() == rows * fin);
    for row in out.chunks_exact_mut(fout) {
        row.copy_from_slice(b);
    }
    // SAFETY: shapes checked above; `out` is exclusively borrowed.
    unsafe {
        matmul(
            rows,
            fout,
            fin,
            out.as_mut_ptr(),
            fout,
            true,
            View::rows(x, fin),
            View::rows(w, fin).t(),
            k::parallelism(),
        )
    }
}

/// Gradients of a linear layer with weights `w [fout, fin]` from `dout
/// [rows, fout]` and its input `x [rows, fin]`: `gw = doutᵀ · x`, `gb` the
/// column sums, and, when asked, `dx = dout · w`.
fn linear_bwd(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    gw: &mut [f32],
    gb: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let fout = gb.len();
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(dout.len() == rows * fout && gw.len() == fout * fin);
    let par = k::parallelism();
    // SAFETY: shapes checked above; the outputs are exclusive borrows.
    unsafe {
        matmul(
            fout,
            fin,
            rows,
            gw.as_mut_ptr(),
            fin,
            false,
            View::rows(dout, fout).t(),
            View::rows(x, fin),
            par,
        );
    }
    gb.fill(0.0);
    for row in dout.chunks_exact(fout) {
        rows::add_rows(gb, row);
    }
    if let Some(dx) = dx {
        assert!(dx.len() == rows * fin);
        // SAFETY: as above.
        unsafe {
            matmul(
                rows,
                fin,
                fout,
                dx.as_mut_ptr(),
                fin,
                false,
                View::rows(dout, fout),
                View::rows(w, fin),
                par,
            )
        }
    }
}

/// Per column of `x` (`[M, c]`, in blocks of `block` rows, one partial
/// each, added in block order): the mean and the biased variance, in f64.
fn column_stats(x: &[f32], c: usize, block: usize, parts: &mut Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    let m = x.len() / c;
    let blocks = x.len().div_ceil(block * c);
    let reduce = |parts: &mut Vec<f64>, f: &(dyn Fn(&[f32], &mut [f64]) + Sync)| {
        parts.clear();
        parts.resize(blocks * c, 0.0);
        parts
            .par_chunks_mut(c)
            .zip(x.par_chunks(block * c))
            .for_each(|(p, rows)| f(rows, p));
        let mut total = vec![0f64; c];
        for p in parts.chunks_exact(c) {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        total
    };
    let mean: Vec<f64> = reduce(parts, &|rows, p| rows::col_sums_f64(rows, p))
        .into_iter()
        .map(|s| s / m as f64)
        .collect();
    let var = reduce(parts, &|rows, p| rows::col_sq_dev_f64(rows, &mean, p))
        .into_iter()
        .map(|s| s / m as f64)
        .collect();
    (mean, var)
}

/// The f32 contents of a contiguous CPU tensor.
fn host(s: &Storage, l: &candle_core::Layout) -> Result<*const [f32]> {
    match (s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b] as *const [f32]),
        _ => bail!("the hand-written CNN step needs contiguous f32 CPU parameters"),
    }
}

/// One block's forward from its input rows `x` (`[N * S * S, c_in]`).
fn block_forward(
    p: &BlockTensors<&[f32]>,
    n: usize,
    x: &[f32],
    a: &mut BlockActs,
    parts: &mut Vec<f64>,
) {
    let (side, c_in, c) = (a.side, a.c_in, a.c);
    let (hw, kk) = (side * side, 9 * c_in + 1);
    // The weights in the patches' order, the bias last.
    for (o, row) in a.wb.chunks_exact_mut(kk).enumerate() {
        for ci in 0..c_in {
            for t in 0..9 {
                row[t * c_in + ci] = p.w[(o * c_in + ci) * 9 + t];
            }
        }
        row[kk - 1] = p.b[o];
    }
    a.cols
        .par_chunks_mut(hw * kk)
        .zip(x.par_chunks(hw * c_in))
        .for_each(|(out, img)| im2col_image(img, side, c_in, out));
    let rows = n * hw;
    // SAFETY: `z` holds rows x c; `cols` rows x kk, `wb` c x kk.
    unsafe {
        matmul(
            rows,
            c,
            kk,
            a.z.as_mut_ptr(),
            c,
            false,
            View::rows(&a.cols, kk),
            View::rows(&a.wb, kk).t(),
            k::parallelism(),
        )
    }
    let (mean, var) = column_stats(&a.z, c, hw, parts);
    for j in 0..c {
        let inv = 1.0 / (var[j] + BN_EPS).sqrt();
        let gain = p.gamma[j] as f64 * inv;
        a.mean[j] = mean[j] as f32;
        a.var[j] = var[j] as f32;
        a.inv[j] = inv as f32;
        a.gain[j] = gain as f32;
        a.shift[j] = (p.beta[j] as f64 - a.mean[j] as f64 * gain) as f32;
    }
    let (gain, shift) = (&a.gain, &a.shift);
    a.r.par_chunks_mut(hw * c)
        .zip(a.z.par_chunks(hw * c))
        .for_each(|(r, z)| rows::scale_shift_relu(z, gain, shift, r));
    let pix = k::Pixels {
        n: 1,
        h: side,
        w: side,
        c,
    };
    let out = (side / 2) * (side / 2) * c;
    if out > 0 {
        a.pooled
            .par_chunks_mut(out)
            .zip(a.winners.par_chunks_mut(out))
            .zip(a.r.par_chunks(hw * c))
            .for_each(|((o, win), r)| k::max_pool_2x2(r, pix, o, win));
    }
}

/// One block's backward from the gradient of its pooled output `dp`:
/// its parameters' gradients into `g`, and, when asked, its input's
/// gradient into `dx`.
fn block_backward(
    a: &mut BlockActs,
    dp: &[f32],
    g: &mut BlockTensors<Vec<f32>>,
    dx: Option<&mut [f32]>,
    parts: &mut Vec<f64>,
) {
    let (side, c_in, c) = (a.side, a.c_in, a.c);
    let (hw, kk) = (side * side, 9 * c_in + 1);
    let rows = a.z.len() / c;
    let pix = k::Pixels {
        n: 1,
        h: side,
        w: side,
        c,
    };
    let out = (side / 2) * (side / 2) * c;
    let odd = side % 2 == 1;
    a.dr.par_chunks_mut(hw * c)
        .zip(dp.par_chunks(out.max(1)))
        .zip(a.winners.par_chunks(out.max(1)))
        .for_each(|((dr, dp), win)| {
            if odd {
                dr.fill(0.0);
            }
            k::max_pool_2x2_bwd(dp, win, pix, dr)
        });
    // BatchNorm + ReLU: per-image partial sums, added in image order.
    let cols = k::BnColumns {
        mean: &a.mean,
        inv: &a.inv,
        gain: &a.gain,
    };
    let blocks = rows.div_ceil(hw);
    parts.clear();
    parts.resize(blocks * 2 * c, 0.0);
    parts
        .par_chunks_mut(2 * c)
        .zip(a.z.par_chunks(hw * c))
        .zip(a.r.par_chunks(hw * c))
        .zip(a.dr.par_chunks(hw * c))
        .for_each(|(((p, z), r), dr)| {
            let (sdy, sdyx) = p.split_at_mut(c);
            k::bn_relu_bwd_sums(z, r, dr, &cols, sdy, sdyx)
        });
    let (mut sdy, mut sdyx) = (vec![0f64; c], vec![0f64; c]);
    for p in parts.chunks_exact(2 * c) {
        for j in 0..c {
            sdy[j] += p[j];
            sdyx[j] += p[c + j];
        }
    }
    let sdy32: Vec<f32> = sdy.iter().map(|v| *v as f32).collect();
    let sdyx32: Vec<f32> = sdyx.iter().map(|v| *v as f32).collect();
    let inv_m = 1.0 / rows as f32;
    a.dz.par_chunks_mut(hw * c)
        .zip(a.z.par_chunks(hw * c))
        .zip(a.r.par_chunks(hw * c))
        .zip(a.dr.par_chunks(hw * c))
        .for_each(|(((dz, z), r), dr)| {
            k::bn_relu_bwd_dz(z, r, dr, &cols, &sdy32, &sdyx32, inv_m, dz)
        });
    g.gamma.copy_from_slice(&sdyx32);
    g.beta.copy_from_slice(&sdy32);
    // [weights | bias] gradient: dzᵀ · cols, [c, kk].
    let mut dwb = vec![0f32; c * kk];
    // SAFETY: `dwb` holds c x kk; `dz` rows x c, `cols` rows x kk.
    unsafe {
        matmul(
            c,
            kk,
            rows,
            dwb.as_mut_ptr(),
            kk,
            false,
            View::rows(&a.dz, c).t(),
            View::rows(&a.cols, kk),
            k::parallelism(),
        )
    }
    for (o, row) in dwb.chunks_exact(kk).enumerate() {
        for ci in 0..c_in {
            for t in 0..9 {
                g.w[(o * c_in + ci) * 9 + t] = row[t * c_in + ci];
            }
        }
        g.b[o] = row[kk - 1];
    }
    if let Some(dx) = dx {
        // The patches' gradient dz · w (the bias column left out), summed
        // back onto the pixels.
        let kw = kk - 1;
        // SAFETY: `dcols` holds rows x kw; `wb`'s first kw columns.
        unsafe {
            matmul(
                rows,
                kw,
                c,
                a.dcols.as_mut_ptr(),
                kw,
                false,
                View::rows(&a.dz, c),
                View::rows(&a.wb, kk),
                k::parallelism(),
            )
        }
        dx.par_chunks_mut(hw * c_in)
            .zip(a.dcols.par_chunks(hw * kw))
            .for_each(|(dx, dcols)| col2im_image(dcols, side, c_in, dx));
    }
}

/// Pooled rows `[N * S * S, c]` to torch's flattening `[N, c * S * S]`.
fn flatten(x: &[f32], s2: usize, c: usize, out: &mut [f32]) {
    out.par_chunks_mut(c * s2)
        .zip(x.par_chunks(s2 * c))
        .for_each(|(o, img)| {
            for (p, row) in img.chunks_exact(c).enumerate() {
                for (j, v) in row.iter().enumerate() {
                    o[j * s2 + p] = *v;
                }
            }
        });
}

/// The adjoint of [`flatten`].
fn unflatten(d: &[f32], s2: usize, c: usize, out: &mut [f32]) {
    out.par_chunks_mut(s2 * c)
        .zip(d.par_chunks(c * s2))
        .for_each(|(o, img)| {
            for (p, row) in o.chunks_exact_mut(c).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = img[j * s2 + p];
                }
            }
        });
}

/// Mean cross-entropy and every parameter's gradient for flat images `x`
/// (`[N, side * side]`) and labels `y`, in train mode; returns also each
/// block's batch mean and biased variance (for the running statistics).
#[allow(clippy::type_complexity)]
pub(super) fn loss_and_grads(
    vars: &ParamTensors<&Var>,
    side: usize,
    workspace: &std::sync::Mutex<Option<Box<Workspace>>>,
    x: &Tensor,
    y: &Tensor,
) -> Result<(f64, GradStore, Vec<(Vec<f32>, Vec<f32>)>)> {
    let n = x.dim(0)?;
    let dims = Dims {
        n,
        side,
        channels: vars
            .blocks
            .iter()
            .map(|b| b.b.dim(0))
            .collect::<candle_core::Result<_>>()?,
        hidden: vars.fc1.1.dim(0)?,
        classes: vars.fc2.1.dim(0)?,
    };
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let yv: Vec<u32> = y.flatten_all()?.to_vec1()?;
    if xv.len() != n * side * side || yv.len() != n {
        bail!(
            "cnn: {} inputs and {} labels for {n} images of side {side}",
            xv.len(),
            yv.len()
        );
    }
    if let Some(bad) = yv.iter().find(|&&t| t as usize >= dims.classes) {
        bail!("label {bad} out of range for {} classes", dims.classes);
    }
    let guards = vars.map(|v| v.as_tensor().storage_and_layout());
    let ptrs = guards.try_map(|(s, l)| host(s, l))?;
    // SAFETY: the read guards keep the storages alive and unwritten until
    // they are dropped, after the last use of `p`.
    let p: ParamTensors<&[f32]> = ptrs.map(|&x| unsafe { &*x });

    let mut slot = workspace.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(&*slot, Some(w) if w.dims == dims) {
        *slot = Some(Box::new(Workspace::new(dims.clone())));
    }
    let ws: &mut Workspace = slot.as_mut().expect("just set");
    let Workspace {
        blocks,
        flat,
        dflat,
        h,
        dh,
        logits,
        row_loss,
        parts,
        ..
    } = ws;

    // Forward.
    for i in 0..blocks.len() {
        let (done, rest) = blocks.split_at_mut(i);
        let input: &[f32] = match done.last() {
            Some(prev) => &prev.pooled,
            None => &xv,
        };
        block_forward(&p.blocks[i], n, input, &mut rest[0], parts);
    }
    let last = blocks.last().expect("a cnn has a block");
    let s2 = dims.last_side().pow(2);
    flatten(&last.pooled, s2, last.c, flat);
    linear(h, flat, p.fc1.0, p.fc1.1);
    rows::relu(h);
    linear(logits, h, p.fc2.0, p.fc2.1);
    let weight = 1.0 / n as f32;
    logits
        .par_chunks_mut(dims.classes)
        .zip(row_loss.par_iter_mut())
        .zip(yv.par_iter())
        .for_each(|((row, out), &t)| *out = k::cross_entropy_row(row, t as usize, weight));
    let loss = row_loss.iter().sum::<f64>() / n as f64;

    // Backward.
    let mut g = p.map(|v| vec![0f32; v.len()]);
    linear_bwd(logits, h, p.fc2.0, &mut g.fc2.0, &mut g.fc2.1, Some(dh));
    rows::relu_bwd(dh, h);
    linear_bwd(dh, flat, p.fc1.0, &mut g.fc1.0, &mut g.fc1.1, Some(dflat));
    let last = blocks.len() - 1;
    // The last block's pooled-output gradient, in rows.
    let mut dp = std::mem::take(&mut blocks[last].pooled);
    unflatten(dflat, s2, blocks[last].c, &mut dp);
    for i in (0..blocks.len()).rev() {
        let (before, rest) = blocks.split_at_mut(i);
        let a = &mut rest[0];
        let gb = &mut g.blocks[i];
        match before.last_mut() {
            Some(prev) => {
                // The previous block's pooled output is no longer needed:
                // it becomes this block's input gradient.
                let mut dprev = std::mem::take(&mut prev.pooled);
                block_backward(a, &dp, gb, Some(&mut dprev), parts);
                a.pooled = std::mem::replace(&mut dp, dprev);
            }
            None => {
                block_backward(a, &dp, gb, None, parts);
                a.pooled = std::mem::take(&mut dp);
            }
        }
    }
    let stats = blocks
        .iter()
        .map(|a| (a.mean.clone(), a.var.clone()))
        .collect();
    drop(slot);
    drop(guards);

    let mut store = GradStore::default();
    for (var, gv) in vars.map(|v| *v).into_list().into_iter().zip(g.into_list()) {
        store.insert(
            var.as_tensor(),
            Tensor::from_vec(gv, var.shape(), &Device::Cpu)?,
        );
    }
    Ok((loss, store, stats))
}
