//! Causal softmax and LayerNorm as Candle ops with backward passes, for
//! autograd over the Transformer on the CPU (its evaluation forward, and
//! the reference the hand-written step is tested against).
//!
//! Written as ops over differentiable tensors, these each make several
//! full-size temporaries per call (the attention scores are B x H x T x T);
//! here each is one pass forward and one pass backward, through the same
//! row kernels as the hand-written step (`kernels/`). The composite
//! versions in `transformer.rs` stay the reference (and the path on other
//! devices and dtypes); tests check that both agree, values and gradients.

use super::kernels;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail,
};

/// The f32 contents of a contiguous CPU tensor.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: only f32 is fused");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// `softmax(scale * x)` over the last dim with a causal mask: in each
/// `[T, T]` block, row `i` sees columns `0..=i`; the rest are 0.
#[derive(Clone, Copy)]
pub struct CausalSoftmax {
    pub scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let dims = l.shape().dims();
        let t = dims[dims.len() - 1];
        if dims.len() < 2 || dims[dims.len() - 2] != t {
            bail!("causal-softmax: the last two dims must be equal, got {dims:?}");
        }
        let mut y = x.to_vec();
        for block in y.chunks_exact_mut(t * t) {
            kernels::causal_softmax_block(block, t, self.scale);
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(
            &dy.contiguous()?,
            &SoftmaxBwd { scale: self.scale },
        )?))
    }
}

/// dx = scale * y * (dy - sum(dy * y)) per row.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let t = *l1.shape().dims().last().expect("rank >= 2");
        let mut dx = dy.to_vec();
        for (yb, db) in y.chunks_exact(t * t).zip(dx.chunks_exact_mut(t * t)) {
            kernels::causal_softmax_bwd_block(yb, db, t, self.scale);
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// LayerNorm over the last dim: `(x - mean) / sqrt(var + eps) * w + b`.
#[derive(Clone, Copy)]
pub struct LayerNormOp {
    pub eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let rows = x.len() / w.len();
        let mut y = vec![0f32; x.len()];
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        kernels::layer_norm_rows(x, w, b, self.eps, &mut y, &mut mean, &mut rstd);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let rows = x.elem_count() / d;
        // One pass writes dx (rows x d), then the rows dw and db.
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.get(rows)?;
        let db = packed.get(rows + 1)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, acc) = out.split_at_mut(rows * d);
        let (dw, db) = acc.split_at_mut(d);
        let mut stats = vec![0f32; 2 * rows + d];
        let (mean, rest) = stats.split_at_mut(rows);
        let (rstd, scratch) = rest.split_at_mut(rows);
        kernels::layer_norm_stats(x, d, self.eps, mean, rstd);
        kernels::layer_norm_bwd_rows(x, mean, rstd, w, dy, dx, dw, db, scratch);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

/// Whether the fused CPU kernels apply to `x`.
pub fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}
