//! The Transformer's training step on the CPU in f32, written by hand:
//! the forward keeps what the backward needs in buffers reused from step
//! to step, and the backward computes each gradient with one matrix
//! product or one pass. No autograd graph, no temporaries per op, no
//! transposed copies (the matrix products read strided views).
//!
//! Autograd over the same model (`Model::loss_and_grads_autograd`) is the
//! reference; `tests/training.rs` checks that both give the same loss and
//! gradients on fresh random batches.

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};
use rayon::prelude::*;

use super::Transformer;
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
    b: usize,
    t: usize,
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
    fn new(tr: &Transformer, vocab: usize, b: usize, t: usize) -> Self {
        let c = &tr.cfg;
        let (n, d, f) = (b * t, c.d_model, c.mlp_ratio * c.d_model);
        let layers = (0..c.layers)
            .map(|_| LayerActs {
                mid: vec![0.0; n * d],
                ln1: Norm::new(n, d),
                ln2: Norm::new(n, d),
                qkv: vec![0.0; n * 3 * d],
                att: vec![0.0; b * c.heads * t * t],
                y: vec![0.0; n * d],
                act: vec![0.0; n * f],
                dact: vec![0.0; n * f],
            })
            .collect();
        Self {
            b,
            t,
            x: (0..=c.layers).map(|_| vec![0.0; n * d]).collect(),
            layers,
            lnf: Norm::new(n, d),
            logits: vec![0.0; n * vocab],
            dx: vec![0.0; n * d],
            dn: vec![0.0; n * d],
            dy: vec![0.0; n * d],
            dqkv: vec![0.0; n * 3 * d],
            da: vec![0.0; n * f],
            datt: vec![0.0; b * c.heads * t * t],
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
    /// offsets from [`Heads`], which stay inside the buffers it checked.
    fn at(self, off: usize) -> View {
        View {
            // SAFETY: see above; `add` stays inside the allocation.
            ptr: unsafe { self.0.ptr.add(off) },
            ..self.0
        }
    }
}

/// One parameter's index in [`Transformer::ordered_vars`].
struct Ix;
impl Ix {
    const TOK: usize = 0;
    const POS: usize = 1;
    const PER_BLOCK: usize = 12;
    fn block(l: usize, j: usize) -> usize {
        2 + l * Self::PER_BLOCK + j
    }
}
// Offsets inside a block, in `ordered_vars` order.
const LN1_W: usize = 0;
const LN1_B: usize = 1;
const QKV_W: usize = 2;
const QKV_B: usize = 3;
const PROJ_W: usize = 4;
const PROJ_B: usize = 5;
const LN2_W: usize = 6;
const LN2_B: usize = 7;
const FC_W: usize = 8;
const FC_B: usize = 9;
const FCP_W: usize = 10;
const FCP_B: usize = 11;

/// `out[rows, fout] = bias + x[rows, fin] · w^T` with `w` as torch's
/// `[fout, fin]`, or, with `resid`, `out = resid + bias + x · w^T`.
#[allow(clippy::too_many_arguments)]
fn linear(
    out: &mut [f32],
    resid: Option<&[f32]>,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    rows: usize,
    fin: usize,
    fout: usize,
) {
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

/// Gradients of a linear layer from the output gradient `dout [rows, fout]`
/// and its input `x [rows, fin]`: `dw = dout^T · x`, `db` = column sums,
/// and, when asked, `dx = dout · w`.
#[allow(clippy::too_many_arguments)]
fn linear_bwd(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    fin: usize,
    fout: usize,
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    parts: &mut Vec<f32>,
) {
    assert!(dout.len() == rows * fout && x.len() == rows * fin && dw.len() == fout * fin);
    let par = k::parallelism();
    // SAFETY: shapes checked above; the outputs are exclusive borrows.
    unsafe {
        matmul(
            fout,
            fin,
            rows,
            dw.as_mut_ptr(),
            fin,
            false,
            View::rows(dout, fout).t(),
            View::rows(x, fin),
            par,
        );
    }
    col_sums(dout, fout, db, parts);
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

fn layer_norm(x: &[f32], w: &[f32], b: &[f32], out: &mut Norm) {
    let d = w.len();
    out.out
        .par_chunks_mut(ROWS * d)
        .zip(out.mean.par_chunks_mut(ROWS))
        .zip(out.rstd.par_chunks_mut(ROWS))
        .zip(x.par_chunks(ROWS * d))
        .for_each(|(((o, m), r), x)| k::layer_norm_rows(x, w, b, LN_EPS, o, m, r));
}

/// Adds LayerNorm's input gradient to `dx`; writes its weight and bias
/// gradients.
#[allow(clippy::too_many_arguments)]
fn layer_norm_bwd(
    x: &[f32],
    norm: &Norm,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
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
    dw.fill(0.0);
    db.fill(0.0);
    for p in parts.chunks_exact(3 * d) {
        add_to(dw, &p[..d]);
        add_to(db, &p[d..2 * d]);
    }
}

/// The gradients of parameters `i` (a weight) and `i + 1` (its bias).
fn pair(g: &mut [Vec<f32>], i: usize) -> (&mut [f32], &mut [f32]) {
    let (lo, hi) = g.split_at_mut(i + 1);
    (&mut lo[i], &mut hi[0])
}

/// Per-head sizes of the attention.
#[derive(Clone, Copy)]
struct Heads {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    hd: usize,
}

impl Heads {
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

/// Causal self-attention: `att` gets the probabilities, `y` the heads'
/// outputs side by side.
fn attention(s: Heads, qkv: &[f32], att: &mut [f32], y: &mut [f32]) {
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
    s: Heads,
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

impl Transformer {
    /// Every parameter, in the order [`Ix`] indexes.
    fn ordered_vars(&self) -> Vec<&Var> {
        let mut v = vec![&self.tok, &self.pos];
        for b in &self.blocks {
            v.extend([
                &b.ln1.w,
                &b.ln1.b,
                &b.qkv.w,
                &b.qkv.b,
                &b.proj.w,
                &b.proj.b,
                &b.ln2.w,
                &b.ln2.b,
                &b.fc.w,
                &b.fc.b,
                &b.fc_proj.w,
                &b.fc_proj.b,
            ]);
        }
        v.extend([&self.ln_f.w, &self.ln_f.b, &self.head.w, &self.head.b]);
        v
    }

    /// Whether [`loss_and_grads_cpu`](Self::loss_and_grads_cpu) applies.
    pub fn manual_backward(&self) -> bool {
        self.tok.device().is_cpu() && self.tok.dtype() == candle_core::DType::F32
    }

    /// Mean cross-entropy and every parameter's gradient for token ids
    /// `[B, T]`. With `last_only`, `y` holds one target per sequence, for
    /// its last position; otherwise one per position (`[B, T]`).
    pub fn loss_and_grads_cpu(
        &self,
        ids: &Tensor,
        y: &Tensor,
        last_only: bool,
    ) -> Result<(f64, GradStore)> {
        let (b, t) = ids.dims2()?;
        let c = &self.cfg;
        if t > c.context {
            bail!("sequence length {t} exceeds the context {}", c.context);
        }
        let (d, h, nl) = (c.d_model, c.heads, c.layers);
        let (f, n) = (c.mlp_ratio * d, b * t);
        let vocab = self.tok.dim(0)?;
        let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let y: Vec<u32> = y.flatten_all()?.to_vec1()?;
        if let Some(bad) = ids.iter().chain(&y).find(|&&i| i as usize >= vocab) {
            bail!("token id {bad} out of range for a vocabulary of {vocab}");
        }
        if y.len() != if last_only { b } else { n } {
            bail!("{} targets for a [{b}, {t}] batch", y.len());
        }

        let vars = self.ordered_vars();
        let guards: Vec<_> = vars
            .iter()
            .map(|v| v.as_tensor().storage_and_layout())
            .collect();
        let ptrs = guards
            .iter()
            .map(|(s, l)| host(s, l))
            .collect::<Result<Vec<_>>>()?;
        // SAFETY: the read guards above keep the storages alive and
        // unwritten until the end of this function.
        let p: Vec<&[f32]> = ptrs.iter().map(|&s| unsafe { &*s }).collect();

        let mut ws_slot = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*ws_slot, Some(w) if w.b == b && w.t == t) {
            *ws_slot = Some(Workspace::new(self, vocab, b, t));
        }
        let ws = ws_slot.as_mut().expect("just set");
        let heads = Heads {
            b,
            t,
            h,
            d,
            hd: d / h,
        };

        // Forward. Embeddings:
        let (tok, pos) = (p[Ix::TOK], p[Ix::POS]);
        for (r, row) in ws.x[0].chunks_exact_mut(d).enumerate() {
            let (id, tp) = (ids[r] as usize, r % t);
            for ((o, a), e) in row
                .iter_mut()
                .zip(&tok[id * d..(id + 1) * d])
                .zip(&pos[tp * d..(tp + 1) * d])
            {
                *o = a + e;
            }
        }
        for l in 0..nl {
            let w = |j: usize| p[Ix::block(l, j)];
            let (xs, rest) = ws.x.split_at_mut(l + 1);
            let (x_in, x_out) = (&xs[l], &mut rest[0]);
            let a = &mut ws.layers[l];
            layer_norm(x_in, w(LN1_W), w(LN1_B), &mut a.ln1);
            linear(
                &mut a.qkv,
                None,
                &a.ln1.out,
                w(QKV_W),
                w(QKV_B),
                n,
                d,
                3 * d,
            );
            attention(heads, &a.qkv, &mut a.att, &mut a.y);
            linear(&mut a.mid, Some(x_in), &a.y, w(PROJ_W), w(PROJ_B), n, d, d);
            layer_norm(&a.mid, w(LN2_W), w(LN2_B), &mut a.ln2);
            linear(&mut a.act, None, &a.ln2.out, w(FC_W), w(FC_B), n, d, f);
            a.act
                .par_chunks_mut(ROWS * f)
                .zip(a.dact.par_chunks_mut(ROWS * f))
                .for_each(|(u, du)| k::gelu_rows(u, du));
            linear(x_out, Some(&a.mid), &a.act, w(FCP_W), w(FCP_B), n, f, d);
        }
        let top = 2 + nl * Ix::PER_BLOCK;
        let (lnf_w, lnf_b, head_w, head_b) = (p[top], p[top + 1], p[top + 2], p[top + 3]);
        layer_norm(&ws.x[nl], lnf_w, lnf_b, &mut ws.lnf);
        linear(
            &mut ws.logits,
            None,
            &ws.lnf.out,
            head_w,
            head_b,
            n,
            d,
            vocab,
        );

        // Loss; the logits become their gradient (0 on rows without a target).
        let counted = y.len();
        let weight = 1.0 / counted as f32;
        ws.logits
            .par_chunks_mut(vocab)
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
        let loss = ws.row_loss.iter().sum::<f64>() / counted as f64;

        // Backward.
        let mut g: Vec<Vec<f32>> = p.iter().map(|s| vec![0f32; s.len()]).collect();
        let (gw, gb) = pair(&mut g, top + 2);
        linear_bwd(
            &ws.logits,
            &ws.lnf.out,
            head_w,
            n,
            d,
            vocab,
            gw,
            gb,
            Some(&mut ws.dn),
            &mut ws.parts,
        );
        ws.dx.fill(0.0);
        let (gw, gb) = pair(&mut g, top);
        layer_norm_bwd(
            &ws.x[nl],
            &ws.lnf,
            lnf_w,
            &ws.dn,
            &mut ws.dx,
            gw,
            gb,
            &mut ws.parts,
        );
        for l in (0..nl).rev() {
            let w = |j: usize| p[Ix::block(l, j)];
            let gi = |j: usize| Ix::block(l, j);
            let a = &ws.layers[l];
            // MLP: x_out = mid + fc_proj(gelu(fc(ln2(mid)))); dx holds d x_out.
            let (gw, gb) = pair(&mut g, gi(FCP_W));
            linear_bwd(
                &ws.dx,
                &a.act,
                w(FCP_W),
                n,
                f,
                d,
                gw,
                gb,
                Some(&mut ws.da),
                &mut ws.parts,
            );
            ws.da
                .par_chunks_mut(ROWS * f)
                .zip(a.dact.par_chunks(ROWS * f))
                .for_each(|(da, du)| k::mul_rows(da, du));
            let (gw, gb) = pair(&mut g, gi(FC_W));
            linear_bwd(
                &ws.da,
                &a.ln2.out,
                w(FC_W),
                n,
                d,
                f,
                gw,
                gb,
                Some(&mut ws.dn),
                &mut ws.parts,
            );
            let (gw, gb) = pair(&mut g, gi(LN2_W));
            layer_norm_bwd(
                &a.mid,
                &a.ln2,
                w(LN2_W),
                &ws.dn,
                &mut ws.dx,
                gw,
                gb,
                &mut ws.parts,
            );
            // Attention: mid = x_in + proj(attention(ln1(x_in))); dx holds d mid.
            let (gw, gb) = pair(&mut g, gi(PROJ_W));
            linear_bwd(
                &ws.dx,
                &a.y,
                w(PROJ_W),
                n,
                d,
                d,
                gw,
                gb,
                Some(&mut ws.dy),
                &mut ws.parts,
            );
            attention_bwd(heads, &a.qkv, &a.att, &ws.dy, &mut ws.dqkv, &mut ws.datt);
            let (gw, gb) = pair(&mut g, gi(QKV_W));
            linear_bwd(
                &ws.dqkv,
                &a.ln1.out,
                w(QKV_W),
                n,
                d,
                3 * d,
                gw,
                gb,
                Some(&mut ws.dn),
                &mut ws.parts,
            );
            let (gw, gb) = pair(&mut g, gi(LN1_W));
            layer_norm_bwd(
                &ws.x[l],
                &a.ln1,
                w(LN1_W),
                &ws.dn,
                &mut ws.dx,
                gw,
                gb,
                &mut ws.parts,
            );
        }
        // Embeddings, in row order.
        for (r, row) in ws.dx.chunks_exact(d).enumerate() {
            let (id, tp) = (ids[r] as usize, r % t);
            add_to(&mut g[Ix::TOK][id * d..(id + 1) * d], row);
            add_to(&mut g[Ix::POS][tp * d..(tp + 1) * d], row);
        }
        drop(guards);

        let mut store = GradStore::default();
        for (var, gv) in vars.iter().zip(g) {
            store.insert(
                var.as_tensor(),
                Tensor::from_vec(gv, var.shape(), &Device::Cpu)?,
            );
        }
        Ok((loss, store))
    }
}
