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
//! reference; `tests/cnn.rs` checks that both give the same loss and
//! gradients on fresh random batches, on one and on two threads.

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};
use rayon::prelude::*;

use super::first;
use super::ops::BN_EPS;
use super::rows::{
    self, col2im_image, column_stats, flatten, im2col_image, linear, linear_bwd, unflatten,
};
use crate::models::kernels as k;
use crate::models::matmul::{View, matmul, parallelism, small_matmul, transposed};

/// Convolutions with fewer output channels than this (and at most 512
/// products per output) multiply with [`small_matmul`], not gemm: 16
/// channels fill a quarter of gemm's tile.
const THIN_BELOW: usize = 32;

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
    /// Per block: whether it ends with a 2 x 2 max-pool.
    pools: Vec<bool>,
    hidden: usize,
    classes: usize,
}

impl Dims {
    /// Per block: the side of its input, its input and output channels,
    /// whether it pools.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize, bool)> + '_ {
        let mut side = self.side;
        let mut c_in = 1;
        self.channels
            .iter()
            .zip(&self.pools)
            .map(move |(&c, &pool)| {
                let out = (side, c_in, c, pool);
                if pool {
                    side /= 2;
                }
                c_in = c;
                out
            })
    }

    fn last_side(&self) -> usize {
        self.blocks()
            .last()
            .map_or(self.side, |(s, _, _, pool)| if pool { s / 2 } else { s })
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
    /// Ends with a 2 x 2 max-pool.
    pool: bool,
    /// The network's first block on one-channel images, computed straight
    /// from the pixels (`first.rs`): `cols` stays empty.
    direct: bool,
    /// `[N * S * S, 9 * c_in + 1]`: the patches, `(ky, kx, c_in)`, and 1.
    cols: Vec<f32>,
    /// `[c, 9 * c_in + 1]`: the weights in the patches' order, and the bias.
    wb: Vec<f32>,
    /// `wb` transposed, `[9 * c_in + 1, c]`, for the thin layers' product
    /// and the first layer's (sized on first use).
    wt: Vec<f32>,
    /// `wb`'s gradient (`dzᵀ · cols`), before it is reordered into torch's
    /// layout: kept across steps like the other buffers.
    dwb: Vec<f32>,
    /// `[N * S * S, c]`: the convolution's output, BatchNorm + ReLU's.
    z: Vec<f32>,
    r: Vec<f32>,
    /// `[N * (S/2)^2, c]`: the max-pool's output and each output's winner
    /// (without a pool, `[N * S * S, c]`, unused in the forward, where the
    /// block's output is `r`, and no winners). In the backward it holds the
    /// gradient of the block's output.
    pooled: Vec<f32>,
    winners: Vec<f32>,
    /// BatchNorm per channel: batch mean, biased variance, 1/sqrt(var +
    /// eps), gamma / sqrt(var + eps), the shift.
    mean: Vec<f32>,
    var: Vec<f32>,
    inv: Vec<f32>,
    gain: Vec<f32>,
    shift: Vec<f32>,
    /// Backward: the gradients of `r` and of `z`.
    dr: Vec<f32>,
    dz: Vec<f32>,
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
    /// One buffer per thread for one image's patch gradients (`[S * S, 9 *
    /// c_in]`, the largest over the blocks), kept across steps (allocated
    /// per call, their fresh pages showed as page clearing in `perf`).
    dcols: Vec<Vec<f32>>,
}

impl Workspace {
    fn new(d: Dims) -> Self {
        let n = d.n;
        let blocks = d
            .blocks()
            .enumerate()
            .map(|(i, (side, c_in, c, pool))| {
                let (rows, kk) = (n * side * side, 9 * c_in + 1);
                // The first layer on grey images: no patch matrix.
                let direct = i == 0 && first::applies(c_in, c);
                let pooled = if pool {
                    n * (side / 2) * (side / 2) * c
                } else {
                    rows * c
                };
                BlockActs {
                    side,
                    c_in,
                    c,
                    pool,
                    direct,
                    cols: if direct { vec![] } else { vec![0.0; rows * kk] },
                    wb: vec![0.0; c * kk],
                    wt: vec![],
                    dwb: vec![0.0; c * kk],
                    z: vec![0.0; rows * c],
                    r: vec![0.0; rows * c],
                    pooled: vec![0.0; pooled],
                    winners: if pool { vec![0.0; pooled] } else { vec![] },
                    mean: vec![0.0; c],
                    var: vec![0.0; c],
                    inv: vec![0.0; c],
                    gain: vec![0.0; c],
                    shift: vec![0.0; c],
                    dr: vec![0.0; rows * c],
                    dz: vec![0.0; rows * c],
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
            dcols: vec![],
            blocks,
            dims: d,
        }
    }
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
    let thin = c < THIN_BELOW && kk <= 512;
    if a.direct || thin {
        // SAFETY: `wb` holds c x kk.
        unsafe { transposed(View::rows(&a.wb, kk), c, kk, &mut a.wt) };
    }
    if a.direct {
        // One input channel: straight from the pixels (`first.rs`).
        let wt = &a.wt;
        a.z.par_chunks_mut(hw * c)
            .zip(x.par_chunks(hw))
            .for_each_init(Vec::new, |pad, (z, img)| {
                first::forward_image(img, side, wt, c, z, pad)
            });
    } else if kk <= 512 {
        // Each image's patches are multiplied as soon as they are made,
        // while they are in cache: over the whole batch the product read
        // them back from memory (the 16-channel layer at 28 x 28: 29 MB,
        // 54 GFLOP/s on one Zen 4 core, against 115 for one image's). With
        // k in one of gemm's slices (at most 512) every element's sum is
        // the same whichever rows a call holds, so the bits are those of
        // the one product over the batch.
        let (wb, wt) = (View::rows(&a.wb, kk).t(), View::rows(&a.wt, c));
        a.cols
            .par_chunks_mut(hw * kk)
            .zip(x.par_chunks(hw * c_in))
            .zip(a.z.par_chunks_mut(hw * c))
            .for_each(|((cols, img), z)| {
                im2col_image(img, side, c_in, cols);
                let cols = View::rows(cols, kk);
                // SAFETY: `z` holds hw x c; `cols` hw x kk; `wb` c x kk
                // (`wt` its transpose).
                unsafe {
                    if thin {
                        // gemm's tile would be a quarter full here.
                        small_matmul(hw, c, kk, z.as_mut_ptr(), c, cols, wt)
                    } else {
                        matmul(
                            hw,
                            c,
                            kk,
                            z.as_mut_ptr(),
                            c,
                            false,
                            cols,
                            wb,
                            gemm::Parallelism::None,
                        )
                    }
                }
            });
    } else {
        a.cols
            .par_chunks_mut(hw * kk)
            .zip(x.par_chunks(hw * c_in))
            .for_each(|(out, img)| im2col_image(img, side, c_in, out));
        // SAFETY: `z` holds rows x c; `cols` rows x kk, `wb` c x kk.
        unsafe {
            matmul(
                n * hw,
                c,
                kk,
                a.z.as_mut_ptr(),
                c,
                false,
                View::rows(&a.cols, kk),
                View::rows(&a.wb, kk).t(),
                parallelism(),
            )
        }
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
    if !a.pool {
        return;
    }
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

/// One block's backward from the gradient of its pooled output `dp` (for
/// a block without a pool, the caller puts its output's gradient in
/// `a.dr` and `dp` is not read): its parameters' gradients into `g`, and,
/// when asked, its input's gradient into `dx`. `pixels`: the images, for
/// the first block (which keeps no patch matrix when `a.direct`).
fn block_backward(
    a: &mut BlockActs,
    pixels: Option<&[f32]>,
    dp: &[f32],
    g: &mut BlockTensors<Vec<f32>>,
    dx: Option<&mut [f32]>,
    parts: &mut Vec<f64>,
    scratch: &mut Vec<Vec<f32>>,
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
    if a.pool {
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
    }
    // (Without a pool, `dr` is `dp` itself: the caller swapped it in.)
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
    if a.direct {
        let x = pixels.expect("the first block's backward gets the images");
        first::weight_grad(x, side, &a.dz, c, &mut a.dwb);
    } else {
        // SAFETY: `dwb` holds c x kk; `dz` rows x c, `cols` rows x kk.
        unsafe {
            matmul(
                c,
                kk,
                rows,
                a.dwb.as_mut_ptr(),
                kk,
                false,
                View::rows(&a.dz, c).t(),
                View::rows(&a.cols, kk),
                parallelism(),
            )
        }
    }
    for (o, row) in a.dwb.chunks_exact(kk).enumerate() {
        for ci in 0..c_in {
            for t in 0..9 {
                g.w[(o * c_in + ci) * 9 + t] = row[t * c_in + ci];
            }
        }
        g.b[o] = row[kk - 1];
    }
    if let Some(dx) = dx {
        // The patches' gradient dz · w (the bias column left out), summed
        // back onto the pixels, one image at a time: its patches' gradient
        // (`[S * S, 9 * c_in]`, 451 KB at 28 x 28 x 16) is summed while it
        // is in cache. Made for the whole batch at once, it went to memory
        // and back (63 MB a step in the BasicNet-like CNN, where col2im
        // was 17 % of the step). Each element is the same k-sum as in one
        // product over all rows, so the bits do not change (tested against
        // autograd, and checkpoints compared).
        let kw = kk - 1;
        let (dz, wb) = (&a.dz, &a.wb);
        // Images in as many contiguous groups as threads, each group with
        // its own buffer (which image goes where does not change a bit).
        let n = dx.len() / (hw * c_in);
        let groups = rayon::current_num_threads().clamp(1, n.max(1));
        let per = n.div_ceil(groups);
        scratch.resize_with(groups.max(scratch.len()), Vec::new);
        dx.par_chunks_mut(per * hw * c_in)
            .zip(dz.par_chunks(per * hw * c))
            .zip(scratch.par_iter_mut())
            .for_each(|((dx, dz), dcols)| {
                if dcols.len() < hw * kw {
                    dcols.resize(hw * kw, 0.0);
                }
                for (dx, dz) in dx.chunks_exact_mut(hw * c_in).zip(dz.chunks_exact(hw * c)) {
                    // SAFETY: `dcols` holds at least hw x kw; `dz` hw x c;
                    // `wb`'s first kw columns, c rows of kk.
                    unsafe {
                        matmul(
                            hw,
                            kw,
                            c,
                            dcols.as_mut_ptr(),
                            kw,
                            false,
                            View::rows(dz, c),
                            View::rows(wb, kk),
                            gemm::Parallelism::None,
                        )
                    }
                    col2im_image(&dcols[..hw * kw], side, c_in, dx);
                }
            });
    }
}

/// Mean cross-entropy and every parameter's gradient for flat images `x`
/// (`[N, side * side]`) and labels `y`, in train mode; returns also each
/// block's batch mean and biased variance (for the running statistics).
#[allow(clippy::type_complexity)]
pub(super) fn loss_and_grads(
    vars: &ParamTensors<&Var>,
    side: usize,
    pools: &[bool],
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
        pools: pools.to_vec(),
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
        dcols,
        ..
    } = ws;

    // Forward.
    for i in 0..blocks.len() {
        let (done, rest) = blocks.split_at_mut(i);
        let input: &[f32] = match done.last() {
            Some(prev) if prev.pool => &prev.pooled,
            Some(prev) => &prev.r,
            None => &xv,
        };
        block_forward(&p.blocks[i], n, input, &mut rest[0], parts);
    }
    let last = blocks.last().expect("a cnn has a block");
    let s2 = dims.last_side().pow(2);
    flatten(
        if last.pool { &last.pooled } else { &last.r },
        s2,
        last.c,
        flat,
    );
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
        if !a.pool {
            // The output's gradient is the ReLU output's: the buffers
            // trade places (same size) instead of a copy.
            std::mem::swap(&mut a.dr, &mut dp);
        }
        match before.last_mut() {
            Some(prev) => {
                // The previous block's pooled output is no longer needed:
                // it becomes this block's input gradient.
                let mut dprev = std::mem::take(&mut prev.pooled);
                block_backward(a, None, &dp, gb, Some(&mut dprev), parts, dcols);
                a.pooled = std::mem::replace(&mut dp, dprev);
            }
            None => {
                block_backward(a, Some(&xv), &dp, gb, None, parts, dcols);
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
