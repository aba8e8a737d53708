//! A small decoder-only Transformer: token and learned position embeddings,
//! pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP,
//! a final LayerNorm and a linear head.
//!
//! LayerNorm and softmax are written with differentiable tensor ops:
//! `candle_nn::LayerNorm`, `ops::rms_norm` and `ops::softmax_last_dim` have
//! no backward and would silently cut the gradient.

use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ops;
use super::params::{Init, Params};

mod manual;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Maximum sequence length (the position table's size).
    pub context: usize,
    /// MLP width as a multiple of d_model.
    pub mlp_ratio: usize,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            layers: 2,
            d_model: 128,
            heads: 4,
            context: 128,
            mlp_ratio: 4,
        }
    }
}

struct Linear {
    w: Var,
    b: Var,
}

impl Linear {
    fn new(p: &mut Params, name: &str, fan_in: usize, fan_out: usize) -> Result<Self> {
        Ok(Self {
            w: p.add(
                &format!("{name}.weight"),
                &[fan_out, fan_in],
                Init::Normal(0.02),
            )?,
            b: p.add(&format!("{name}.bias"), &[fan_out], Init::Zeros)?,
        })
    }
    /// `x` is `[..., in]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let fan_in = dims[dims.len() - 1];
        let rows = x.elem_count() / fan_in;
        let y = x
            .reshape((rows, fan_in))?
            .matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.b.as_tensor())?;
        let mut out = dims;
        *out.last_mut().unwrap() = y.dim(1)?;
        Ok(y.reshape(out)?)
    }
}

struct LayerNorm {
    w: Var,
    b: Var,
}

impl LayerNorm {
    fn new(p: &mut Params, name: &str, d: usize) -> Result<Self> {
        Ok(Self {
            w: p.add(&format!("{name}.weight"), &[d], Init::Ones)?,
            b: p.add(&format!("{name}.bias"), &[d], Init::Zeros)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if ops::fusable(x) {
            Ok(x.contiguous()?.apply_op3(
                self.w.as_tensor(),
                self.b.as_tensor(),
                ops::LayerNormOp { eps: 1e-5 },
            )?)
        } else {
            layer_norm(x, self.w.as_tensor(), self.b.as_tensor(), 1e-5)
        }
    }
}

/// LayerNorm over the last dimension, from differentiable ops.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(w)?.broadcast_add(b)?)
}

/// `[t, t]`: 0 on and below the diagonal, -inf above (query row i sees keys 0..=i).
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}

/// Softmax over the last dimension, from differentiable ops.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc: Linear,
    fc_proj: Linear,
}

pub struct Transformer {
    pub params: Params,
    cfg: TransformerConfig,
    tok: Var,
    pos: Var,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    /// `[context, context]`: 0 on and below the diagonal, -inf above.
    mask: Tensor,
    /// Buffers of the hand-written CPU step, kept across steps.
    workspace: std::sync::Mutex<Option<manual::Workspace>>,
}

impl Transformer {
    pub fn new(
        cfg: &TransformerConfig,
        vocab: usize,
        mut p: Params,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if cfg.heads == 0 || !cfg.d_model.is_multiple_of(cfg.heads) {
            crate::bail_usage!(
                "transformer: d_model ({}) must be a multiple of heads ({})",
                cfg.d_model,
                cfg.heads
            );
        }
        if cfg.layers == 0 || cfg.context == 0 || cfg.mlp_ratio == 0 {
            crate::bail_usage!("transformer: layers, context and mlp_ratio must be > 0");
        }
        let d = cfg.d_model;
        let tok = p.add("tok_emb.weight", &[vocab, d], Init::Normal(0.02))?;
        let pos = p.add("pos_emb.weight", &[cfg.context, d], Init::Normal(0.02))?;
        let mut blocks = vec![];
        for l in 0..cfg.layers {
            let n = |s: &str| format!("blocks.{l}.{s}");
            blocks.push(Block {
                ln1: LayerNorm::new(&mut p, &n("ln1"), d)?,
                qkv: Linear::new(&mut p, &n("attn.qkv"), d, 3 * d)?,
                proj: Linear::new(&mut p, &n("attn.proj"), d, d)?,
                ln2: LayerNorm::new(&mut p, &n("ln2"), d)?,
                fc: Linear::new(&mut p, &n("mlp.fc"), d, cfg.mlp_ratio * d)?,
                fc_proj: Linear::new(&mut p, &n("mlp.proj"), cfg.mlp_ratio * d, d)?,
            });
        }
        let ln_f = LayerNorm::new(&mut p, "ln_f", d)?;
        let head = Linear::new(&mut p, "head", d, vocab)?;
        let mask = causal_mask(cfg.context, device)?.to_dtype(dtype)?;
        Ok(Self {
            params: p,
            cfg: cfg.clone(),
            tok,
            pos,
            blocks,
            ln_f,
            head,
            mask,
            workspace: Default::default(),
        })
    }

    /// Every parameter by name, for the hand-written step.
    fn param_tensors(&self) -> manual::ParamTensors<&Var> {
        let pair = |w, b| manual::Affine { w, b };
        manual::ParamTensors {
            tok: &self.tok,
            pos: &self.pos,
            blocks: self
                .blocks
                .iter()
                .map(|b| manual::BlockTensors {
                    ln1: pair(&b.ln1.w, &b.ln1.b),
                    qkv: pair(&b.qkv.w, &b.qkv.b),
                    proj: pair(&b.proj.w, &b.proj.b),
                    ln2: pair(&b.ln2.w, &b.ln2.b),
                    fc: pair(&b.fc.w, &b.fc.b),
                    fc_proj: pair(&b.fc_proj.w, &b.fc_proj.b),
                })
                .collect(),
            ln_f: pair(&self.ln_f.w, &self.ln_f.b),
            head: pair(&self.head.w, &self.head.b),
        }
    }

    /// Whether [`loss_and_grads_cpu`](Self::loss_and_grads_cpu) applies.
    pub fn manual_backward(&self) -> bool {
        self.tok.device().is_cpu() && self.tok.dtype() == DType::F32
    }

    /// Mean cross-entropy and every parameter's gradient for token ids
    /// `[B, T]`, by the hand-written CPU step (`manual.rs`). With
    /// `last_only`, `y` holds one target per sequence, for its last
    /// position; otherwise one per position (`[B, T]`).
    pub fn loss_and_grads_cpu(
        &self,
        ids: &Tensor,
        y: &Tensor,
        last_only: bool,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        manual::loss_and_grads(
            &self.param_tensors(),
            self.cfg.heads,
            &self.workspace,
            ids,
            y,
            last_only,
        )
    }

    fn attention(&self, blk: &Block, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = self.cfg.heads;
        let hd = d / h;
        let qkv = blk.qkv.forward(x)?; // [b, t, 3d]
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * d, d)?
                .reshape((b, t, h, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = q.matmul(&k.t()?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = if ops::fusable(&scores) {
            scores.apply_op1(ops::CausalSoftmax {
                scale: scale as f32,
            })?
        } else {
            let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
            softmax_last(&(scores * scale)?.broadcast_add(&mask)?)?
        };
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        blk.proj.forward(&y)
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.context {
            bail!(
                "sequence length {t} exceeds the context {}",
                self.cfg.context
            );
        }
        let d = self.cfg.d_model;
        let tok = self
            .tok
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let mut x = tok.broadcast_add(&self.pos.as_tensor().narrow(0, 0, t)?)?;
        for blk in &self.blocks {
            x = (&x + self.attention(blk, &blk.ln1.forward(&x)?)?)?;
            let m = blk
                .fc_proj
                .forward(&blk.fc.forward(&blk.ln2.forward(&x)?)?.gelu_erf()?)?;
            x = (x + m)?;
        }
        self.head.forward(&self.ln_f.forward(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Var;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(
            (0..n).map(|_| r.normal() as f32).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Gradients of `sum(y * up)`.
    fn grads(y: Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
        (y * up).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// The fused kernels agree with the differentiable composites, values and
    /// gradients, on fresh random inputs. f32 sums of 16-32 terms: 1e-5.
    #[test]
    fn fused_ops_match_composites_forward_and_backward() {
        for seed in 0..3 {
            let x = Var::from_tensor(&randn(&[2, 3, 16], seed)).unwrap();
            let w = Var::from_tensor(&randn(&[16], seed + 10)).unwrap();
            let b = Var::from_tensor(&randn(&[16], seed + 20)).unwrap();
            let up = randn(&[2, 3, 16], seed + 30);
            let fused = x
                .as_tensor()
                .apply_op3(w.as_tensor(), b.as_tensor(), ops::LayerNormOp { eps: 1e-5 })
                .unwrap();
            let comp = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
            assert!(max_diff(&fused, &comp) < 1e-5);
            let (gf, gc) = (grads(fused, &up), grads(comp, &up));
            for v in [&x, &w, &b] {
                let d = max_diff(
                    gf.get(v.as_tensor()).unwrap(),
                    gc.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-4, "layer norm gradient differs by {d}");
            }

            let t = 8;
            let s = Var::from_tensor(&randn(&[2, 2, t, t], seed + 40)).unwrap();
            let up = randn(&[2, 2, t, t], seed + 50);
            let fused = s
                .as_tensor()
                .apply_op1(ops::CausalSoftmax { scale: 0.5 })
                .unwrap();
            let mask = causal_mask(t, &Device::Cpu).unwrap();
            let comp = softmax_last(&(s.as_tensor() * 0.5).unwrap().broadcast_add(&mask).unwrap())
                .unwrap();
            assert!(max_diff(&fused, &comp) < 1e-6);
            let (gf, gc) = (grads(fused, &up), grads(comp, &up));
            let d = max_diff(
                gf.get(s.as_tensor()).unwrap(),
                gc.get(s.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "softmax gradient differs by {d}");
        }
    }
}
