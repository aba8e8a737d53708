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
    F32(Vec<Placed<f32>>),
    F64(Vec<Placed<f64>>),
}

/// State vectors of at least this many bytes are placed apart.
const PLACE_FROM: usize = 1 << 20;

/// How far apart, in bytes: state vector `slot` starts
/// `(slot + 1) * PLACE_STEP` bytes past a page boundary. With 64 KiB + 512 B
/// each of the first 7 slots differs from page-aligned buffers, and from
/// the other slots, both in its L1 set (bits 6-11) and above the page
/// offset (bits 16-18).
const PLACE_STEP: usize = (64 << 10) + 512;

/// One state vector, placed so that its addresses do not agree with the
/// parameter's, the gradient's or the other state vectors' in their low
/// bits.
///
/// The step streams p, g and the state side by side, element i of each at
/// once. Large buffers start on page (often 2 MiB) boundaries; mimalloc's
/// arena put the bench's four 40 MB buffers exactly 64, 192 and 256 MiB
/// apart, so their addresses agreed in every bit below 26. On a Zen 4 the
/// 10M-parameter Adam step then took 14.8 ms; with the same buffers spaced
/// irregularly (the arena off), 4.8 ms. Shifting the state vectors by a few
/// hundred bytes only (different L1 sets) gave 6.4 ms; by `PLACE_STEP` per
/// slot, 4.6 ms. So something indexed by the address bits above the page
/// offset took the streams for one another: AMD's L1 way predictor is
/// reported to hash bits 12-27 ("Take A Way", Lipp et al., 2020), and
/// prefetchers keep tables by address; which one it is was not measured. The shift costs at most
/// `(slot % 8 + 1) * PLACE_STEP` bytes and a page per vector (200 KiB for
/// the third slot), and only vectors of `PLACE_FROM` bytes or more get it.
pub(crate) struct Placed<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Placed<T> {
    fn new(values: Vec<T>, slot: usize) -> Self {
        let size = std::mem::size_of::<T>();
        let len = values.len();
        if len * size < PLACE_FROM {
            return Placed {
                buf: values,
                start: 0,
                len,
            };
        }
        let shift = (slot % 8 + 1) * PLACE_STEP;
        let mut buf = vec![T::default(); len + (shift + 4096) / size];
        // Both terms are multiples of the element size (4 or 8 bytes; a
        // Vec is aligned to its element), so `start` is whole elements.
        let to_page = (4096 - buf.as_ptr() as usize % 4096) % 4096;
        let start = (to_page + shift) / size;
        buf[start..start + len].copy_from_slice(&values);
        Placed { buf, start, len }
    }

    pub fn as_slice(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> AsMut<[T]> for Placed<T> {
    /// The vector's elements, for the step to update in place.
    fn as_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn placed<T: Copy + Default>(vs: Vec<Vec<T>>) -> Vec<Placed<T>> {
    vs.into_iter()
        .enumerate()
        .map(|(slot, v)| Placed::new(v, slot))
        .collect()
}

impl HostState {
    /// The initial state, from the reference rule's initial tensors.
    pub fn from_tensors(init: &[Tensor], dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F64 => HostState::F64(placed(
                init.iter()
                    .map(|t| t.flatten_all()?.to_vec1())
                    .collect::<candle_core::Result<_>>()?,
            )),
            _ => HostState::F32(placed(
                init.iter()
                    .map(|t| t.flatten_all()?.to_vec1())
                    .collect::<candle_core::Result<_>>()?,
            )),
        })
    }

    pub fn to_tensors(&self, like: &Tensor) -> Result<Vec<Tensor>> {
        let shape = like.shape();
        Ok(match self {
            HostState::F32(v) => v
                .iter()
                .map(|s| Tensor::from_slice(s.as_slice(), shape, like.device()))
                .collect::<candle_core::Result<_>>()?,
            HostState::F64(v) => v
                .iter()
                .map(|s| Tensor::from_slice(s.as_slice(), shape, like.device()))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    pub fn bytes(&self) -> usize {
        match self {
            HostState::F32(v) => v.iter().map(|s| s.len * 4).sum(),
            HostState::F64(v) => v.iter().map(|s| s.len * 8).sum(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Large state vectors start `(slot + 1) * 512` bytes past a page
    /// boundary (`PLACE_STEP` modulo 4 KiB), hold exactly the initial
    /// values, and come back unchanged; small ones are kept as they come.
    #[test]
    fn large_state_vectors_are_placed_apart_and_keep_their_values() {
        let mut rng = crate::rng::Rng::new(5);
        for (n, dtype) in [
            (262_144, DType::F32),
            (300_001, DType::F32),
            (131_072, DType::F64),
        ] {
            let init: Vec<Tensor> = (0..3)
                .map(|_| {
                    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
                    Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)
                })
                .collect::<candle_core::Result<_>>()
                .unwrap();
            let state = HostState::from_tensors(&init, dtype).unwrap();
            let starts: Vec<usize> = match &state {
                HostState::F32(v) => v.iter().map(|s| s.as_slice().as_ptr() as usize).collect(),
                HostState::F64(v) => v.iter().map(|s| s.as_slice().as_ptr() as usize).collect(),
            };
            for (slot, a) in starts.iter().enumerate() {
                assert_eq!(
                    a % 4096,
                    (slot + 1) * PLACE_STEP % 4096,
                    "n {n} slot {slot}"
                );
            }
            assert_eq!(state.bytes(), 3 * n * dtype.size_in_bytes());
            let back = state.to_tensors(&init[0]).unwrap();
            for (a, b) in init.iter().zip(&back) {
                let a = a.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                let b = b.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
        // Below PLACE_FROM: the vector itself, no copy and no padding.
        let small = Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap();
        let HostState::F32(v) = HostState::from_tensors(&[small], DType::F32).unwrap() else {
            panic!("f32 state expected");
        };
        assert_eq!((v[0].start, v[0].buf.len()), (0, 1000));
    }
}
