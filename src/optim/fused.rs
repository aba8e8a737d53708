//! Fused CPU optimizer steps: one in-place pass over each parameter's p, g
//! and state, with the whole chain (coupled terms, decoupled decay, the
//! rule, the proximal step) inside the loop, split across threads when the
//! tensor is large. No allocation per step.
//!
//! The loops are generated from the kernel table (`kernels.rs`), whose
//! formulas are the reference rules' (`rule.rs`), operation by operation
//! and in the same order; the same golden tests check both paths against
//! PyTorch. This file holds the state, in host vectors owned by the
//! optimizer, and writes the parameter in place through Candle's
//! `InplaceOp2`.

use std::cell::RefCell;

use anyhow::{Result, bail};
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor};

use super::kernel_gen::KernelReg;
use super::kernels;
use super::rule::Scalars;

/// Host-side state of one parameter.
pub(crate) enum HostState {
    F32(Vec<Vec<f32>>),
    F64(Vec<Vec<f64>>),
}

impl HostState {
    /// The initial state, from the reference rule's initial tensors.
    pub fn from_tensors(init: &[Tensor], dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F64 => HostState::F64(
                init.iter()
                    .map(|t| t.flatten_all()?.to_vec1())
                    .collect::<candle_core::Result<_>>()?,
            ),
            _ => HostState::F32(
                init.iter()
                    .map(|t| t.flatten_all()?.to_vec1())
                    .collect::<candle_core::Result<_>>()?,
            ),
        })
    }

    pub fn to_tensors(&self, like: &Tensor) -> Result<Vec<Tensor>> {
        let shape = like.shape();
        Ok(match self {
            HostState::F32(v) => v
                .iter()
                .map(|s| Tensor::from_slice(s, shape, like.device()))
                .collect::<candle_core::Result<_>>()?,
            HostState::F64(v) => v
                .iter()
                .map(|s| Tensor::from_slice(s, shape, like.device()))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    pub fn bytes(&self) -> usize {
        match self {
            HostState::F32(v) => v.iter().map(|s| s.len() * 4).sum(),
            HostState::F64(v) => v.iter().map(|s| s.len() * 8).sum(),
        }
    }
}

/// The in-place op: dst = p, src = g; the state is reached through a RefCell.
struct StepOp<'a> {
    sc: Scalars,
    reg: KernelReg,
    state: RefCell<&'a mut HostState>,
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused step: tensors must be contiguous"),
    }
}

impl InplaceOp2 for StepOp<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (a, b) = l1.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("fused step: parameter must be contiguous".into())
        })?;
        let mut state = self.state.borrow_mut();
        let r = match (s1, s2, &mut **state) {
            (CpuStorage::F32(p), CpuStorage::F32(g), HostState::F32(st)) => contiguous(g, l2)
                .and_then(|g| kernels::cpu(&self.sc, &self.reg, &mut p[a..b], g, st)),
            (CpuStorage::F64(p), CpuStorage::F64(g), HostState::F64(st)) => contiguous(g, l2)
                .and_then(|g| kernels::cpu(&self.sc, &self.reg, &mut p[a..b], g, st)),
            _ => Err(anyhow::anyhow!(
                "fused step: parameter, gradient and state dtypes differ"
            )),
        };
        r.map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }
}

/// Whether a parameter can take the fused path.
pub(crate) fn applies(p: &Tensor) -> bool {
    p.device().is_cpu() && matches!(p.dtype(), DType::F32 | DType::F64) && p.is_contiguous()
}

/// Updates `p` in place with gradient `g`.
pub(crate) fn step(
    p: &Tensor,
    g: &Tensor,
    sc: Scalars,
    reg: KernelReg,
    state: &mut HostState,
) -> Result<()> {
    let g = if g.is_contiguous() {
        g.clone()
    } else {
        g.contiguous()?
    };
    let op = StepOp {
        sc,
        reg,
        state: RefCell::new(state),
    };
    p.inplace_op2(&g, &op)?;
    Ok(())
}
