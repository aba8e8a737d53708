//! The Transformer's training step on the CPU in f32, written by hand:
//! the forward keeps what the backward needs in buffers reused from step
//! to step, and the backward computes each gradient with one matrix
//! product or one pass. No autograd graph, no temporaries per op, no
//! transposed copies (the matrix products read strided views).
//!
//! The parameters and their gradients are named views
//! ([`ParamTensors`], after llm.c's `ParameterTensors`): the model hands
//! over its tensors by name, and every weight is found by its name here.
//!
//! Autograd over the same model (`Model::loss_and_grads_autograd`) is the
//! reference; `tests/training.rs` checks that both give the same loss and
//! gradients on fresh random batches.

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::models::kernels::{self as k, View, matmul};

/// Rows per parallel task in the row-wise passes; fixed, so partial sums
/// (weight gradients of LayerNorm, bias gradients) are added in the same
/// order whatever the number of threads.
const ROWS: usize = 64;
const LN_EPS: f32 = 1e-5;

/// LayerNorm output and per-row statistics.
#[derive(Default)]
struct Norm {
    out: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl Norm {
    fn new(n: usize, d: usize) -> Self {
        Self {
            out: vec![0.0; n * d],
            mean: vec![0.0; n],
            rstd: vec![0.0; n],
        }
    }
}

/// What one layer's forward keeps for the backward.
struct LayerActs {
    /// The residual stream after attention (the MLP's input).
    mid: Vec<f32>,
    ln1: Norm,
    ln2: Norm,
    /// `[N, 3D]`: queries, keys and values.
    qkv: Vec<f32>,
    /// `[B, H, T, T]`: attention probabilities.
    att: Vec<f32>,
    /// `[N, D]`: the heads' outputs, before the projection.
    y: Vec<f32>,
    /// `[N, F]`: GELU output, and GELU's derivative at its input.
    act: Vec<f32>,
    dact: Vec<f32>,
}

/// Buffers for one batch shape, kept across steps.
pub(super) struct Workspace {
    /// The sizes the buffers are for.
    dims: Dims,
    /// The residual stream entering each block, and leaving the last.
    x: Vec<Vec<f32>>,
    layers: Vec<LayerActs>,
    lnf: Norm,
    /// Logits, then their gradient.
    logits: Vec<f32>,
    // Backward buffers.
    dx: Vec<f32>,
    dn: Vec<f32>,
    dy: Vec<f32>,
    dqkv: Vec<f32>,
    da: Vec<f32>,
    /// `[B, H, T, T]`: gradients of one layer's attention scores.
    datt: Vec<f32>,
    /// Each row's loss.
    row_loss: Vec<f64>,
    /// Partial sums per block of rows (bias, LayerNorm weight gradients).
    parts: Vec<f32>,
}

impl Workspace {
    fn new(s: Dims) -> Self {
        let (n, d, f) = (s.n, s.d, s.f);
        let layers = (0..s.layers)
            .map(|_| LayerActs {
                mid: vec![0.0; n * d],
                ln1: Norm::new(n, d),
                ln2: Norm::new(n, d),
                qkv: vec![0.0; n * 3 * d],
                att: vec![0.0; s.b * s.h * s.t * s.t],
                y: vec![0.0; n * d],
                act: vec![0.0; n * f],
                dact: vec![0.0; n * f],
            })
            .collect();
        Self {
            dims: s,
            x: (0..=s.layers).map(|_| vec![0.0; n * d]).collect(),
            layers,
            lnf: Norm::new(n, d),
            logits: vec![0.0; n * s.vocab],
            dx: vec![0.0; n * d],
            dn: vec![0.0; n * d],
            dy: vec![0.0; n * d],
            dqkv: vec![0.0; n * 3 * d],
            da: vec![0.0; n * f],
            datt: vec![0.0; s.b * s.h * s.t * s.t],
            row_loss: vec![0.0; n],
            parts: vec![],
        }
    }
}

/// A raw pointer that may cross threads: the attention tasks write
/// disjoint column blocks of shared row-major buffers.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used where the tasks write disjoint elements (see above).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
#[derive(Clone, Copy)]
struct Shared(View);
// SAFETY: read-only views of buffers nobody writes meanwhile.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The same view moved `off` elements along its buffer; callers pass
    /// offsets from [`Dims`], which stay inside the buffers it checked.
    fn at(self, off: usize) -> View {
        View {
            // SAFETY: see above; `add` stays inside the allocation.
            ptr: unsafe { self.0.ptr.add(off) },
            ..self.0
        }
    }
}

/// A weight and its bias: a linear layer's `w [out, in]` and `b [out]`, or
/// a LayerNorm's gain and shift (`[d]` each).
pub(super) struct Affine<T> {
    pub w: T,
    pub b: T,
}

/// One block's parameters, named as the model's fields.
pub(super) struct BlockTensors<T> {
    pub ln1: Affine<T>,
    pub qkv: Affine<T>,
    pub proj: Affine<T>,
    pub ln2: Affine<T>,
    pub fc: Affine<T>,
    pub fc_proj: Affine<T>,
}

/// Every parameter of the Transformer by name: the model's variables
/// (`T = &Var`), their contents (`&[f32]`), or their gradients
/// (`Vec<f32>`).
pub(super) struct ParamTensors<T> {
    /// `[vocab, d]`: token embeddings.
    pub tok: T,
    /// `[context, d]`: position embeddings.
    pub pos: T,
    pub blocks: Vec<BlockTensors<T>>,
    pub ln_f: Affine<T>,
    pub head: Affine<T>,
}

impl<T> Affine<T> {
    fn try_map<U, E>(&self, f: &mut impl FnMut(&T) -> Result<U, E>) -> Result<Affine<U>, E> {
        Ok(Affine {
            w: f(&self.w)?,
            b: f(&self.b)?,
        })
    }
}

impl<T> ParamTensors<T> {
    /// The same names over `f` of each tensor (the first error, if any).
    fn try_map<U, E>(&self, mut f: impl FnMut(&T) -> Result<U, E>) -> Result<ParamTensors<U>, E> {
        let f = &mut f;
        Ok(ParamTensors {
            tok: f(&self.tok)?,
            pos: f(&self.pos)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    Ok(BlockTensors {
                        ln1: b.ln1.try_map(f)?,
                        qkv: b.qkv.try_map(f)?,
                        proj: b.proj.try_map(f)?,
                        ln2: b.ln2.try_map(f)?,
                        fc: b.fc.try_map(f)?,
                        fc_proj: b.fc_proj.try_map(f)?,
                    })
                })
                .collect::<Result<_, E>>()?,
            ln_f: self.ln_f.try_map(f)?,
            head: self.head.try_map(f)?,
        })
    }

    fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> ParamTensors<U> {
        match self.try_map(|x| Ok::<U, std::convert::Infallible>(f(x))) {
            Ok(v) => v,
        }
    }

    /// Every tensor, in one fixed order (the same for any `T`).
    fn into_list(self) -> Vec<T> {
        let mut v = vec![self.tok, self.pos];
        for b in self.blocks {
            for a in [b.ln1, b.qkv, b.proj, b.ln2, b.fc, b.fc_proj] {
                v.extend([a.w, a.b]);
            }
        }
        v.extend([self.ln_f.w, self.ln_f.b, self.head.w, self.head.b]);
        v
    }
}

/// The sizes of one step.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Dims {
    /// Sequences, positions per sequence, and rows (`b * t`).
    b: usize,
    t: usize,
    n: usize,
    /// Model width, heads, and width per head (`d / h`).
    d: usize,
    h: usize,
    hd: usize,
    /// The MLP's hidden width.
    f: usize,
    vocab: usize,
    layers: usize,
}

impl Dims {
    /// Offset of head `hi` of sequence `bi`'s queries (`part` 0), keys (1)
    /// or values (2) in the `[N, 3D]` buffer.
    fn qkv(&self, bi: usize, hi: usize, part: usize) -> usize {
        bi * self.t * 3 * self.d + part * self.d + hi * self.hd
    }
    /// Offset of head `hi` of sequence `bi` in an `[N, D]` buffer.
    fn out(&self, bi: usize, hi: usize) -> usize {
        bi * self.t * self.d + hi * self.hd
    }
    /// Views of head `hi` of sequence `bi`'s queries, keys and values in
    /// the `[N, 3D]` buffer `src`.
    fn heads_of(&self, src: Shared, bi: usize, hi: usize) -> (View, View, View) {
        let at = |part| src.at(self.qkv(bi, hi, part));
        (at(0), at(1), at(2))
    }
    fn check(&self, qkv: usize, att: usize, out: usize) {
        let (n, t) = (self.b * self.t, self.t);
        assert!(qkv == n * 3 * self.d && att == self.b * self.h * t * t && out == n * self.d);
    }
}

/// `out[rows, fout] = p.b + x[rows, fin] · p.w^T` with `p.w` as torch's
/// `[fout, fin]`, or, with `resid`, `out = resid + p.b + x · p.w^T`.
fn linear(out: &mut [f32], resid: Option<&[f32]>, x: &[f32], p: &Affine<&[f32]>) {
    let (w, bias) = (p.w, p.b);
    let fout = bias.len();
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(out.len() == rows * fout && x.len() == rows * fin && w.len() == fout * fin);
    out.par_chunks_mut(ROWS * fout)
        .enumerate()
        .for_each(|(i, chunk)| {
            for (r, row) in chunk.chunks_exact_mut(fout).enumerate() {
                match resid {
                    Some(res) => {
                        let at = (i * ROWS + r) * fout;
                        for ((o, a), b) in row.iter_mut().zip(&res[at..at + fout]).zip(bias) {
                            *o = a + b;
                        }
                    }
                    None => row.copy_from_slice(bias),
                }
            }
        });
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

/// Gradients of a linear layer with weight `w [fout, fin]` from the output
/// gradient `dout [rows, fout]` and its input `x [rows, fin]`: `g.w =
/// dout^T · x`, `g.b` = column sums, and, when asked, `dx = dout · w`.
fn linear_bwd(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    g: &mut Affine<Vec<f32>>,
    dx: Option<&mut [f32]>,
    parts: &mut Vec<f32>,
) {
    let fout = g.b.len();
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(dout.len() == rows * fout && x.len() == rows * fin && g.w.len() == fout * fin);
    let par = k::parallelism();
    // SAFETY: shapes checked above; the outputs are exclusive borrows.
    unsafe {
        matmul(
            fout,
            fin,
            rows,
            g.w.as_mut_ptr(),
            fin,
            false,
            View::rows(dout, fout).t(),
            View::rows(x, fin),
            par,
        );
    }
    col_sums(dout, fout, &mut g.b, parts);
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

/// Column sums of a row-major matrix with `cols` columns, in a fixed order.
fn col_sums(x: &[f32], cols: usize, out: &mut [f32], parts: &mut Vec<f32>) {
    // One partial sum per block of rows, in `parts` (kept across calls).
    parts.clear();
    parts.resize(x.len().div_ceil(ROWS * cols) * cols, 0.0);
    parts
        .par_chunks_mut(cols)
        .zip(x.par_chunks(ROWS * cols))
        .for_each(|(s, chunk)| {
            for row in chunk.chunks_exact(cols) {
                add_to(s, row);
            }
        });
    out.fill(0.0);
    for p in parts.chunks_exact(cols) {
        add_to(out, p);
    }
}

fn add_to(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// LayerNorm of the rows of `x` with gain `p.w` and shift `p.b`.
fn layer_norm(x: &[f32], p: &Affine<&[f32]>, out: &mut Norm) {
    let (w, b) = (p.w, p.b);
    let d = w.len();
    out.out
        .par_chunks_mut(ROWS * d)
        .zip(out.mean.par_chunks_mut(ROWS))
        .zip(out.rstd.par_chunks_mut(ROWS))
        .zip(x.par_chunks(ROWS * d))
        .for_each(|(((o, m), r), x)| k::layer_norm_rows(x, w, b, LN_EPS, o, m, r));
}

/// Adds the input gradient of a LayerNorm with gain `w` to `dx`; writes
/// its gain and shift gradients to `g`.
fn layer_norm_bwd(
    x: &[f32],
    norm: &Norm,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    g: &mut Affine<Vec<f32>>,
    parts: &mut Vec<f32>,
) {
    let d = w.len();
    // Per block of rows: partial dw, partial db, one scratch row.
    parts.clear();
    parts.resize(x.len().div_ceil(ROWS * d) * 3 * d, 0.0);
    x.par_chunks(ROWS * d)
        .zip(dy.par_chunks(ROWS * d))
        .zip(dx.par_chunks_mut(ROWS * d))
        .zip(norm.mean.par_chunks(ROWS))
        .zip(norm.rstd.par_chunks(ROWS))
        .zip(parts.par_chunks_mut(3 * d))
        .for_each(|(((((x, dy), dx), m), r), acc)| {
            let (pw, rest) = acc.split_at_mut(d);
            let (pb, scratch) = rest.split_at_mut(d);
            k::layer_norm_bwd_rows(x, m, r, w, dy, dx, pw, pb, scratch);
        });
    g.w.fill(0.0);
    g.b.fill(0.0);
    for p in parts.chunks_exact(3 * d) {
        add_to(&mut g.w, &p[..d]);
        add_to(&mut g.b, &p[d..2 * d]);
    }
}

/// Causal self-attention: `att` gets the probabilities, `y` the heads'
/// outputs side by side.
fn attention(s: Dims, qkv: &[f32], att: &mut [f32], y: &mut [f32]) {
    s.check(qkv.len(), att.len(), y.len());
    let (t, hd) = (s.t, s.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let y_ptr = SharedMut(y.as_mut_ptr());
    let src = Shared(View::rows(qkv, 3 * s.d));
    att.par_chunks_mut(t * t).enumerate().for_each(|(i, p)| {
        let (bi, hi) = (i / s.h, i % s.h);
        let (q, kk, v) = s.heads_of(src, bi, hi);
        // SAFETY: `p` is this task's own block; the y block (rows of
        // sequence bi, columns of head hi) is written by this task only.
        unsafe {
            matmul(
                t,
                t,
                hd,
                p.as_mut_ptr(),
                t,
                false,
                q,
                kk.t(),
                gemm::Parallelism::None,
            );
            k::causal_softmax_block(p, t, scale);
            matmul(
                t,
                hd,
                t,
                y_ptr.get().add(s.out(bi, hi)),
                s.d,
                false,
                View::rows(p, t),
                v,
                gemm::Parallelism::None,
            );
        }
    });
}

/// The backward of [`attention`]: from `dy` (`[N, D]`) to `dqkv`.
/// `datt` (the size of `att`) holds the gradients of the scores.
fn attention_bwd(
    s: Dims,
    qkv: &[f32],
    att: &[f32],
    dy: &[f32],
    dqkv: &mut [f32],
    datt: &mut [f32],
) {
    s.check(qkv.len(), att.len(), dy.len());
    assert!(dqkv.len() == qkv.len());
    let (t, hd) = (s.t, s.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let dst = SharedMut(dqkv.as_mut_ptr());
    let src = Shared(View::rows(qkv, 3 * s.d));
    let dsrc = Shared(View::rows(dy, s.d));
    att.par_chunks(t * t)
        .zip(datt.par_chunks_mut(t * t))
        .enumerate()
        .for_each(|(i, (p, dp))| {
            let (bi, hi) = (i / s.h, i % s.h);
            let (q, kk, v) = s.heads_of(src, bi, hi);
            let dyv = dsrc.at(s.out(bi, hi));
            let pv = View::rows(p, t);
            let none = gemm::Parallelism::None;
            // SAFETY: this task alone writes head hi's columns of
            // sequence bi's rows in dqkv, and its own block `dp` of datt.
            unsafe {
                let out = |part: usize| dst.get().add(s.qkv(bi, hi, part));
                // dV = P^T dY
                matmul(t, hd, t, out(2), 3 * s.d, false, pv.t(), dyv, none);
                // dP = dY V^T, then through the softmax
                matmul(t, t, hd, dp.as_mut_ptr(), t, false, dyv, v.t(), none);
                k::causal_softmax_bwd_block(p, dp, t, scale);
                let ds = View::rows(dp, t);
                // dQ = dS K, dK = dS^T Q
                matmul(t, hd, t, out(0), 3 * s.d, false, ds, kk, none);
                matmul(t, hd, t, out(1), 3 * s.d, false, ds.t(), q, none);
            }
        });
}

/// The f32 contents of a contiguous CPU tensor.
fn host(s: &Storage, l: &candle_core::Layout) -> Result<*const [f32]> {
    match (s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b] as *const [f32]),
        _ => bail!("the hand-written Transformer step needs contiguous f32 CPU parameters"),
    }
}

/// The forward from token ids `[B, T]` (row-major) to the logits in
/// `ws.logits`, keeping in `ws` what the backward needs.
fn forward(p: &ParamTensors<&[f32]>, s: Dims, ids: &[u32], ws: &mut Workspace) {
    let (n, d, t) = (s.n, s.d, s.t);
    // Embeddings:
    for (r, row) in ws.x[0].chunks_exact_mut(d).enumerate() {
        let (id, tp) = (ids[r] as usize, r % t);
        for ((o, a), e) in row
            .iter_mut()
            .zip(&p.tok[id * d..(id + 1) * d])
            .zip(&p.pos[tp * d..(tp + 1) * d])
        {
            *o = a + e;
        }
    }
    for (l, w) in p.blocks.iter().enumerate() {
        let (xs, rest) = ws.x.split_at_mut(l + 1);
        let (x_in, x_out) = (&xs[l], &mut rest[0]);
        let a = &mut ws.layers[l];
        layer_norm(x_in, &w.ln1, &mut a.ln1);
        linear(&mut a.qkv, None, &a.ln1.out, &w.qkv);
        attention(s, &a.qkv, &mut a.att, &mut a.y);
        linear(&mut a.mid, Some(x_in), &a.y, &w.proj);
        layer_norm(&a.mid, &w.ln2, &mut a.ln2);
        linear(&mut a.act, None, &a.ln2.out, &w.fc);
        a.act
            .par_chunks_mut(ROWS * s.f)
            .zip(a.dact.par_chunks_mut(ROWS * s.f))
            .for_each(|(u, du)| k::gelu_rows(u, du));
        linear(x_out, Some(&a.mid), &a.act, &w.fc_proj);
    }
    debug_assert!(ws.logits.len() == n * s.vocab);
    layer_norm(&ws.x[s.layers], &p.ln_f, &mut ws.lnf);
    linear(&mut ws.logits, None, &ws.lnf.out, &p.head);
}

/// Mean cross-entropy of the logits in `ws`, which become their gradient
/// (0 on rows without a target). `y` as in [`loss_and_grads`].
fn cross_entropy(s: Dims, y: &[u32], last_only: bool, ws: &mut Workspace) -> f64 {
    let t = s.t;
    let counted = y.len();
    let weight = 1.0 / counted as f32;
    ws.logits
        .par_chunks_mut(s.vocab)
        .zip(ws.row_loss.par_iter_mut())
        .enumerate()
        .for_each(|(r, (row, out))| {
            let target = if last_only {
                (r % t == t - 1).then(|| y[r / t])
            } else {
                Some(y[r])
            };
            *out = match target {
                Some(tg) => k::cross_entropy_row(row, tg as usize, weight),
                None => {
                    row.fill(0.0);
                    0.0
                }
            };
        });
    // Summed in row order, whatever the threads.
    ws.row_loss.iter().sum::<f64>() / counted as f64
}

/// Every parameter's gradient, from the logits' gradient in `ws.logits`
/// and what [`forward`] kept.
fn backward(
    p: &ParamTensors<&[f32]>,
    s: Dims,
    ids: &[u32],
    ws: &mut Workspace,
) -> ParamTensors<Vec<f32>> {
    let (d, t) = (s.d, s.t);
    let mut g = p.map(|x| vec![0f32; x.len()]);
    linear_bwd(
        &ws.logits,
        &ws.lnf.out,
        p.head.w,
        &mut g.head,
        Some(&mut ws.dn),
        &mut ws.parts,
    );
    ws.dx.fill(0.0);
    layer_norm_bwd(
        &ws.x[s.layers],
        &ws.lnf,
        p.ln_f.w,
        &ws.dn,
        &mut ws.dx,
        &mut g.ln_f,
        &mut ws.parts,
    );
    for l in (0..s.layers).rev() {
        let (w, gl) = (&p.blocks[l], &mut g.blocks[l]);
        let a = &ws.layers[l];
        // MLP: x_out = mid + fc_proj(gelu(fc(ln2(mid)))); dx holds d x_out.
        let (dx, parts) = (&mut ws.dx, &mut ws.parts);
        linear_bwd(
            dx,
            &a.act,
            w.fc_proj.w,
            &mut gl.fc_proj,
            Some(&mut ws.da),
            parts,
        );
        ws.da
            .par_chunks_mut(ROWS * s.f)
            .zip(a.dact.par_chunks(ROWS * s.f))
            .for_each(|(da, du)| k::mul_rows(da, du));
        linear_bwd(
            &ws.da,
            &a.ln2.out,
            w.fc.w,
            &mut gl.fc,
            Some(&mut ws.dn),
            parts,
        );
        layer_norm_bwd(&a.mid, &a.ln2, w.ln2.w, &ws.dn, dx, &mut gl.ln2, parts);
        // Attention: mid = x_in + proj(attention(ln1(x_in))); dx holds d mid.
        linear_bwd(dx, &a.y, w.proj.w, &mut gl.proj, Some(&mut ws.dy), parts);
        attention_bwd(s, &a.qkv, &a.att, &ws.dy, &mut ws.dqkv, &mut ws.datt);
        linear_bwd(
            &ws.dqkv,
            &a.ln1.out,
            w.qkv.w,
            &mut gl.qkv,
            Some(&mut ws.dn),
            parts,
        );
        layer_norm_bwd(&ws.x[l], &a.ln1, w.ln1.w, &ws.dn, dx, &mut gl.ln1, parts);
    }
    // Embeddings, in row order.
    for (r, row) in ws.dx.chunks_exact(d).enumerate() {
        let (id, tp) = (ids[r] as usize, r % t);
        add_to(&mut g.tok[id * d..(id + 1) * d], row);
        add_to(&mut g.pos[tp * d..(tp + 1) * d], row);
    }
    g
}

/// Mean cross-entropy and every parameter's gradient for token ids
/// `[B, T]`, with `heads` attention heads. With `last_only`, `y` holds one
/// target per sequence, for its last position; otherwise one per position
/// (`[B, T]`). `workspace` keeps the buffers from step to step.
pub(super) fn loss_and_grads(
    vars: &ParamTensors<&Var>,
    heads: usize,
    workspace: &std::sync::Mutex<Option<Workspace>>,
    ids: &Tensor,
    y: &Tensor,
    last_only: bool,
) -> Result<(f64, GradStore)> {
    let (b, t) = ids.dims2()?;
    let (vocab, d) = vars.tok.dims2()?;
    let context = vars.pos.dim(0)?;
    if t > context {
        bail!("sequence length {t} exceeds the context {context}");
    }
    let s = Dims {
        b,
        t,
        n: b * t,
        d,
        h: heads,
        hd: d / heads,
        f: match vars.blocks.first() {
            Some(blk) => blk.fc.b.dim(0)?,
            None => 0,
        },
        vocab,
        layers: vars.blocks.len(),
    };
    let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
    let y: Vec<u32> = y.flatten_all()?.to_vec1()?;
    if let Some(bad) = ids.iter().chain(&y).find(|&&i| i as usize >= vocab) {
        bail!("token id {bad} out of range for a vocabulary of {vocab}");
    }
    if y.len() != if last_only { b } else { s.n } {
        bail!("{} targets for a [{b}, {t}] batch", y.len());
    }

    let guards = vars.map(|v| v.as_tensor().storage_and_layout());
    let ptrs = guards.try_map(|(st, l)| host(st, l))?;
    // SAFETY: the read guards above keep the storages alive and unwritten
    // until they are dropped, after the last use of `p`.
    let p: ParamTensors<&[f32]> = ptrs.map(|&x| unsafe { &*x });

    let mut ws_slot = workspace.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(&*ws_slot, Some(w) if w.dims == s) {
        *ws_slot = Some(Workspace::new(s));
    }
    let ws = ws_slot.as_mut().expect("just set");

    forward(&p, s, &ids, ws);
    let loss = cross_entropy(s, &y, last_only, ws);
    let g = backward(&p, s, &ids, ws);
    drop(guards);

    let mut store = GradStore::default();
    for (var, gv) in vars.map(|v| *v).into_list().into_iter().zip(g.into_list()) {
        store.insert(
            var.as_tensor(),
            Tensor::from_vec(gv, var.shape(), &Device::Cpu)?,
        );
    }
    Ok((loss, store))
}
