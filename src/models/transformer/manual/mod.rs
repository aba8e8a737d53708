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
//!
//! Split by concern: [`params`] names the parameters, [`layers`] holds the
//! passes of one layer kind (linear, LayerNorm, attention, each forward and
//! backward), and this file keeps the buffers and runs the step.

mod layers;
mod params;

pub(super) use params::{Affine, BlockTensors, ParamTensors};

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::models::kernels as k;
use layers::{
    Dims, Norm, ROWS, add_to, attention, attention_bwd, layer_norm, layer_norm_bwd, linear,
    linear_bwd,
};

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
            row_loss: vec![0.0; n],
            parts: vec![],
        }
    }
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
        attention_bwd(s, &a.qkv, &a.att, &ws.dy, &mut ws.dqkv);
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
