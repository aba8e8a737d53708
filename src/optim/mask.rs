//! Pruning masks inside the optimizer, for every backend.
//!
//! A mask is a 0/1 tensor of its parameter's shape. With a mask set, a step
//! is: `g *= mask`, then the whole chain (coupled terms, decoupled decay, the
//! rule, proximal L1) on whichever backend the parameter uses (fused CPU
//! kernels, the reference tensor path, the CUDA kernels), then `p *= mask`.
//! A masked weight is therefore exactly zero after every step, whatever the
//! rule's state would otherwise do to it (Adam's momentum, a coupled L1
//! term, decoupled decay of a zero, ...).
//!
//! What happens to the optimizer's state when masks are set is a
//! [`StatePolicy`]; the README's "Pruning" section describes each policy per
//! optimizer family.

use anyhow::{Result, bail};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The optimizer's state when masks are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatePolicy {
    /// State untouched: masked coordinates keep their moments and
    /// accumulators and from then on see zero gradients.
    #[default]
    Keep,
    /// Every per-coordinate state buffer (momentum, m, v, v_max,
    /// accumulators) multiplied by the mask; step counts are kept.
    Zero,
    /// The whole state of every parameter restarted as at construction,
    /// step counts included (Adam's bias correction starts again).
    Reset,
}

impl StatePolicy {
    pub fn name(self) -> &'static str {
        match self {
            StatePolicy::Keep => "keep",
            StatePolicy::Zero => "zero",
            StatePolicy::Reset => "reset",
        }
    }
}

/// The gradient a masked parameter's rule sees.
pub(super) fn grad(g: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok((g * mask)?)
}

/// Zeroes the masked coordinates of a parameter, in place.
pub(super) fn param(var: &Var, mask: &Tensor) -> Result<()> {
    let p = (var.as_tensor() * mask)?;
    var.set(&p)?;
    Ok(())
}

/// A mask in the parameter's dtype and device, checked: same shape, every
/// value 0 or 1.
pub(super) fn checked(name: &str, var: &Var, mask: &Tensor) -> Result<Tensor> {
    if mask.dims() != var.dims() {
        bail!(
            "the mask of `{name}` has shape {:?}, but the parameter has {:?}",
            mask.dims(),
            var.dims()
        );
    }
    let values = mask.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if let Some(v) = values.iter().find(|v| **v != 0.0 && **v != 1.0) {
        bail!("the mask of `{name}` holds {v}; a mask holds only 0 and 1");
    }
    Ok(mask.to_dtype(var.dtype())?.to_device(var.device())?)
}
